import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The most recent inferences by id (input row and model version), so feedback can name an
/// inference instead of resending its input. Bounded in bytes: the oldest entries are forgotten
/// first. Ids are 128 random bits, so a client cannot guess (and label) another client's inferences.
public final class RecentInferences: @unchecked Sendable {
    public struct Entry: Sendable {
        public let input: [Float]
        public let modelVersion: Int
    }

    /// Per-entry bookkeeping beyond the input itself (id string, dictionary slot, order slot).
    public static let overheadBytes = 96

    private let lock = NSLock()
    private var entries: [String: Entry] = [:]
    /// Ids oldest first from `head` on (compacted as it advances).
    private var order: [String] = []
    private var head = 0
    private var bytes = 0
    private var limitBytes: Int

    public init(limitBytes: Int = 8 << 20) {
        self.limitBytes = max(limitBytes, 0)
    }

    /// Bytes held now (inputs plus bookkeeping), for status.
    public var byteCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return bytes
    }

    public var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return entries.count
    }

    /// Records the rows of one request and returns their new ids (none are remembered when one
    /// row alone is over the limit; the ids are still unique).
    public func record(rows: [Float], count: Int, rowLength: Int, modelVersion: Int) -> [String] {
        let ids = Self.randomIds(count)
        let entryBytes = rowLength * MemoryLayout<Float>.size + Self.overheadBytes
        lock.lock()
        defer { lock.unlock() }
        guard entryBytes <= limitBytes else { return ids }
        for r in 0..<count {
            while bytes + entryBytes > limitBytes, head < order.count {
                if let old = entries.removeValue(forKey: order[head]) { bytes -= old.input.count * MemoryLayout<Float>.size + Self.overheadBytes }
                head += 1
            }
            if head > 1024 && head * 2 > order.count {
                order.removeFirst(head)
                head = 0
            }
            order.append(ids[r])
            entries[ids[r]] = Entry(input: Array(rows[(r * rowLength)..<((r + 1) * rowLength)]), modelVersion: modelVersion)
            bytes += entryBytes
        }
        return ids
    }

    public func lookup(_ id: String) -> Entry? {
        lock.lock()
        defer { lock.unlock() }
        return entries[id]
    }

    /// `count` ids of 128 bits from the kernel's CSPRNG (glibc's arc4random_buf: getrandom(2),
    /// one call per request, never failing), as 32 hex digits.
    static func randomIds(_ count: Int) -> [String] {
        var random = [UInt8](repeating: 0, count: count * 16)
        random.withUnsafeMutableBytes { arc4random_buf($0.baseAddress!, $0.count) }
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        return (0..<count).map { i in
            String(unsafeUninitializedCapacity: 32) { out in
                for j in 0..<16 {
                    let b = random[i * 16 + j]
                    out[2 * j] = hex[Int(b >> 4)]
                    out[2 * j + 1] = hex[Int(b & 15)]
                }
                return 32
            }
        }
    }
}
