import Dispatch

/// Work that blocks (SQLite, model files, waiting for the scheduler to drain) runs on these
/// dispatch queues, never on the Swift concurrency pool: that pool has one thread per core, and
/// two blocked handlers would stall every `/v1/infer`.
enum Blocking {
    /// Serial: rollback, reload and, later, learn and deploy run one at a time.
    static let control = DispatchQueue(label: "agentd.control")
    /// Registry and event-log reads.
    static let reads = DispatchQueue(label: "agentd.reads", attributes: .concurrent)

    static func run<T: Sendable>(on queue: DispatchQueue, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try body() }) }
        }
    }

    static func run<T: Sendable>(on queue: DispatchQueue, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            queue.async { continuation.resume(returning: body()) }
        }
    }
}
