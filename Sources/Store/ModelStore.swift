import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Immutable model files named by content: `models/<sha256>.safetensors`. A file is written to a
/// temporary name, synced, renamed and the directory synced before the registry row that refers
/// to it is committed; files no row refers to are removed at start.
public struct ModelStore: Sendable {
    public let directory: String

    public init(directory: String) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    public func path(for sha256: String) -> String { "\(directory)/\(sha256).safetensors" }

    /// Stores `bytes` (idempotent for identical content) and returns their SHA-256.
    public func store(_ bytes: [UInt8], sha256: String) throws -> String {
        let final = path(for: sha256)
        if FileManager.default.fileExists(atPath: final) { return final }
        let temp = "\(directory)/.incoming-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StoreError.io("\(temp): \(String(cString: strerror(errno)))") }
        var ok = false
        defer { if !ok { unlink(temp) } }
        let written = bytes.withUnsafeBytes { raw -> Bool in
            var done = 0
            while done < raw.count {
                let n = write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 { if errno == EINTR { continue }; return false }
                done += n
            }
            return true
        }
        let synced = written && fsync(fd) == 0
        close(fd)
        guard synced else { throw StoreError.io("\(temp): write failed") }
        guard rename(temp, final) == 0 else { throw StoreError.io("\(final): \(String(cString: strerror(errno)))") }
        ok = true
        let dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 { fsync(dir); close(dir) }
        return final
    }

    /// Removes files that no registry row references (and leftovers of interrupted writes).
    @discardableResult
    public func removeUnreferenced(keeping hashes: Set<String>) throws -> [String] {
        var removed: [String] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
            let hash = name.hasSuffix(".safetensors") ? String(name.dropLast(".safetensors".count)) : nil
            if name.hasPrefix(".incoming-") || (hash != nil && !hashes.contains(hash!)) {
                try? FileManager.default.removeItem(atPath: "\(directory)/\(name)")
                removed.append(name)
            }
        }
        return removed
    }
}

public enum StoreError: Error, CustomStringConvertible, Sendable {
    case io(String)
    public var description: String {
        switch self {
        case .io(let m): m
        }
    }
}
