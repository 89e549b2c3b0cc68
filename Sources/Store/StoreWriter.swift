import Foundation
import GRDB

/// The one writer of feedback and events: a dedicated thread with a bounded queue, so no request
/// handler (and no thread of the Swift concurrency pool) ever waits on SQLite. Pending writes are
/// committed together, one transaction per wake-up; each table is trimmed oldest-first to its
/// row and byte limits in that same transaction. Counts are kept here, so status never queries.
public final class StoreWriter: @unchecked Sendable {
    public struct Limits: Equatable, Sendable {
        public var feedbackMaxRows: Int
        public var feedbackMaxBytes: Int
        public var eventsMaxRows: Int
        public var eventsMaxBytes: Int
        public var queueCapacity: Int
        public init(feedbackMaxRows: Int, feedbackMaxBytes: Int, eventsMaxRows: Int, eventsMaxBytes: Int, queueCapacity: Int) {
            self.feedbackMaxRows = feedbackMaxRows
            self.feedbackMaxBytes = feedbackMaxBytes
            self.eventsMaxRows = eventsMaxRows
            self.eventsMaxBytes = eventsMaxBytes
            self.queueCapacity = queueCapacity
        }
    }

    /// What status and metrics show of the store.
    public struct Snapshot: Sendable {
        public var feedback: AgentDatabase.TableSize
        public var events: AgentDatabase.TableSize
        /// Rows deleted by retention since start.
        public var feedbackEvicted = 0
        public var eventsEvicted = 0
        /// Events that could not be written (queue full or a failed write).
        public var eventsDropped = 0
        public var writeErrors = 0
        public var queued = 0
        public var lastError: String?
    }

    public typealias FeedbackResult = Result<(id: Int64, count: Int), StoreError>

    private enum Job {
        case event(StoredEvent)
        case feedback(AgentDatabase.Feedback, ts: String, completion: @Sendable (FeedbackResult) -> Void)
    }

    public let database: AgentDatabase
    private let limits: Limits
    private let condition = NSCondition()
    private var jobs: [Job] = []
    private var closed = false
    /// Jobs ever queued, and ever finished (written or failed): `flush` waits for its own.
    private var queuedCount = 0
    private var finishedCount = 0
    private var snapshot: Snapshot
    /// The newest events, for status (oldest first).
    private var recent: [StoredEvent]
    private static let recentCount = 5
    private var thread: Thread?

    public init(database: AgentDatabase, limits: Limits) throws {
        self.database = database
        self.limits = limits
        let sizes = try database.sizes()
        snapshot = Snapshot(feedback: sizes.feedback, events: sizes.events)
        recent = try database.events(limit: Self.recentCount)
        let t = Thread { [self] in self.run() }
        t.name = "store-writer"
        thread = t
        t.start()
    }

    public var state: Snapshot {
        condition.lock()
        defer { condition.unlock() }
        var s = snapshot
        s.queued = jobs.count
        return s
    }

    public var recentEvents: [StoredEvent] {
        condition.lock()
        defer { condition.unlock() }
        return recent
    }

    /// Events may fill the queue this far past the capacity feedback is refused at, so a burst of
    /// feedback does not push out the audit trail (rollback, reload).
    static let eventHeadroom = 256

    /// Queues an event; never blocks. A full queue drops it (counted in `eventsDropped`).
    public func appendEvent(kind: String, message: String) {
        let event = StoredEvent(id: 0, ts: AgentDatabase.now(), kind: kind, message: message)
        condition.lock()
        defer { condition.unlock() }
        guard !closed, jobs.count < limits.queueCapacity + Self.eventHeadroom else {
            snapshot.eventsDropped += 1
            return
        }
        jobs.append(.event(event))
        queuedCount += 1
        condition.signal()
    }

    /// Queues a labelled sample; `completion` runs on the writer thread once it is committed or failed.
    public func storeFeedback(_ f: AgentDatabase.Feedback, completion: @escaping @Sendable (FeedbackResult) -> Void) {
        condition.lock()
        guard !closed else {
            condition.unlock()
            completion(.failure(.closed))
            return
        }
        guard jobs.count < limits.queueCapacity else {
            condition.unlock()
            completion(.failure(.queueFull))
            return
        }
        jobs.append(.feedback(f, ts: AgentDatabase.now(), completion: completion))
        queuedCount += 1
        condition.signal()
        condition.unlock()
    }

    public func storeFeedback(_ f: AgentDatabase.Feedback) async -> FeedbackResult {
        await withCheckedContinuation { continuation in storeFeedback(f) { continuation.resume(returning: $0) } }
    }

    /// Waits until what is queued now is written (or failed); later writes do not hold it up.
    /// Blocks: not for the request path.
    public func flush() {
        condition.lock()
        let target = queuedCount
        while finishedCount < target { condition.wait() }
        condition.unlock()
    }

    /// Writes what is queued, then stops the thread. Later writes fail with `.closed`.
    public func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
        flush()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty && !closed { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let batch = Array(jobs.prefix(256))
            jobs.removeFirst(batch.count)
            let sizes = (feedback: snapshot.feedback, events: snapshot.events)
            condition.unlock()
            let outcome = commit(batch, from: sizes)
            condition.lock()
            switch outcome {
            case .success(let written):
                snapshot.feedback = written.sizes.feedback
                snapshot.events = written.sizes.events
                snapshot.feedbackEvicted += written.evicted.feedback
                snapshot.eventsEvicted += written.evicted.events
                recent = Array((recent + written.events).suffix(Self.recentCount))
            case .failure(let e):
                snapshot.writeErrors += 1
                snapshot.eventsDropped += batch.filter { if case .event = $0 { true } else { false } }.count
                snapshot.lastError = e.description
            }
            condition.unlock()
            // Completions run outside the lock (they resume request handlers), before `flush` and
            // `close` see the batch finished.
            var ids = (try? outcome.get().feedbackIds) ?? []
            for job in batch {
                guard case .feedback(_, _, let completion) = job else { continue }
                switch outcome {
                case .success(let w): completion(.success((ids.removeFirst(), w.sizes.feedback.rows)))
                case .failure(let e): completion(.failure(e))
                }
            }
            condition.lock()
            finishedCount += batch.count
            condition.broadcast()
            condition.unlock()
        }
    }

    private struct Written {
        var sizes: (feedback: AgentDatabase.TableSize, events: AgentDatabase.TableSize)
        var evicted: (feedback: Int, events: Int)
        var feedbackIds: [Int64]
        var events: [StoredEvent]
    }

    /// One transaction for the batch: all of it is written, or none of it.
    private func commit(_ batch: [Job], from start: (feedback: AgentDatabase.TableSize, events: AgentDatabase.TableSize)) -> Result<Written, StoreError> {
        do {
            return .success(try database.pool.write { db in
                var w = Written(sizes: start, evicted: (0, 0), feedbackIds: [], events: [])
                for job in batch {
                    switch job {
                    case .event(var e):
                        e.id = try AgentDatabase.insertEvent(db, e)
                        w.events.append(e)
                        w.sizes.events.rows += 1
                        w.sizes.events.bytes += AgentDatabase.eventBytes(e)
                    case .feedback(let f, let ts, _):
                        w.feedbackIds.append(try AgentDatabase.insertFeedback(db, f, ts: ts))
                        w.sizes.feedback.rows += 1
                        w.sizes.feedback.bytes += AgentDatabase.feedbackBytes(f, ts: ts)
                    }
                }
                (w.sizes.feedback, w.evicted.feedback) = try AgentDatabase.trim(
                    db, table: "feedback", bytesSQL: AgentDatabase.feedbackBytesSQL, size: w.sizes.feedback,
                    maxRows: limits.feedbackMaxRows, maxBytes: limits.feedbackMaxBytes)
                (w.sizes.events, w.evicted.events) = try AgentDatabase.trim(
                    db, table: "events", bytesSQL: AgentDatabase.eventBytesSQL, size: w.sizes.events,
                    maxRows: limits.eventsMaxRows, maxBytes: limits.eventsMaxBytes)
                return w
            })
        } catch {
            return .failure(StoreError(error))
        }
    }
}
