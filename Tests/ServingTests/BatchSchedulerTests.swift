import Foundation
import Inference
import Serving
import Testing
import Training

func servingModel(version: Int = 1) -> ServingModel {
    let net = try! Architecture.build("mlp:4-8-3", seed: 1)
    return ServingModel(version: version, network: net, quantized: nil)
}

func settings(workers: Int = 1, maxBatch: Int = 8, delay: Double = 0.005, capacity: Int = 100) -> SchedulerSettings {
    SchedulerSettings(workers: workers, maxBatchSize: maxBatch, maxQueueDelay: delay, queueCapacity: capacity,
                      memoryBudgetBytes: 64 << 20, adaptive: false, latencyTarget: 0.01)
}

@Suite struct BatchSchedulerTests {
    @Test func batchesConcurrentRequestsAndAnswersEachWithItsOwnRows() async throws {
        let model = servingModel()
        let scheduler = BatchScheduler(slot: ModelSlot(model), settings: settings(delay: 0.02))
        scheduler.start()
        defer { scheduler.stop() }
        // A plan serves one thread at a time: the expected answers are computed up front.
        let plan = ExecutionPlan(network: model.network, batchCapacity: 1)
        let expectations = (0..<16).map { plan.predict([Float($0), 1, 2, 3]) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<16 {
                group.addTask {
                    let row: [Float] = [Float(i), 1, 2, 3]
                    let r = await scheduler.infer(rows: row, count: 1, priority: .latency, deadline: 5)
                    let out = try r.get()
                    // Batched kernels sum in another order than batch 1: equal to rounding, not bit for bit.
                    let expected = expectations[i]
                    #expect(zip(out.scores, expected).allSatisfy { abs($0 - $1) <= 1e-5 }, "request \(i): \(out.scores) vs \(expected)")
                }
            }
            try await group.waitForAll()
        }
        let s = scheduler.snapshot
        #expect(s.samples == 16)
        #expect(s.batches < 16, "no batching happened: \(s.batches) batches for 16 requests")
    }

    @Test func expiredRequestsAreAnsweredWithoutComputing() async {
        let scheduler = BatchScheduler(slot: ModelSlot(servingModel()), settings: settings())
        scheduler.start()
        defer { scheduler.stop() }
        let r = await scheduler.infer(rows: [0, 0, 0, 0], count: 1, priority: .latency, deadline: 0)
        #expect(r.failureValue == .deadlineExceeded)
        #expect(scheduler.snapshot.samples == 0)
        #expect(scheduler.snapshot.deadlineExpired == 1)
    }

    @Test func fullQueueIsRefusedAtOnce() async {
        // No workers started: the queue only fills.
        let scheduler = BatchScheduler(slot: ModelSlot(servingModel()), settings: settings(capacity: 2))
        for _ in 0..<2 { scheduler.submit(rows: [0, 0, 0, 0], count: 1, priority: .throughput, deadline: 5) { _ in } }
        let r = await scheduler.infer(rows: [0, 0, 0, 0], count: 1, priority: .latency, deadline: 5)
        #expect(r.failureValue == .queueFull(retryAfter: 1))
        scheduler.stop()
    }

    @Test func drainAnswersEverythingAccepted() async {
        let scheduler = BatchScheduler(slot: ModelSlot(servingModel()), settings: settings(workers: 2, capacity: 1000))
        let answered = Counter()
        for i in 0..<200 {
            scheduler.submit(rows: [Float(i), 0, 0, 0], count: 1, priority: i % 2 == 0 ? .latency : .throughput, deadline: 10) { r in
                if case .success = r { answered.add() }
            }
        }
        scheduler.start()
        #expect(scheduler.drain(timeout: 10))
        scheduler.stop()
        #expect(answered.value == 200)
        let late = await scheduler.infer(rows: [0, 0, 0, 0], count: 1, priority: .latency, deadline: 1)
        #expect(late.failureValue == .shuttingDown)
    }

    @Test func swappedModelServesTheNextBatch() async throws {
        let slot = ModelSlot(servingModel(version: 1))
        let scheduler = BatchScheduler(slot: slot, settings: settings())
        scheduler.start()
        defer { scheduler.stop() }
        #expect(try await scheduler.infer(rows: [1, 2, 3, 4], count: 1, priority: .latency, deadline: 5).get().model.version == 1)
        slot.swap(servingModel(version: 2))
        #expect(try await scheduler.infer(rows: [1, 2, 3, 4], count: 1, priority: .latency, deadline: 5).get().model.version == 2)
    }

    @Test func memoryBudgetCapsTheBatch() {
        let model = servingModel()
        let one = model.makePlan(batch: 1).memory.total
        #expect(model.batchLimit(budgetBytes: one, limit: 64) == 1)
        #expect(model.batchLimit(budgetBytes: 1 << 30, limit: 64) == 64)
    }

    @Test func recentInferencesForgetTheOldest() {
        let ring = RecentInferences(capacity: 2)
        let ids = ring.record(rows: [1, 2, 3, 4, 5, 6], count: 3, rowLength: 2, modelVersion: 7)
        #expect(ring.lookup(ids[0]) == nil)
        #expect(ring.lookup(ids[2])?.input == [5, 6])
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}

extension Result {
    var failureValue: Failure? {
        if case .failure(let f) = self { return f }
        return nil
    }
}

@Suite struct BatchWaitTests {
    /// One client at a time: there is never a second request to wait for. Once the scheduler has
    /// measured how long a batch takes, it stops sitting out the whole `max_queue_delay` (here
    /// 50 ms) on every request.
    @Test func aLoneClientIsNotHeldForTheWholeQueueDelay() async throws {
        let scheduler = BatchScheduler(slot: ModelSlot(servingModel()), settings: settings(maxBatch: 8, delay: 0.05))
        scheduler.start()
        defer { scheduler.stop() }
        for _ in 0..<8 { _ = try await scheduler.infer(rows: [1, 2, 3, 4], count: 1, priority: .latency, deadline: 5).get() }
        try await Task.sleep(nanoseconds: 300_000_000)  // the cap is re-decided at least every 0.25 s
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<10 { _ = try await scheduler.infer(rows: [1, 2, 3, 4], count: 1, priority: .latency, deadline: 5).get() }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        // Waiting out the delay would take 10 × 50 ms = 0.5 s.
        #expect(seconds < 0.25, "10 sequential requests took \(seconds) s")
    }
}

@Suite struct SchedulerFiguresTests {
    /// Throughput counts every answered row of the last ten whole seconds, however many batches
    /// that took (an earlier ring of 4,096 batches undercounted small batches at high rates).
    @Test func throughputCountsEveryRowOfTheWindow() async throws {
        let scheduler = BatchScheduler(slot: ModelSlot(servingModel()), settings: settings(maxBatch: 1, delay: 0))
        scheduler.start()
        defer { scheduler.stop() }
        for _ in 0..<5000 { _ = try await scheduler.infer(rows: [1, 2, 3, 4], count: 1, priority: .latency, deadline: 5).get() }
        // The window holds whole seconds: wait for the current one to end.
        try await Task.sleep(nanoseconds: 1_100_000_000)
        let s = scheduler.snapshot
        #expect(s.batches == 5000)
        #expect(s.throughput * 10 == 5000, "throughput \(s.throughput)/s over 10 s")
    }
}
