import Foundation
import Tensor

#if canImport(Glibc)
import Glibc
#endif

/// A tensor to write: its bytes in little-endian order with a dtype and shape.
public struct TensorBlob: Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let bytes: [UInt8]

    public init(name: String, dtype: DType, shape: [Int], bytes: [UInt8]) {
        precondition(shape.reduce(1, *) * dtype.byteSize == bytes.count, "blob '\(name)' size disagrees with its shape")
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    public init(name: String, tensor: Tensor) {
        let bytes = Array(UnsafeRawBufferPointer(start: tensor.pointer, count: tensor.count * 4))
        self.init(name: name, dtype: .f32, shape: tensor.shape, bytes: bytes)
    }
}

/// Writes model files: safetensors with the edge metadata, header padded so the data section
/// starts 8-byte aligned, written to a temporary file, synced and renamed into place.
public enum ModelWriter {
    public static func encode(manifest: Manifest, tensors: [TensorBlob]) -> [UInt8] {
        // Tensors in name order, packed with no gaps.
        let ordered = tensors.sorted { $0.name < $1.name }
        var offset = 0
        var entries: [String: Any] = [:]
        for t in ordered {
            entries[t.name] = ["dtype": t.dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.count]]
            offset += t.bytes.count
        }
        entries["__metadata__"] = [Manifest.formatKey: Manifest.formatVersion, Manifest.manifestKey: manifest.jsonString()]
        var header = try! JSONSerialization.data(withJSONObject: entries, options: [.sortedKeys])
        while (8 + header.count) % 8 != 0 { header.append(0x20) }
        var out: [UInt8] = []
        out.reserveCapacity(8 + header.count + offset)
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: header)
        for t in ordered { out.append(contentsOf: t.bytes) }
        return out
    }

    /// Writes atomically: either the whole new file is at `path` or the old one is untouched.
    public static func write(manifest: Manifest, tensors: [TensorBlob], to path: String) throws {
        try writeAtomically(encode(manifest: manifest, tensors: tensors), to: path)
    }

    /// Durable replacement: the bytes go to `temporary` (default: a fresh hidden name beside
    /// `path`), are synced, renamed over `path`, and the directory is synced.
    public static func writeAtomically(_ bytes: [UInt8], to path: String, temporary: String? = nil) throws {
        let url = URL(fileURLWithPath: path)
        let directory = url.deletingLastPathComponent().path
        let temp = temporary ?? directory + "/." + url.lastPathComponent + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ModelFileError(file: path, "cannot create: " + String(cString: strerror(errno)).lowercased())
        }
        var ok = false
        defer {
            if !ok { unlink(temp) }
        }
        let written = bytes.withUnsafeBytes { buffer -> Bool in
            var done = 0
            while done < buffer.count {
                let n = Glibc.write(fd, buffer.baseAddress! + done, buffer.count - done)
                if n < 0 { if errno == EINTR { continue }; return false }
                done += n
            }
            return true
        }
        let synced = written && fsync(fd) == 0
        close(fd)
        guard synced else {
            throw ModelFileError(file: path, "write failed: " + String(cString: strerror(errno)).lowercased())
        }
        guard rename(temp, path) == 0 else {
            throw ModelFileError(file: path, "cannot rename into place: " + String(cString: strerror(errno)).lowercased())
        }
        ok = true
        let dirFD = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 { fsync(dirFD); close(dirFD) }
    }
}
