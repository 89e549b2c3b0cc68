import Foundation
import Tensor

#if canImport(Glibc)
import Glibc
#endif

/// A model file, read in one piece and validated against every safetensors and manifest rule.
///
/// The file's bytes live in one `Storage`; F32 tensors are views into it, so the weights are read
/// once and never copied. F16 and BF16 tensors are widened to F32 once, at load.
public final class ModelFile: @unchecked Sendable {
    /// The path as the user gave it; every error names it.
    public let path: String
    public let storage: Storage
    public let header: SafeTensorsHeader
    public let manifest: Manifest
    public let layers: [Layer]
    /// Floating-point tensors referenced by the manifest, as F32.
    public let weights: [String: Tensor]

    public var inputShape: [Int] { manifest.input.shape }
    public var outputShape: [Int] { layers.last?.outputShape ?? manifest.input.shape }
    public var classCount: Int { outputShape.reduce(1, *) }
    public var labels: [String] { manifest.labels ?? (0..<classCount).map(String.init) }
    public var fileSize: Int { storage.byteCount }

    public static func load(path: String) throws -> ModelFile {
        let storage = try readWholeFile(path: path)
        return try ModelFile(storage: storage, path: path)
    }

    public init(storage: Storage, path: String) throws {
        self.path = path
        self.storage = storage
        let header = try SafeTensorsHeader(parsing: UnsafeRawBufferPointer(storage.bytes), file: path)
        self.header = header
        let validated = try ManifestValidator(header: header, storage: storage, file: path).validate()
        self.manifest = validated.manifest
        self.layers = validated.layers
        self.weights = validated.weights
    }

    /// Validates a model file held in memory: the bytes `ModelWriter.encode` produced, say.
    public convenience init(bytes: [UInt8], path: String) throws {
        let storage = Storage(byteCount: bytes.count)
        bytes.withUnsafeBytes { if let base = $0.baseAddress { storage.base.copyMemory(from: base, byteCount: bytes.count) } }
        try self.init(storage: storage, path: path)
    }

    public func weight(_ name: String) -> Tensor {
        guard let t = weights[name] else { preconditionFailure("tensor '\(name)' was validated but is missing") }
        return t
    }

    /// Raw bytes of a tensor of any dtype (quantized tensors written by the agent).
    public func rawBytes(_ entry: TensorEntry) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: storage.base + header.dataStart + entry.begin, count: entry.end - entry.begin)
    }

    /// Reads a file with one `read` loop into fresh aligned storage.
    public static func readWholeFile(path: String) throws -> Storage {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw ModelFileError(file: path, String(cString: strerror(errno)).lowercased())
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw ModelFileError(file: path, String(cString: strerror(errno)).lowercased())
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            throw ModelFileError(file: path, "is a directory, not a model file")
        }
        let size = Int(st.st_size)
        let storage = Storage(byteCount: size)
        var done = 0
        while done < size {
            let n = read(fd, storage.base + done, size - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw ModelFileError(file: path, "read failed: " + String(cString: strerror(errno)).lowercased())
            }
            if n == 0 { throw ModelFileError(file: path, "file shrank while being read") }
            done += n
        }
        return storage
    }
}
