import Foundation
import Inference
import Serving
import Testing
import Training

func servingModel(version: Int = 1) -> ServingModel {
    let net = try! Architecture.build("mlp:4-8-3", seed: 1)
    return ServingModel(version: version, network: net, quantized: nil)
}

func settings(workers: Int = 1, maxBatch: Int = 8, delay: Double = 0.005, capacity: Int = 100, bytes: Int = .max) -> SchedulerSettings {
    SchedulerSettings(workers: workers, maxBatchSize: maxBatch, maxQueueDelay: delay, queueCapacity: capacity, queueBytes: bytes,
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

    /// Queued bytes, not only queued requests, are bounded: a few large requests fill the queue.
    @Test func queueIsBoundedInBytes() async {
        // 2 rows of 4 floats = 32 bytes a request; 64 bytes hold two of them.
        let scheduler = BatchScheduler(slot: ModelSlot(servingModel()), settings: settings(capacity: 100, bytes: 64))
        let row2: [Float] = [1, 2, 3, 4, 5, 6, 7, 8]
        for _ in 0..<2 { scheduler.submit(rows: row2, count: 2, priority: .latency, deadline: 5) { _ in } }
        #expect(scheduler.snapshot.queuedBytes == 64)
        #expect(scheduler.refuseIfFull())
        let r = await scheduler.infer(rows: [0, 0, 0, 0], count: 1, priority: .latency, deadline: 5)
        #expect(r.failureValue == .queueFull(retryAfter: 1))
        // Answering frees the bytes.
        scheduler.start()
        #expect(scheduler.drain(timeout: 10))
        #expect(scheduler.snapshot.queuedBytes == 0)
        scheduler.stop()
    }

    /// A request larger than the whole byte budget is still served when the queue is empty
    /// (api.max_body_bytes bounds it), rather than refused forever.
    @Test func oneRequestOverTheByteBudgetIsServedAlone() async throws {
        let scheduler = BatchScheduler(slot: ModelSlot(servingModel()), settings: settings(bytes: 8))
        scheduler.start()
        defer { scheduler.stop() }
        let out = try await scheduler.infer(rows: [1, 2, 3, 4, 5, 6, 7, 8], count: 2, priority: .latency, deadline: 5).get()
        #expect(out.scores.count == 6)
    }

    /// Hostile deadlines never trap the time arithmetic: NaN, negative, zero and -0 are already
    /// past; huge and infinite ones saturate.
    @Test(arguments: [Double.nan, -.infinity, -1, -0.0, 0, 1e300, .infinity, Double(UInt64.max), .greatestFiniteMagnitude])
    func deadlineArithmeticSaturates(_ seconds: Double) {
        let now: UInt64 = 1_000_000_000
        let t = BatchScheduler.instant(now, plus: seconds)
        if seconds > 0 { #expect(t == .max || t > now) } else { #expect(t == now) }
        #expect(BatchScheduler.instant(.max - 5, plus: 1) == .max)
        let scheduler = BatchScheduler(slot: ModelSlot(servingModel()), settings: settings())
        scheduler.submit(rows: [0, 0, 0, 0], count: 1, priority: .latency, deadline: seconds) { _ in }
        scheduler.stop()
    }

    /// Rows read for one model and queued while another was swapped in are refused, never computed
    /// (computing them read past the request's buffer).
    @Test func rowsShapedForASwappedOutModelAreRefused() async throws {
        let slot = ModelSlot(servingModel())  // 4 inputs
        let scheduler = BatchScheduler(slot: slot, settings: settings())
        let wide = ServingModel(version: 2, network: try! Architecture.build("mlp:8-8-3", seed: 1), quantized: nil)
        slot.swap(wide)  // the request below was read for the 4-input model
        scheduler.start()
        defer { scheduler.stop() }
        let r = await scheduler.infer(rows: [1, 2, 3, 4], count: 1, priority: .latency, deadline: 5)
        #expect(r.failureValue == .wrongShape(expected: 8, got: 4))
        #expect(try await scheduler.infer(rows: [Float](repeating: 1, count: 16), count: 2, priority: .latency, deadline: 5).get().scores.count == 6)
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

    /// The limit is drawn from plans of 1 and 2 samples as a straight line: exact for a CNN whose
    /// 3×3 convolution runs by Winograd (its workspace does not grow with the batch), so a budget
    /// of exactly the batch-24 plan's memory allows 24 samples, and one byte less 23.
    @Test func memoryBudgetIsExactWithAWinogradConvolution() throws {
        let net = try Architecture.build("cnn:1x8x8-c32-c64-m2-f16-3", seed: 3)
        let model = ServingModel(version: 1, network: net, quantized: nil)
        let plan = model.makePlan(batch: 24) as! ExecutionPlan
        try #require(plan.stepNames.contains("fp32 conv2d (winograd)"), "EDGE_WINOGRAD=0 is set, or this CPU has neither AVX2 nor AVX-512")
        let budget = plan.memory.total
        #expect(model.batchLimit(budgetBytes: budget, limit: 64) == 24)
        #expect(model.batchLimit(budgetBytes: budget - 1, limit: 64) == 23)
    }

    /// Every plan of one serving model points at the same packed weights (a worker's plan, a
    /// larger batch's, the adaptive fallback's), counted once; outputs are those of a plan packed alone.
    @Test func plansOfOneModelSharePackedWeights() throws {
        let net = try Architecture.build("cnn:1x8x8-c4-m2-f16-10", seed: 3)
        let model = ServingModel(version: 1, network: net, quantized: nil, fileBytes: 1000)
        let packedAtLoad = model.packedWeights.bytes
        #expect(packedAtLoad > 0)
        let a = try #require(model.makePlan(batch: 4) as? ExecutionPlan)
        let b = try #require(model.makePlan(batch: 16) as? ExecutionPlan)
        #expect(model.packedWeights.bytes == packedAtLoad)
        #expect(a.packedWeightIdentities == b.packedWeightIdentities)
        let alone = ExecutionPlan(network: net, batchCapacity: 4)
        #expect(Set(alone.packedWeightIdentities).isDisjoint(with: a.packedWeightIdentities))
        let rows = (0..<(4 * 64)).map { Float($0 % 17) / 17 }
        let shared = rows.withUnsafeBufferPointer { Array(a.run($0.baseAddress!, batch: 4)) }
        let own = rows.withUnsafeBufferPointer { Array(alone.run($0.baseAddress!, batch: 4)) }
        #expect(shared == own)
        let m = model.memory(plans: 3, batch: 16)
        #expect(m.packed == packedAtLoad && m.file == 1000 && m.decoded == 0)
        #expect(m.planBuffers == b.memory.workspace + b.memory.activations)
        #expect(m.total == 1000 + packedAtLoad + 3 * m.planBuffers)
    }

    @Test func recentInferencesForgetTheOldestBeyondTheirBytes() {
        let entry = 2 * 4 + RecentInferences.overheadBytes
        let ring = RecentInferences(limitBytes: 2 * entry)
        let ids = ring.record(rows: [1, 2, 3, 4, 5, 6], count: 3, rowLength: 2, modelVersion: 7)
        #expect(ring.lookup(ids[0]) == nil)
        #expect(ring.lookup(ids[1])?.input == [3, 4])
        #expect(ring.lookup(ids[2])?.input == [5, 6] && ring.lookup(ids[2])?.modelVersion == 7)
        #expect(ring.byteCount == 2 * entry && ring.count == 2)
        // A row alone over the limit is not remembered; its id is still unique.
        let tiny = RecentInferences(limitBytes: 10)
        let lone = tiny.record(rows: [1, 2], count: 1, rowLength: 2, modelVersion: 1)
        #expect(tiny.lookup(lone[0]) == nil && tiny.byteCount == 0)
    }

    /// Ids carry 128 random bits: 32 hex digits, none repeated, no version or counter to guess from.
    @Test func inferenceIdsAreRandom128Bits() {
        let ring = RecentInferences()
        let ids = ring.record(rows: [Float](repeating: 0, count: 2000), count: 1000, rowLength: 2, modelVersion: 3)
        #expect(Set(ids).count == 1000)
        #expect(ids.allSatisfy { $0.count == 32 && $0.allSatisfy(\.isHexDigit) })
        // Each hex digit position is roughly uniform: no fixed prefix.
        #expect(Set(ids.map { $0.prefix(1) }).count == 16)
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

func inferOneRow(_ scheduler: BatchScheduler) async throws {
    _ = try await scheduler.infer(rows: [1, 2, 3, 4], count: 1, priority: .latency, deadline: 5).get()
}

@Suite struct BatchWaitTests {
    /// One client at a time: there is never a second request to wait for, and the workers are
    /// idle nearly all the time. From the first decision on (within 0.25 s) the scheduler stops
    /// sitting out `max_queue_delay` (here 50 ms) on every request.
    @Test func aLoneClientIsNotHeldForTheQueueDelay() async throws {
        let scheduler = BatchScheduler(slot: ModelSlot(servingModel()), settings: settings(maxBatch: 8, delay: 0.05))
        scheduler.start()
        defer { scheduler.stop() }
        #expect(scheduler.snapshot.batchWait == 0.05)
        for _ in 0..<4 { try await inferOneRow(scheduler) }
        try await Task.sleep(nanoseconds: 300_000_000)  // decisions come at most every 0.25 s
        try await inferOneRow(scheduler)
        #expect(scheduler.snapshot.batchWait == 0)
    }
}

@Suite struct RateWindowTests {
    let second: UInt64 = 1_000_000_000

    /// Every row of the last ten whole seconds counts, however many batches brought it (a ring
    /// of the last 4,096 batches, used before, undercounted small batches at high rates).
    @Test func countsEveryRowOfTheLastTenWholeSeconds() {
        var w = RateWindow(seconds: 10)
        let start = 100 * second
        for i in 0..<5000 { w.add(1, now: start + UInt64(i) * 100_000) }  // 5,000 rows within 0.5 s
        #expect(w.rate(now: start + second / 2) == 0)  // the current second is not whole yet
        #expect(w.rate(now: start + second) == 500)
        w.add(7, now: start + 3 * second)
        #expect(w.rate(now: start + 4 * second) == 500.7)
        #expect(w.rate(now: start + 10 * second) == 500.7)
        #expect(w.rate(now: start + 11 * second) == 0.7)  // second 100 has left the window
        #expect(w.rate(now: start + 14 * second) == 0)
    }
}
