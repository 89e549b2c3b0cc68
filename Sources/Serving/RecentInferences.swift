import Foundation

/// The last `capacity` inferences by id (input row and model version), so feedback can name an
/// inference instead of resending its input. Bounded: the oldest entries are forgotten.
public final class RecentInferences: @unchecked Sendable {
    public struct Entry: Sendable {
        public let input: [Float]
        public let modelVersion: Int
    }

    private let lock = NSLock()
    private var entries: [String: Entry] = [:]
    private var order: [String?]
    private var next = 0
    private var counter: UInt64 = 0

    public init(capacity: Int = 4096) {
        order = Array(repeating: nil, count: max(capacity, 1))
    }

    /// Records the rows of one request and returns their new ids.
    public func record(rows: [Float], count: Int, rowLength: Int, modelVersion: Int) -> [String] {
        lock.lock()
        defer { lock.unlock() }
        var ids: [String] = []
        ids.reserveCapacity(count)
        for r in 0..<count {
            counter += 1
            let id = "\(modelVersion)-\(counter)"
            if let old = order[next] { entries.removeValue(forKey: old) }
            order[next] = id
            next = (next + 1) % order.count
            entries[id] = Entry(input: Array(rows[(r * rowLength)..<((r + 1) * rowLength)]), modelVersion: modelVersion)
            ids.append(id)
        }
        return ids
    }

    public func lookup(_ id: String) -> Entry? {
        lock.lock()
        defer { lock.unlock() }
        return entries[id]
    }
}
