#if canImport(Glibc)
import Glibc
#endif
import AgentAPI
import AgentConfig
import Drift
import Crypto
import Foundation
import Inference
import Learning
import Logging
import ModelFile
import Quantization
import Serving
import Store
import Synchronization
import Training

/// Why `POST /v1/learn` was refused.
enum LearnRefusal: Error, CustomStringConvertible {
    case busy(job: String)
    case noModel
    /// The replay memory is not yet the serving version's (a swap a moment ago).
    case notReady
    case store(StoreError)
    var description: String {
        switch self {
        case .busy(let job): "update job \(job) is running; GET /v1/learn shows it (agentctl learn --wait waits for it)"
        case .noModel: "no model is loaded"
        case .notReady: "the replay memory is being switched to the serving version; try again in a second"
        case .store(let e): "the job could not be recorded: \(e)"
        }
    }
}

/// Picks a few of the answered rows for the replay memory's live part: every `stride`-th row,
/// counted across all workers. The rows are copied by each serving model's `LiveTap`.
final class LiveSampler: Sendable {
    let stride: UInt64
    private let counter = Atomic<UInt64>(0)

    init(stride: UInt64 = 16) { self.stride = max(stride, 1) }

    /// The tap a serving model of `version` reports its rows through.
    func tap(version: Int, inputs: Int, classes: Int) -> LiveTap {
        LiveTap(sampler: self, version: version, inputs: inputs, classes: classes)
    }

    /// The first of `rows` rows (just answered) that is a multiple of the stride, if any.
    fileprivate func firstPick(rows: Int) -> Int? {
        let first = counter.add(UInt64(rows), ordering: .relaxed).oldValue
        let r = (stride - first % stride) % stride
        return r < UInt64(rows) ? Int(r) : nil
    }
}

/// One serving model's copy of the picked rows, off the hot path's allocations: buffers for
/// `capacity` rows sized once for this model's widths, filled under a try-lock (a worker never
/// waits: a busy tap drops the row), emptied by the learner's loop once a second.
final class LiveTap: RowObserver, @unchecked Sendable {
    let sampler: LiveSampler
    let version: Int
    let inputs: Int
    let classes: Int
    let capacity = 64
    private let lock = NSLock()
    private var inputBuffer: [Float]
    private var scoreBuffer: [Float]
    private var count = 0

    init(sampler: LiveSampler, version: Int, inputs: Int, classes: Int) {
        self.sampler = sampler
        self.version = version
        self.inputs = inputs
        self.classes = classes
        inputBuffer = [Float](repeating: 0, count: capacity * inputs)
        scoreBuffer = [Float](repeating: 0, count: capacity * classes)
    }

    func observe(worker: Int, input: UnsafePointer<Float>, scores: UnsafePointer<Float>, embeddings: UnsafePointer<Float>?, rows: Int) {
        guard var r = sampler.firstPick(rows: rows), lock.try() else { return }
        defer { lock.unlock() }
        let (n, k) = (inputs, classes)
        inputBuffer.withUnsafeMutableBufferPointer { xb in
            scoreBuffer.withUnsafeMutableBufferPointer { sb in
                while r < rows && count < capacity {
                    (xb.baseAddress! + count * n).update(from: input + r * n, count: n)
                    (sb.baseAddress! + count * k).update(from: scores + r * k, count: k)
                    count += 1
                    r += Int(sampler.stride)
                }
            }
        }
    }

    /// The rows taken since the last call.
    func drain() -> [(input: [Float], scores: [Float])] {
        lock.lock()
        defer { lock.unlock() }
        let out = (0..<count).map { i in
            (Array(inputBuffer[(i * inputs)..<((i + 1) * inputs)]), Array(scoreBuffer[(i * classes)..<((i + 1) * classes)]))
        }
        count = 0
        return out
    }
}

/// The on-device learner: the replay memory (SQLite rows, indexed in memory), the update job on
/// a thread of its own at idle priority, the automatic trigger, and the job's record.
final class Learner: @unchecked Sendable {
    let database: AgentDatabase
    let writer: StoreWriter
    let models: ModelManager
    let logger: Logger
    let sampler: LiveSampler
    let replayConfig: AgentConfig.Replay
    /// The learn settings in force (SIGHUP changes them).
    let settings: @Sendable () -> AgentConfig.Learn
    /// The drift state of the serving model ("ok", "drift", …).
    let driftState: @Sendable () -> String?

    private let lock = NSLock()
    private var index: ReplayIndex
    private var bytesPerSample = 1
    private var nextId: Int64 = 1
    private var indexedVersion: Int?
    private var job: LearnJob?
    private var running = false
    private var thread: Thread?
    private let cancelled = Atomic<Bool>(false)
    private let finished = NSCondition()
    private var jobsStarted: UInt64 = 0
    private var outcomes: [String: Int] = [:]
    /// The newest feedback id the running job read (a failed job moves the trigger past it).
    private var jobWatermark: Int64?

    /// Jobs ended since start, by outcome (decision, or failed / cancelled).
    var outcomeTotals: [String: Int] {
        lock.lock()
        defer { lock.unlock() }
        return outcomes
    }

    static let cursorKey = "feedback_cursor"
    static let watermarkKey = "last_job_feedback"
    static let pausedKey = "auto_paused"

    /// Automatic updates paused by the operator (`pause-learning` over MQTT); kept across restarts.
    /// An update asked for explicitly still runs.
    private(set) var autoPaused: Bool {
        get { lock.lock(); defer { lock.unlock() }; return paused }
        set { lock.lock(); paused = newValue; lock.unlock() }
    }
    private var paused = false

    func setAutoPaused(_ value: Bool) throws {
        try database.setLearnerValue(Self.pausedKey, value ? 1 : 0)
        autoPaused = value
        writer.appendEvent(kind: value ? "learning_paused" : "learning_resumed",
                           message: value ? "automatic updates paused by the operator" : "automatic updates resumed by the operator")
    }

    init(database: AgentDatabase, writer: StoreWriter, models: ModelManager, logger: Logger, sampler: LiveSampler,
         replay: AgentConfig.Replay, settings: @escaping @Sendable () -> AgentConfig.Learn, driftState: @escaping @Sendable () -> String?) {
        self.database = database
        self.writer = writer
        self.models = models
        self.logger = logger
        self.sampler = sampler
        replayConfig = replay
        self.settings = settings
        self.driftState = driftState
        index = ReplayIndex(kind: ReplayPolicyKind(rawValue: replay.policy) ?? .classBalanced, capacity: replay.capacity, liveShare: replay.liveShare)
    }

    // MARK: start and the replay memory

    /// At start: jobs a crash left running are marked interrupted; the replay memory is indexed
    /// for the serving model and seeded from its file when it holds no seed yet.
    func start() throws {
        autoPaused = (try database.learnerValue(Self.pausedKey) ?? 0) != 0
        let interrupted = try database.markInterruptedJobs()
        for id in interrupted {
            writer.appendEvent(kind: "update_interrupted", message: "update job \(id) was running when agentd stopped; nothing of it was applied")
            logger.warning("an update job was interrupted by a stop or crash; nothing of it was applied", metadata: ["job": "\(id)"])
        }
        if let row = try database.lastJob(), let data = row.result.data(using: .utf8), var j = try? JSONDecoder().decode(LearnJob.self, from: data) {
            if interrupted.contains(row.id) {
                j.state = "interrupted"
                j.phase = nil
                j.reason = "agentd stopped or crashed during the update; nothing was applied"
            }
            job = j
        }
        try syncWithServingModel()
    }

    /// Re-indexes the replay memory when the serving model's shape changed, drops rows of
    /// another shape, and seeds from the model file when no seed rows are kept.
    func syncWithServingModel() throws {
        guard let model = models.slot.current else { return }
        lock.lock()
        defer { lock.unlock() }
        // A running job holds a copy of the index; it is re-read once the job is done.
        guard indexedVersion != model.version, !running else { return }
        let network = model.network
        // The replay memory belongs to a model lineage: the models that share a replay seed (a
        // prepared file and its quantized copies, local updates, rollbacks among them). Another
        // lineage's rows would distil toward another model's logits under other label indices:
        // a model of another lineage starts the memory anew from its own seed.
        let lineage = Self.lineageId(network)
        if let stored = try database.learnerValue("replay.lineage"), stored != lineage {
            let (all, stale) = try database.replayRows(inputs: network.inputCount, classes: network.outputCount)
            try database.resetReplay(ids: all.map(\.id) + stale, lineage: lineage)
            writer.appendEvent(kind: "replay_reset", message: "version \(model.version) is of another model lineage (another replay seed or labels); "
                               + "the replay memory's \(all.count + stale.count) samples were dropped")
        } else if try database.learnerValue("replay.lineage") == nil {
            try database.setLearnerValue("replay.lineage", lineage)
        }
        let (rows, stale) = try database.replayRows(inputs: network.inputCount, classes: network.outputCount)
        if !stale.isEmpty { try database.applyReplay(.init(delete: stale)) }
        bytesPerSample = AgentDatabase.ReplayRow(id: 0, source: "feedback", label: 0, group: 0, score: 0,
                                                 input: [Float](repeating: 0, count: network.inputCount),
                                                 logits: [Float](repeating: 0, count: network.outputCount), modelVersion: 0).bytes
        let capacity = max(1, min(replayConfig.capacity, replayConfig.maxBytes / bytesPerSample))
        var fresh = ReplayIndex(kind: index.kind, capacity: capacity, liveShare: replayConfig.liveShare)
        fresh.restore(rows.map(Self.entry), counters: try database.replayCounters())
        // A smaller replay.capacity or max_bytes (or larger rows) than the rows were kept for.
        let excess = fresh.shrink()
        if !excess.isEmpty { try database.applyReplay(.init(delete: excess), counters: fresh.counters) }
        index = fresh
        nextId = max(rows.map(\.id).max() ?? 0, try database.maxReplayId()) + 1
        if !rows.contains(where: { $0.source == ReplaySource.seed.rawValue }), let seed = try? ReplaySeed.decode(network) {
            var change = AgentDatabase.ReplayChange()
            var next = index
            let classes = network.outputCount
            for i in 0..<seed.rows {
                let logits = Array(seed.logits[(i * classes)..<((i + 1) * classes)])
                let score = logits.withUnsafeBufferPointer { replayValue(logits: $0.baseAddress!, classes: classes, label: seed.labels[i]) }
                let row = AgentDatabase.ReplayRow(id: nextId + Int64(i), source: ReplaySource.seed.rawValue, label: seed.labels[i], group: seed.labels[i],
                                                  score: score, input: Array(seed.inputs[(i * network.inputCount)..<((i + 1) * network.inputCount)]),
                                                  logits: logits, modelVersion: model.version)
                Self.offer(row, to: &next, change: &change)
            }
            try database.applyReplay(change, counters: next.counters)
            index = next
            nextId += Int64(seed.rows)
            writer.appendEvent(kind: "replay_seeded", message: "replay memory seeded with \(change.insert.count) labelled rows from version \(model.version)'s file")
        }
        // Only now: a failure above is tried again on the next tick.
        indexedVersion = model.version
    }

    /// 63 bits of SHA-256 over the file's replay seed (or, without one, its labels and input shape).
    static func lineageId(_ network: Network) -> Int64 {
        var h = SHA256()
        h.update(data: Data(network.labels.joined(separator: "\u{1}").utf8))
        h.update(data: Data(network.inputShape.map(String.init).joined(separator: "x").utf8))
        for t in network.fieldTensors where t.name.hasPrefix("replay.") { h.update(data: Data(t.name.utf8)); h.update(data: Data(t.bytes)) }
        let d = Array(h.finalize())
        return Int64(bitPattern: d.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }) & Int64.max
    }

    static func entry(_ r: AgentDatabase.ReplayRow) -> ReplayEntry {
        ReplayEntry(id: r.id, label: r.label, group: r.group, source: ReplaySource(rawValue: r.source) ?? .live, score: r.score)
    }

    /// Offers a row to `index`, folding the outcome into `change` (a row that comes and goes in
    /// the same change is neither inserted nor deleted).
    static func offer(_ row: AgentDatabase.ReplayRow, to index: inout ReplayIndex, change: inout AgentDatabase.ReplayChange) {
        guard let evicted = index.offer(entry(row)) else { return }
        change.insert.append(row)
        for id in evicted {
            if let i = change.insert.firstIndex(where: { $0.id == id }) { change.insert.remove(at: i) } else { change.delete.append(id) }
        }
    }

    /// Live rows gathered since the last call go into the replay memory while drift is `ok`.
    func flushLiveRows() {
        // Only the serving model's tap: rows a swapped-out model answered are not its.
        guard let model = models.slot.current, let tap = model.sampler as? LiveTap else { return }
        let rows = tap.drain()
        guard !rows.isEmpty, driftState() == "ok" else { return }
        lock.lock()
        defer { lock.unlock() }
        guard indexedVersion == model.version, !running else { return }
        let network = model.network, classes = network.outputCount
        var next = index, change = AgentDatabase.ReplayChange(), id = nextId
        for r in rows where tap.version == model.version && r.input.count == network.inputCount && r.scores.count == classes {
            // Scores of a softmax model are probabilities: their logs are logits up to a constant.
            let logits = network.endsWithSoftmax ? r.scores.map { logf(max($0, 1e-12)) } : r.scores
            guard r.input.allSatisfy(\.isFinite), logits.allSatisfy(\.isFinite) else { continue }
            let predicted = logits.indices.max { logits[$0] < logits[$1] } ?? 0
            let score = logits.withUnsafeBufferPointer { replayValue(logits: $0.baseAddress!, classes: classes, label: nil) }
            Self.offer(.init(id: id, source: ReplaySource.live.rawValue, label: nil, group: predicted, score: score, input: r.input,
                             logits: logits, modelVersion: model.version), to: &next, change: &change)
            id += 1
        }
        do {
            try database.applyReplay(change, counters: next.counters)
            index = next
            nextId = id
            } catch {
            logger.warning("live replay rows not stored", metadata: ["error": "\(StoreError(error))"])
        }
    }

    func replayResponse() -> ReplayResponse {
        let labels = models.slot.current?.labels ?? []
        lock.lock()
        defer { lock.unlock() }
        let fill = index.fill
        var perClass: [String: Int] = [:]
        for (c, n) in fill.perClass { perClass[c < labels.count ? labels[c] : String(c)] = n }
        var perSource: [String: Int] = [:]
        for s in ReplaySource.allCases { perSource[s.rawValue] = fill.perSource[s] ?? 0 }
        let cursor = ((try? database.learnerValue(Self.cursorKey)) ?? nil) ?? 0
        let waiting = (try? database.feedbackCount(after: cursor)) ?? 0
        return ReplayResponse(capacity: index.capacity, policy: index.kind.rawValue, samples: index.entries.count, bytes: index.entries.count * bytesPerSample,
                              perClass: perClass, perSource: perSource, newLabels: waiting)
    }

    var replayFill: (samples: Int, capacity: Int) {
        lock.lock()
        defer { lock.unlock() }
        return (index.entries.count, index.capacity)
    }

    // MARK: jobs

    var currentJob: LearnJob? {
        lock.lock()
        defer { lock.unlock() }
        return job
    }

    var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return running
    }

    /// Starts an update on its own thread; the job is recorded before this returns.
    func startJob(trigger: String, dryRun: Bool) throws -> String {
        guard let model = models.slot.current else { throw LearnRefusal.noModel }
        if !isRunning {
            // The replay memory must be the serving version's (a rollback or reload a moment ago).
            do { try syncWithServingModel() } catch { throw LearnRefusal.store(StoreError(error)) }
        }
        lock.lock()
        defer { lock.unlock() }
        if running, let job { throw LearnRefusal.busy(job: job.job) }
        guard indexedVersion == model.version, models.slot.current === model else { throw LearnRefusal.notReady }
        jobsStarted += 1
        jobWatermark = nil
        let started = AgentDatabase.now()
        let id = "learn-" + String(format: "%08x%08x", UInt32(truncatingIfNeeded: Int(Date().timeIntervalSince1970)), UInt32.random(in: 0...UInt32.max))
        var j = LearnJob(job: id, state: "running", trigger: trigger, dryRun: dryRun, started: started)
        j.phase = "loading"
        j.baseVersion = model.version
        do {
            try database.insertJob(id: id, state: "running", result: Self.json(j))
        } catch {
            throw LearnRefusal.store(StoreError(error))
        }
        job = j
        running = true
        cancelled.store(false, ordering: .relaxed)
        let seed = jobsStarted
        let t = Thread { [self] in
            self.run(id: id, model: model, dryRun: dryRun, seed: seed)
        }
        t.name = "agentd-learn"
        t.stackSize = 8 << 20
        thread = t
        t.start()
        writer.appendEvent(kind: "update_started", message: "update job \(id) started (\(trigger)\(dryRun ? ", dry run" : "")) from version \(model.version)")
        logger.notice("update started", metadata: ["job": "\(id)", "trigger": "\(trigger)", "dry_run": "\(dryRun)"])
        return id
    }

    /// Cancels a running job and waits (up to `timeout` seconds) for its thread to record it.
    /// Training checks for cancellation at every step and the later phases between them, so a
    /// job ends within a phase (Fisher on ≤ 1000 rows, a re-quantization, the commit).
    func cancelAndWait(timeout: Double) {
        cancelled.store(true, ordering: .relaxed)
        let deadline = Date().addingTimeInterval(timeout)
        finished.lock()
        while isRunning && Date() < deadline { _ = finished.wait(until: min(deadline, Date().addingTimeInterval(0.05))) }
        finished.unlock()
    }

    /// The API's JSON (a job record is stored as `GET /v1/learn` shows it).
    static func json<T: Encodable>(_ value: T) -> String { String(decoding: APIServer.encode(value), as: UTF8.self) }

    private func update(_ body: (inout LearnJob) -> Void) {
        lock.lock()
        if job != nil { body(&job!) }
        lock.unlock()
    }

    /// SCHED_IDLE for this thread (Linux: runs only when nothing else wants the CPU), else nice 19.
    static func lowerPriority() -> String {
        #if os(Linux)
        var param = sched_param()
        param.sched_priority = 0
        // SCHED_IDLE is 5 in <sched.h>; Glibc does not export the macro to Swift.
        if sched_setscheduler(0, 5, &param) == 0 { return "idle" }
        if setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 19) == 0 { return "nice 19" }
        #endif
        return "normal"
    }

    private func run(id: String, model: ServingModel, dryRun: Bool, seed: UInt64) {
        let priority = Self.lowerPriority()
        let started = Date()
        let cpu0 = ContinualLearner.threadCPUSeconds()
        let learn = settings()
        var final: LearnJob? = nil
        var state = "finished"
        do {
            final = try execute(id: id, model: model, dryRun: dryRun, seed: seed, learn: learn, started: started, cpu0: cpu0)
        } catch let e as LearnError where cancelled.load(ordering: .relaxed) {
            state = "cancelled"
            update { $0.reason = e.message }
        } catch {
            state = "failed"
            update { $0.reason = "\(error)" }
        }
        let end = AgentDatabase.now()
        var done = final ?? currentJob!
        done.state = state
        done.phase = nil
        done.finished = end
        done.seconds = Date().timeIntervalSince(started)
        done.cpuSeconds = ContinualLearner.threadCPUSeconds() - cpu0
        if state != "finished" || done.decision != "accepted" || dryRun {
            // An accepted update recorded its job in its own commit. A failed or cancelled one
            // moves the automatic trigger's count past the labels it saw, so the trigger waits
            // for learn.min_labels more instead of failing again every tick.
            var counters: [String: Int64] = [:]
            if state == "failed" && !dryRun, let seen = jobWatermark { counters[Self.watermarkKey] = seen }
            do {
                try database.finishJob(id: id, state: state, result: Self.json(done), counters: counters)
            } catch {
                logger.error("update job result not stored", metadata: ["job": "\(id)", "error": "\(StoreError(error))"])
            }
        }
        if state != "finished" {
            writer.appendEvent(kind: "update_\(state)", message: "update job \(id) \(state): \(done.reason ?? "")")
            logger.warning("update \(state)", metadata: ["job": "\(id)", "reason": "\(done.reason ?? "")"])
        }
        logger.info("update job ended", metadata: ["job": "\(id)", "priority": "\(priority)", "seconds": "\(done.seconds ?? 0)"])
        // The ended record, its count and "not running" become visible together, after the
        // record is stored: a client that sees the job ended may start the next one at once.
        // (Publishing the record first left a gap, seconds long for this SCHED_IDLE thread on a
        // busy machine, in which a new request got 409 busy and `agentctl learn --wait` took the
        // ended job for the running one and printed its outcome again.)
        finished.lock()
        lock.lock()
        if job != nil { job = done }
        outcomes[state == "finished" ? (done.decision ?? state) : state, default: 0] += 1
        running = false
        lock.unlock()
        finished.broadcast()
        finished.unlock()
    }

    /// The job's work; returns the finished record (state set by the caller).
    private func execute(id: String, model: ServingModel, dryRun: Bool, seed: UInt64, learn: AgentConfig.Learn,
                         started: Date, cpu0: Double) throws -> LearnJob {
        let network = model.network
        let classes = network.outputCount
        let anchor = try EWCAnchor.decode(network)
        let replaySeed = try ReplaySeed.decode(network)
        let cursor = try database.learnerValue(Self.cursorKey) ?? 0
        let feedback = try database.feedback(after: cursor)
        var classIndex: [String: Int] = [:]
        for (i, l) in network.labels.enumerated() { classIndex[l] = i }
        let newData = feedback.compactMap { f -> LearnSample? in
            guard let c = classIndex[f.label], f.input.count == network.inputCount else { return nil }
            return LearnSample(input: f.input, label: c, logits: nil)
        }
        let watermark = feedback.last?.id ?? cursor
        lock.lock()
        jobWatermark = watermark
        lock.unlock()
        let replayRows = try database.replayRows(inputs: network.inputCount, classes: classes).rows
        let replay = replayRows.map { LearnSample(input: $0.input, label: $0.label, logits: $0.logits) }
        var settings = LearnSettings()
        settings.maxSteps = learn.maxSteps
        settings.minGain = learn.minGain
        settings.maxForgetting = learn.maxForgetting
        settings.cpuBudgetSeconds = learn.cpuBudgetS
        settings.seed = seed
        update { $0.phase = "training"; $0.labels = newData.count }
        // The gate judges the candidate as it would serve: re-quantized like the serving model
        // (calibrated on the new labels' inputs and the replay memory), through the same plan.
        let newRows = newData.flatMap(\.input)
        let calibration = newRows + replay.prefix(max(0, 2000 - newData.count)).flatMap(\.input)
        var requantized: QuantizedModel? = nil
        let served: (base: any Classifier, make: (Network) throws -> any Classifier) = (
            PlanClassifier(plan: model.makePlan(batch: 64)),
            { trained in
                guard let q = model.quantized else { return Evaluator(network: trained) }
                // Fewer rows than a calibration needs: the serving model's activation ranges are kept.
                let rows = DataSet(features: calibration, featureCount: network.inputCount, labels: nil, classNames: network.labels)
                let m = Quantizer.requantize(trained, like: q, rows: rows)
                requantized = m
                return PlanClassifier(plan: ServingModel(version: 0, network: trained, quantized: m, useAdaptive: model.useAdaptive).makePlan(batch: 64))
            })
        let isCancelled: () -> Bool = { [unowned self] in self.cancelled.load(ordering: .relaxed) }
        let outcome = try ContinualLearner.run(
            base: network, anchor: anchor, newData: newData, replay: replay, expectedAccuracy: replaySeed?.expectedAccuracy.map(Double.init),
            settings: settings, served: served, isCancelled: isCancelled,
            progress: { [weak self] step in self?.update { $0.step = step } })
        var j = currentJob!
        j.decision = outcome.decision.rawValue
        j.reason = outcome.reason + (outcome.budgetExhausted ? " (training stopped at learn.cpu_budget_s)" : "")
        j.before = LearnAccuracy(newAccuracy: outcome.before.newAccuracy, oldAccuracy: outcome.before.oldAccuracy)
        j.after = outcome.after.map { LearnAccuracy(newAccuracy: $0.newAccuracy, oldAccuracy: $0.oldAccuracy) }
        j.steps = outcome.steps
        j.lambda = Double(outcome.lambda)
        j.alpha = Double(outcome.alpha)
        j.labels = newData.count
        guard outcome.decision == .accepted, !dryRun, let trained = outcome.network else {
            j.seconds = Date().timeIntervalSince(started)
            // A dry run leaves the automatic trigger's count where it was.
            try database.finishJob(id: id, state: "finished", result: Self.json(j), counters: dryRun ? [:] : [Self.watermarkKey: watermark])
            let kind = "update_" + outcome.decision.rawValue
            writer.appendEvent(kind: kind, message: "update job \(id)\(dryRun ? " (dry run)" : ""): \(outcome.decision.rawValue): \(j.reason ?? "")")
            logger.notice("update decided", metadata: ["job": "\(id)", "decision": "\(outcome.decision.rawValue)", "dry_run": "\(dryRun)"])
            update { $0 = j }
            return j
        }

        update { $0.phase = "quantizing" }
        if isCancelled() { throw LearnError("the update was cancelled") }
        // Online EWC (Schwarz et al., 2018): the anchor moves to the new weights, and the Fisher
        // of the task just learnt (the new labels only: the older data is already in the decayed
        // term; at most 1000 rows) is added to γ·F.
        let fisherCount = min(newData.count, 1000)
        let fisher = newRows.withUnsafeBufferPointer { FisherInformation.diagonal(network: trained, rows: $0.baseAddress!, count: fisherCount) }
        if isCancelled() { throw LearnError("the update was cancelled") }
        var weights: [String: [Float]] = [:]
        for (name, t) in trained.parameters { weights[name] = Array(UnsafeBufferPointer(start: t.pointer, count: t.count)) }
        let renewed = anchor?.updated(newFisher: fisher, samples: fisherCount, network: trained)
            ?? EWCAnchor(fisher: fisher, anchor: weights, samples: fisherCount, gamma: 0.9, updates: 1)
        renewed.encode(into: trained)
        // The drift reference is reset: the new version warms one up from the traffic it serves.
        trained.driftReference = nil
        trained.fieldTensors.removeAll { $0.name.hasPrefix("drift.") }
        let lineage = Lineage(base: model.version, kind: "local_update", labels: newData.count, steps: outcome.steps)
        trained.lineage = .object(["base": .number(Double(lineage.base)), "kind": .string(lineage.kind),
                                   "labels": .number(Double(lineage.labels)), "steps": .number(Double(lineage.steps)), "job": .string(id)])
        var manifest = trained.manifest()
        var tensors = trained.tensorBlobs()
        if model.quantized != nil {
            // The model the gate judged.
            guard let requantized else { throw LearnError("the re-quantized model the gate judged is missing") }
            manifest.quantization = requantized.spec.json
            tensors += requantized.tensorBlobs()
        }
        let bytes = ModelWriter.encode(manifest: manifest, tensors: tensors)

        // The new labels join the replay memory with the new model's logits.
        update { $0.phase = "registering" }
        let logits = Evaluator(network: trained).logits(newData.flatMap(\.input))
        lock.lock()
        var next = index, change = AgentDatabase.ReplayChange(), nextReplay = nextId
        lock.unlock()
        for (i, s) in newData.enumerated() {
            let l = Array(logits[(i * classes)..<((i + 1) * classes)])
            let score = l.withUnsafeBufferPointer { replayValue(logits: $0.baseAddress!, classes: classes, label: s.label) }
            Self.offer(.init(id: nextReplay, source: ReplaySource.feedback.rawValue, label: s.label, group: s.label!, score: score,
                             input: s.input, logits: l, modelVersion: nil), to: &next, change: &change)
            nextReplay += 1
        }
        let adaptive = model.useAdaptive
        var record = j
        let row = try models.installLocalUpdate(bytes: bytes, base: model.version, adaptive: adaptive) { sha, precision in
            try database.commitLocalUpdate(
                name: trained.name, sha256: sha, source: "local_update:\(id)", precision: precision, lineage: Self.json(lineage),
                job: (id, "finished", { row in
                    record.version = row.version
                    record.state = "finished"
                    record.phase = nil
                    record.seconds = Date().timeIntervalSince(started)
                    record.cpuSeconds = ContinualLearner.threadCPUSeconds() - cpu0
                    return Self.json(record)
                }),
                replay: change, counters: [Self.cursorKey: watermark, Self.watermarkKey: watermark].merging(
                    next.counters.map { ("replay." + $0.key, $0.value) }, uniquingKeysWith: { a, _ in a }))
        }
        lock.lock()
        index = next
        nextId = nextReplay
        indexedVersion = row.version
        lock.unlock()
        j.version = row.version
        writer.appendEvent(kind: "update_accepted", message: "update job \(id): version \(row.version) from version \(model.version) on \(newData.count) labels in \(outcome.steps) steps (λ \(outcome.lambda), α \(outcome.alpha)): \(outcome.reason)")
        logger.notice("update accepted", metadata: ["job": "\(id)", "model.version": "\(row.version)", "base": "\(model.version)"])
        update { $0 = j }
        return j
    }

    /// The automatic trigger: drift state `drift` and `learn.min_labels` labels since the last job.
    func autoTrigger() {
        let learn = settings()
        guard learn.auto, !autoPaused, !isRunning, driftState() == "drift" else { return }
        do {
            let watermark = max(try database.learnerValue(Self.watermarkKey) ?? 0, try database.learnerValue(Self.cursorKey) ?? 0)
            guard try database.feedbackCount(after: watermark) >= learn.minLabels else { return }
            _ = try startJob(trigger: "drift", dryRun: false)
        } catch {
            logger.warning("automatic update not started", metadata: ["error": "\(error)"])
        }
    }

    func component() -> ComponentStatus {
        lock.lock()
        defer { lock.unlock() }
        let fill = "replay \(index.entries.count)/\(index.capacity)" + (paused ? "; automatic updates paused" : "")
        guard let job else { return ComponentStatus(state: "idle", detail: fill) }
        if running { return ComponentStatus(state: "running", detail: "job \(job.job): \(job.phase ?? "")\(job.step.map { " step \($0)" } ?? ""); \(fill)") }
        let last = job.decision.map { "last update \($0)\(job.version.map { " (version \($0))" } ?? "")" } ?? "last job \(job.state)"
        return ComponentStatus(state: "idle", detail: "\(last); \(fill)")
    }
}
