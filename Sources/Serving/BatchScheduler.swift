import Foundation
import Inference

public enum Priority: String, Sendable {
    /// Served before any throughput request.
    case latency
    case throughput
}

public enum ServingError: Error, Equatable, Sendable {
    /// The queue is full; try again after this many seconds.
    case queueFull(retryAfter: Int)
    /// The request's deadline passed before it was computed; it never was.
    case deadlineExceeded
    case noModel
    case shuttingDown
    case wrongShape(expected: Int, got: Int)
}

/// What a request gets back: its rows' scores and the model that computed them.
public struct InferenceOutput: Sendable {
    public let scores: [Float]
    public let model: ServingModel
    public let precision: String
}

public struct SchedulerSettings: Equatable, Sendable {
    public var workers: Int
    public var maxBatchSize: Int
    public var maxQueueDelay: Double
    public var queueCapacity: Int
    /// Bytes of queued input rows beyond which requests are refused.
    public var queueBytes: Int
    public var memoryBudgetBytes: Int
    public var adaptive: Bool
    public var latencyTarget: Double

    public init(workers: Int, maxBatchSize: Int, maxQueueDelay: Double, queueCapacity: Int, queueBytes: Int = .max,
                memoryBudgetBytes: Int, adaptive: Bool, latencyTarget: Double) {
        self.queueBytes = queueBytes
        self.workers = workers
        self.maxBatchSize = maxBatchSize
        self.maxQueueDelay = maxQueueDelay
        self.queueCapacity = queueCapacity
        self.memoryBudgetBytes = memoryBudgetBytes
        self.adaptive = adaptive
        self.latencyTarget = latencyTarget
    }
}

/// Counters and recent latencies, for status and metrics.
public struct SchedulerStats: Sendable {
    public var requests = 0
    public var samples = 0
    public var rejectedQueueFull = 0
    public var deadlineExpired = 0
    public var batches = 0
    public var batchedRows = 0
    public var escalations = 0
    public var queueDepth = 0
    public var queuedBytes = 0
    public var latencyP50 = 0.0
    public var latencyP99 = 0.0
    public var throughput = 0.0
    public var maxBatchSize = 0
    public var workers = 0
    /// How long a batch may wait for more rows right now, in seconds (see `decideWaitCapLocked`).
    public var batchWait = 0.0
}

/// Dynamic batching over worker threads. Requests queue in two priority classes; a worker takes
/// the oldest, then adds more until the batch reaches the size limit or the first request has
/// waited `maxQueueDelay` — a wait that only happens while the workers are the bottleneck (see
/// `decideWaitCapLocked`). Expired requests are answered 504 without being computed; a full queue
/// is answered at once. The batch limit is the smallest of the configured size, what the memory
/// budget allows for the model's plan, and — in adaptive mode — the largest size whose measured
/// p99 compute time stays within half the latency target.
public final class BatchScheduler: @unchecked Sendable {
    final class Request {
        let rows: [Float]
        let count: Int
        let enqueued: UInt64
        let deadline: UInt64
        let completion: @Sendable (Result<InferenceOutput, ServingError>) -> Void
        init(rows: [Float], count: Int, enqueued: UInt64, deadline: UInt64,
             completion: @escaping @Sendable (Result<InferenceOutput, ServingError>) -> Void) {
            self.rows = rows
            self.count = count
            self.enqueued = enqueued
            self.deadline = deadline
            self.completion = completion
        }
    }

    public let slot: ModelSlot
    /// Called after each batch with its row count and each request's queue wait in milliseconds.
    public var onBatch: (@Sendable (_ rows: Int, _ queueWaitsMs: [Double]) -> Void)?
    private let condition = NSCondition()
    private var latencyQueue: [Request] = []
    private var throughputQueue: [Request] = []
    private var latencyHead = 0, throughputHead = 0
    private var settings: SchedulerSettings
    private var accepting = true
    private var stopping = false
    private var inFlight = 0
    private var threads: [Thread] = []
    private var stats = SchedulerStats()
    private var latencies = RingBuffer(capacity: 4096)
    private var completions = RateWindow(seconds: 10)  // rows answered per second, for throughput
    private var computeByBatch: [Int: RingBuffer] = [:]
    private var lastProgress = BatchScheduler.now()
    /// Adaptive mode's batch limit, re-decided every 64 batches from `computeByBatch`.
    private var adaptiveLimit: Int?
    /// How long a worker waits for more rows (seconds), re-decided every 0.25 s; nil until the first
    /// decision, when the configured `maxQueueDelay` applies.
    private var waitCap: Double?
    private var lastDecision: UInt64 = 0
    /// Worker CPU time spent computing so far, and at the last decision, for utilisation. CPU
    /// time, not wall time: a worker descheduled mid-batch (other processes on a small device)
    /// is not busy, and waiting for fuller batches would not make it less so.
    private var busyNanos: UInt64 = 0, busyAtDecision: UInt64 = 0

    public init(slot: ModelSlot, settings: SchedulerSettings) {
        self.slot = slot
        self.settings = settings
    }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// CPU time of the calling thread, in nanoseconds.
    static func threadCPUTime() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    public func start() {
        let n = settings.workers > 0 ? settings.workers : ProcessInfo.processInfo.activeProcessorCount
        for i in 0..<n {
            let t = Thread { [self] in self.workerLoop(worker: i) }
            t.name = "inference-\(i)"
            t.qualityOfService = .userInitiated
            threads.append(t)
            t.start()
        }
        condition.lock()
        stats.workers = n
        condition.unlock()
    }

    /// The batch capacity of the largest plan a worker builds for `model`: max_batch_size, or less
    /// when the memory budget allows less.
    public func largestPlan(for model: ServingModel) -> Int {
        condition.lock()
        defer { condition.unlock() }
        return model.batchLimit(budgetBytes: settings.memoryBudgetBytes, limit: settings.maxBatchSize)
    }

    /// SIGHUP: the reloadable settings (`workers` and `memoryBudgetBytes` need a restart).
    public func update(_ new: SchedulerSettings) {
        condition.lock()
        let (workers, budget) = (settings.workers, settings.memoryBudgetBytes)
        settings = new
        (settings.workers, settings.memoryBudgetBytes) = (workers, budget)
        adaptiveLimit = nil
        waitCap = nil
        lastDecision = 0
        condition.unlock()
    }

    /// `now` plus `seconds`, saturating: a negative, NaN or huge deadline never traps.
    public static func instant(_ now: UInt64, plus seconds: Double) -> UInt64 {
        guard seconds > 0 else { return now }  // also NaN
        let nanos = seconds * 1e9
        guard nanos < Double(UInt64.max - now) else { return .max }
        return now + UInt64(nanos)
    }

    /// Queues `count` rows (flat) or refuses at once.
    public func submit(rows: [Float], count: Int, priority: Priority, deadline: Double,
                       completion: @escaping @Sendable (Result<InferenceOutput, ServingError>) -> Void) {
        let now = Self.now()
        let bytes = rows.count * MemoryLayout<Float>.size
        condition.lock()
        guard accepting else {
            condition.unlock()
            completion(.failure(.shuttingDown))
            return
        }
        // A request larger than the whole byte budget is still taken into an empty queue.
        guard queuedCount < settings.queueCapacity, queuedBytes == 0 || queuedBytes + bytes <= settings.queueBytes else {
            stats.rejectedQueueFull += 1
            condition.unlock()
            completion(.failure(.queueFull(retryAfter: 1)))
            return
        }
        let r = Request(rows: rows, count: count, enqueued: now, deadline: Self.instant(now, plus: deadline), completion: completion)
        if priority == .latency { latencyQueue.append(r) } else { throughputQueue.append(r) }
        queuedBytes += bytes
        stats.requests += 1
        condition.signal()
        condition.unlock()
    }

    /// True, and counted as a queue-full refusal, when the queue is full right now: lets the
    /// server refuse a request before reading its body (the request itself is never queued).
    public func refuseIfFull() -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard accepting, queuedCount >= settings.queueCapacity || queuedBytes >= settings.queueBytes else { return false }
        stats.rejectedQueueFull += 1
        return true
    }

    public func infer(rows: [Float], count: Int, priority: Priority, deadline: Double) async -> Result<InferenceOutput, ServingError> {
        await withCheckedContinuation { continuation in
            submit(rows: rows, count: count, priority: priority, deadline: deadline) { continuation.resume(returning: $0) }
        }
    }

    /// Stops accepting; waits until every accepted request is answered or `timeout` passes.
    /// Returns whether everything was answered.
    public func drain(timeout: Double) -> Bool {
        condition.lock()
        accepting = false
        let limit = Date(timeIntervalSinceNow: timeout)
        while queuedCount > 0 || inFlight > 0 {
            if !condition.wait(until: limit) { break }
        }
        let done = queuedCount == 0 && inFlight == 0
        condition.unlock()
        return done
    }

    /// Ends the workers (after `drain`); anything still queued is answered `shuttingDown`.
    public func stop() {
        condition.lock()
        accepting = false
        stopping = true
        var left: [Request] = []
        while let r = popLocked() { left.append(r) }
        condition.broadcast()
        condition.unlock()
        for r in left { r.completion(.failure(.shuttingDown)) }
    }

    private var queuedCount: Int { (latencyQueue.count - latencyHead) + (throughputQueue.count - throughputHead) }
    /// Bytes of input rows waiting in the queues.
    private var queuedBytes = 0

    public var snapshot: SchedulerStats {
        condition.lock()
        var s = stats
        s.queueDepth = queuedCount
        s.queuedBytes = queuedBytes
        s.maxBatchSize = min(settings.maxBatchSize, adaptiveLimit ?? .max)
        s.batchWait = batchWaitLocked
        // Copies (copy-on-write), so the sorting below does not hold up the workers.
        let latencies = self.latencies
        s.throughput = completions.rate(now: Self.now())
        condition.unlock()
        s.latencyP50 = latencies.percentile(0.5)
        s.latencyP99 = latencies.percentile(0.99)
        return s
    }

    /// Whether workers are keeping up: idle, or a batch finished within `seconds`.
    public func isMakingProgress(within seconds: Double) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        if queuedCount == 0 && inFlight == 0 { return true }
        return Double(Self.now() - lastProgress) / 1e9 < seconds
    }

    private func popLocked() -> Request? {
        guard let r = Self.pop(&latencyQueue, &latencyHead) ?? Self.pop(&throughputQueue, &throughputHead) else { return nil }
        queuedBytes -= r.rows.count * MemoryLayout<Float>.size
        return r
    }

    /// Takes the head of `queue`; compacts the array once more than half of it is consumed.
    private static func pop(_ queue: inout [Request], _ head: inout Int) -> Request? {
        guard head < queue.count else { return nil }
        let r = queue[head]
        head += 1
        if head > 1024 && head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        return r
    }

    private func peekLocked() -> Request? {
        if latencyHead < latencyQueue.count { return latencyQueue[latencyHead] }
        if throughputHead < throughputQueue.count { return throughputQueue[throughputHead] }
        return nil
    }

    /// The largest power-of-two batch whose measured p99 compute time stays within half the
    /// latency target (the other half is left for queueing).
    private func decideAdaptiveLimitLocked() {
        let target = settings.latencyTarget / 2
        var best = 1, size = 1
        while size <= settings.maxBatchSize {
            if let r = computeByBatch[size], r.count >= 16, r.percentile(0.99) > target * 1000 { break }
            best = size
            size *= 2
        }
        adaptiveLimit = best
    }

    /// Waiting for a fuller batch trades latency for compute: it pays only while the workers are
    /// the bottleneck. When they are busy less than half the time, requests never queue behind
    /// compute, so a wait only adds latency — workers then take what is queued and go (batches
    /// still form from whatever arrived while they computed). When they are busy, the wait is
    /// `maxQueueDelay` but no longer than a full batch takes to compute (learned while serving):
    /// waiting longer delays every row in the batch by more than batching can save.
    private func decideWaitCapLocked(limit: Int) {
        let now = Self.now()
        let elapsed = Double(now - lastDecision)
        defer { lastDecision = now; busyAtDecision = busyNanos }
        guard lastDecision > 0, stats.workers > 0 else { return }
        let utilisation = Double(busyNanos - busyAtDecision) / (elapsed * Double(stats.workers))
        guard utilisation >= 0.5 else {
            waitCap = 0
            return
        }
        // The largest measured batch size up to the limit, scaled linearly to the limit.
        let measured = computeByBatch.filter { $0.key <= limit && $0.value.count >= 4 }.max { $0.key < $1.key }
        waitCap = measured.map { $0.value.percentile(0.5) / 1000 * Double(limit) / Double($0.key) }
    }

    /// The wait in force: `maxQueueDelay`, capped by the last decision (none yet: uncapped).
    private var batchWaitLocked: Double { min(settings.maxQueueDelay, waitCap ?? .infinity) }

    private func workerLoop(worker: Int) {
        var plans: (model: ServingModel, capacity: Int, plan: InferencePlan)?
        var input: [Float] = []
        while true {
            condition.lock()
            while peekLocked() == nil && !stopping { condition.wait() }
            guard let first = popLocked() else {
                condition.unlock()
                return
            }
            // The model is taken after the wait, so a batch never starts on a model swapped out meanwhile.
            guard let model = slot.current else {
                condition.unlock()
                first.completion(.failure(.noModel))
                continue
            }
            if settings.adaptive && adaptiveLimit == nil { decideAdaptiveLimitLocked() }
            let limit = min(model.batchLimit(budgetBytes: settings.memoryBudgetBytes, limit: settings.maxBatchSize),
                            settings.adaptive ? adaptiveLimit! : .max)
            if Self.now() - lastDecision > 250_000_000 { decideWaitCapLocked(limit: limit) }
            var batch = [first]
            var rows = first.count
            let waitUntil = Self.instant(first.enqueued, plus: batchWaitLocked)
            while rows < limit {
                if let next = peekLocked() {
                    if rows + next.count > limit { break }
                    batch.append(popLocked()!)
                    rows += next.count
                    continue
                }
                let now = Self.now()
                if now >= waitUntil || stopping { break }
                _ = condition.wait(until: Date(timeIntervalSinceNow: Double(waitUntil - now) / 1e9))
            }
            // Expired requests are answered, never computed (counted before they are answered).
            // Rows shaped for another model (swapped in since the request was read) never reach
            // the kernels: they would read past the request's buffer.
            let now = Self.now()
            let width = model.inputCount
            let misshaped = batch.filter { $0.rows.count != $0.count * width }
            let live = batch.filter { now <= $0.deadline && $0.rows.count == $0.count * width }
            let expired = batch.filter { now > $0.deadline && $0.rows.count == $0.count * width }
            stats.deadlineExpired += expired.count
            inFlight += batch.count
            condition.unlock()
            for r in expired { r.completion(.failure(.deadlineExceeded)) }
            for r in misshaped { r.completion(.failure(.wrongShape(expected: width, got: r.rows.count / max(r.count, 1)))) }
            let waits = live.map { Double(now - $0.enqueued) / 1e6 }
            var computeSeconds = 0.0
            var computeCPU: UInt64 = 0
            var escalated = 0
            var liveRows = 0
            if !live.isEmpty {
                liveRows = live.reduce(0) { $0 + $1.count }
                let n = model.inputCount, k = model.outputCount
                let capacity = max(limit, live.map(\.count).max() ?? 1)
                // The model itself, not its address: a freed model's address can be reused by the next one.
                if plans == nil || plans!.model !== model || plans!.capacity < min(capacity, limit) {
                    plans = (model, min(capacity, limit), model.makePlan(batch: min(capacity, limit)))
                    input = [Float](repeating: 0, count: plans!.capacity * n)
                }
                let plan = plans!.plan
                var outputs = [[Float]](repeating: [], count: live.count)
                let t0 = Self.now(), cpu0 = Self.threadCPUTime()
                let before = (plan as? EscalationCounting)?.escalationCount ?? 0
                // Whole requests are packed into chunks of at most `capacity` rows; a request larger
                // than that runs alone in pieces.
                var i = 0
                while i < live.count {
                    var j = i, chunkRows = 0
                    while j < live.count && chunkRows + live[j].count <= plan.batchCapacity { chunkRows += live[j].count; j += 1 }
                    if j == i {
                        let r = live[i]
                        var out: [Float] = []
                        out.reserveCapacity(r.count * k)
                        r.rows.withUnsafeBufferPointer { buf in
                            var s = 0
                            while s < r.count {
                                let b = min(plan.batchCapacity, r.count - s)
                                let scores = plan.run(buf.baseAddress! + s * n, batch: b)
                                model.observer?.observe(worker: worker, input: buf.baseAddress! + s * n, scores: scores.baseAddress!,
                                                        embeddings: plan.embeddings?.baseAddress, rows: b)
                                model.sampler?.observe(worker: worker, input: buf.baseAddress! + s * n, scores: scores.baseAddress!,
                                                       embeddings: nil, rows: b)
                                out.append(contentsOf: scores)
                                s += b
                            }
                        }
                        outputs[i] = out
                        i += 1
                        continue
                    }
                    input.withUnsafeMutableBufferPointer { dst in
                        var o = 0
                        for q in i..<j {
                            live[q].rows.withUnsafeBufferPointer { src in
                                (dst.baseAddress! + o * n).update(from: src.baseAddress!, count: live[q].count * n)
                            }
                            o += live[q].count
                        }
                    }
                    let scores = input.withUnsafeBufferPointer { buf in
                        let scores = plan.run(buf.baseAddress!, batch: chunkRows)
                        model.observer?.observe(worker: worker, input: buf.baseAddress!, scores: scores.baseAddress!,
                                                embeddings: plan.embeddings?.baseAddress, rows: chunkRows)
                        model.sampler?.observe(worker: worker, input: buf.baseAddress!, scores: scores.baseAddress!, embeddings: nil, rows: chunkRows)
                        return scores
                    }
                    var o = 0
                    for q in i..<j {
                        outputs[q] = Array(scores[(o * k)..<((o + live[q].count) * k)])
                        o += live[q].count
                    }
                    i = j
                }
                computeSeconds = Double(Self.now() - t0) / 1e9
                computeCPU = Self.threadCPUTime() &- cpu0
                escalated = ((plan as? EscalationCounting)?.escalationCount ?? 0) - before
                let precision = plan.precision
                for (q, r) in live.enumerated() {
                    r.completion(.success(InferenceOutput(scores: outputs[q], model: model, precision: precision)))
                }
            }
            let end = Self.now()
            condition.lock()
            inFlight -= batch.count
            stats.escalations += escalated
            if !live.isEmpty {
                stats.batches += 1
                stats.batchedRows += liveRows
                stats.samples += liveRows
                for r in live { latencies.append(Double(end - r.enqueued) / 1e6) }
                completions.add(liveRows, now: end)
                let bucket = 1 << Int(log2(Double(max(liveRows, 1))))
                computeByBatch[bucket, default: RingBuffer(capacity: 64)].append(computeSeconds * 1000)
                busyNanos += computeCPU
                if settings.adaptive && stats.batches % 64 == 0 { decideAdaptiveLimitLocked() }
            }
            lastProgress = end
            condition.broadcast()
            condition.unlock()
            if !live.isEmpty { onBatch?(liveRows, waits) }
        }
    }
}

/// Plans that re-run samples in FP32 report how many.
public protocol EscalationCounting { var escalationCount: Int { get } }

/// Rows answered in each of the last few whole seconds: a rate that stays exact at any request
/// rate (a ring of recent batches covers less than the window once batches are many and small).
public struct RateWindow: Sendable {
    private var counts: [Int]
    private var stamps: [UInt64]

    public init(seconds: Int) {
        counts = Array(repeating: 0, count: seconds)
        stamps = Array(repeating: .max, count: seconds)
    }

    public mutating func add(_ rows: Int, now: UInt64) {
        let second = now / 1_000_000_000
        let i = Int(second % UInt64(counts.count))
        if stamps[i] != second {
            stamps[i] = second
            counts[i] = 0
        }
        counts[i] += rows
    }

    /// Rows per second over the window's whole seconds before `now`'s.
    public func rate(now: UInt64) -> Double {
        let second = now / 1_000_000_000
        var total = 0
        for i in counts.indices where stamps[i] != .max && stamps[i] < second && stamps[i] + UInt64(counts.count) >= second {
            total += counts[i]
        }
        return Double(total) / Double(counts.count)
    }
}

/// Fixed-size ring of recent values for percentiles.
struct RingBuffer {
    private var values: [Double]
    private var next = 0
    private(set) var count = 0

    init(capacity: Int) {
        values = Array(repeating: 0, count: capacity)
    }

    mutating func append(_ v: Double) {
        values[next] = v
        next = (next + 1) % values.count
        count = min(count + 1, values.count)
    }

    func percentile(_ p: Double) -> Double {
        guard count > 0 else { return 0 }
        let sorted = values[0..<count].sorted()
        return sorted[min(count - 1, Int(Double(count - 1) * p + 0.5))]
    }
}
