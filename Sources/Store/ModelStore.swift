import Foundation
import ModelFile

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
        // `.incoming-` names are what `removeUnreferenced` clears after an interrupted write.
        try ModelWriter.writeAtomically(bytes, to: final, temporary: "\(directory)/.incoming-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        return final
    }

    /// Which file was active last, kept beside the files (written after every activation) so a
    /// registry rebuilt after the database was lost serves the same model, not the newest file.
    var activeMarker: String { "\(directory)/active" }

    public func recordActive(sha256: String) {
        // Best effort: without it a rebuild falls back to the newest file.
        try? ModelWriter.writeAtomically(Array(sha256.utf8), to: activeMarker)
    }

    public func lastActive() -> String? {
        guard let data = FileManager.default.contents(atPath: activeMarker) else { return nil }
        let sha = String(decoding: data, as: UTF8.self)
        return sha.count == 64 && sha.allSatisfy(\.isHexDigit) ? sha : nil
    }

    /// The stored model files (`<sha256>.safetensors`) with their modification times.
    public func files() throws -> [(path: String, sha256: String, modified: Date)] {
        try FileManager.default.contentsOfDirectory(atPath: directory).compactMap { name in
            guard name.hasSuffix(".safetensors"), !name.hasPrefix(".") else { return nil }
            let path = "\(directory)/\(name)"
            let modified = (try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date) ?? .distantPast
            return (path, String(name.dropLast(".safetensors".count)), modified)
        }
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
