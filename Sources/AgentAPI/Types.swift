import Foundation

// The local API's request and response bodies (HTTP/1.1 + JSON over agentd's Unix socket).
// Field names are the wire names; see README, "Local API".

public struct ModelRef: Codable, Equatable, Sendable {
    public var name: String
    /// Registry version (1, 2, …), the number `rollback` takes.
    public var version: Int
    public var precision: String
    public init(name: String, version: Int, precision: String) {
        self.name = name
        self.version = version
        self.precision = precision
    }
}

public struct InferRequest: Codable, Sendable {
    public var inputs: [[Float]]
    /// "latency" (served first) or "throughput". Default latency.
    public var priority: String?
    /// Answer within this many milliseconds or get 504; default from the config.
    public var deadlineMs: Double?

    enum CodingKeys: String, CodingKey {
        case inputs, priority
        case deadlineMs = "deadline_ms"
    }

    public init(inputs: [[Float]], priority: String? = nil, deadlineMs: Double? = nil) {
        self.inputs = inputs
        self.priority = priority
        self.deadlineMs = deadlineMs
    }

    /// The `application/octet-stream` form of `/v1/infer`: rows back to back as little-endian F32.
    public static func f32Body(_ values: some Sequence<Float>) -> Data {
        var body = Data()
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { body.append(contentsOf: $0) } }
        return body
    }
}

public struct InferResult: Codable, Sendable {
    public var id: String
    public var `class`: Int
    public var label: String
    public var scores: [Float]
    public var precision: String
    public init(id: String, class: Int, label: String, scores: [Float], precision: String) {
        self.id = id
        self.class = `class`
        self.label = label
        self.scores = scores
        self.precision = precision
    }
}

public struct InferResponse: Codable, Sendable {
    public var model: ModelRef
    public var results: [InferResult]
    public init(model: ModelRef, results: [InferResult]) {
        self.model = model
        self.results = results
    }
}

public struct FeedbackRequest: Codable, Sendable {
    /// An inference id from a recent `/v1/infer` answer, or
    public var id: String?
    /// the input itself.
    public var input: [Float]?
    public var label: String
    public init(id: String? = nil, input: [Float]? = nil, label: String) {
        self.id = id
        self.input = input
        self.label = label
    }
}

public struct FeedbackResponse: Codable, Sendable {
    public var stored: Bool
    public var sampleId: Int64
    public var samples: Int

    enum CodingKeys: String, CodingKey {
        case stored, samples
        case sampleId = "sample_id"
    }
    public init(stored: Bool, sampleId: Int64, samples: Int) {
        self.stored = stored
        self.sampleId = sampleId
        self.samples = samples
    }
}

public struct ServingStatus: Codable, Sendable {
    public var workers: Int
    public var maxBatchSize: Int
    public var requests: Int
    public var samples: Int
    public var rejectedQueueFull: Int
    public var deadlineExpired: Int
    public var queueDepth: Int
    public var batches: Int
    public var meanBatchSize: Double
    public var throughputPerS: Double
    public var latencyP50Ms: Double
    public var latencyP99Ms: Double
    public var escalations: Int
    /// How long a batch may currently wait for more rows: `max_queue_delay_ms` while the workers
    /// are the bottleneck, else 0.
    public var batchWaitMs: Double?
    /// Bytes of input rows waiting in the queue (bounded by serving.queue_bytes).
    public var queuedBytes: Int?
    /// Open API connections (bounded by api.max_connections).
    public var connections: Int?
    /// Bytes held by the recent-inference memory (bounded by serving.recent_inferences_bytes).
    public var recentInferencesBytes: Int?

    enum CodingKeys: String, CodingKey {
        case workers, requests, samples, batches, escalations, connections
        case queuedBytes = "queued_bytes"
        case recentInferencesBytes = "recent_inferences_bytes"
        case batchWaitMs = "batch_wait_ms"
        case maxBatchSize = "max_batch_size"
        case rejectedQueueFull = "rejected_queue_full"
        case deadlineExpired = "deadline_expired"
        case queueDepth = "queue_depth"
        case meanBatchSize = "mean_batch_size"
        case throughputPerS = "throughput_per_s"
        case latencyP50Ms = "latency_p50_ms"
        case latencyP99Ms = "latency_p99_ms"
    }

    public init(workers: Int, maxBatchSize: Int, requests: Int, samples: Int, rejectedQueueFull: Int, deadlineExpired: Int,
                queueDepth: Int, batches: Int, meanBatchSize: Double, throughputPerS: Double, latencyP50Ms: Double,
                latencyP99Ms: Double, escalations: Int, batchWaitMs: Double? = nil, queuedBytes: Int? = nil, connections: Int? = nil,
                recentInferencesBytes: Int? = nil) {
        self.batchWaitMs = batchWaitMs
        self.queuedBytes = queuedBytes
        self.connections = connections
        self.recentInferencesBytes = recentInferencesBytes
        self.workers = workers
        self.maxBatchSize = maxBatchSize
        self.requests = requests
        self.samples = samples
        self.rejectedQueueFull = rejectedQueueFull
        self.deadlineExpired = deadlineExpired
        self.queueDepth = queueDepth
        self.batches = batches
        self.meanBatchSize = meanBatchSize
        self.throughputPerS = throughputPerS
        self.latencyP50Ms = latencyP50Ms
        self.latencyP99Ms = latencyP99Ms
        self.escalations = escalations
    }
}

/// A component that later work plugs in (drift, replay, learner, MQTT) and its state.
public struct ComponentStatus: Codable, Sendable {
    public var state: String
    public var detail: String?
    public init(state: String, detail: String? = nil) {
        self.state = state
        self.detail = detail
    }
}

/// The database's bounded tables and its writer.
public struct StoreStatus: Codable, Sendable {
    public var feedbackRows: Int
    public var feedbackBytes: Int
    public var eventsRows: Int
    public var eventsBytes: Int
    /// Rows deleted by retention (store.*_max_rows, store.*_max_bytes) since start.
    public var feedbackEvicted: Int
    public var eventsEvicted: Int
    /// Events not written: the writer's queue was full or the write failed.
    public var eventsDropped: Int
    public var writeErrors: Int
    public var writeQueue: Int
    public var lastError: String?

    enum CodingKeys: String, CodingKey {
        case feedbackRows = "feedback_rows"
        case feedbackBytes = "feedback_bytes"
        case eventsRows = "events_rows"
        case eventsBytes = "events_bytes"
        case feedbackEvicted = "feedback_evicted"
        case eventsEvicted = "events_evicted"
        case eventsDropped = "events_dropped"
        case writeErrors = "write_errors"
        case writeQueue = "write_queue"
        case lastError = "last_error"
    }

    public init(feedbackRows: Int, feedbackBytes: Int, eventsRows: Int, eventsBytes: Int, feedbackEvicted: Int, eventsEvicted: Int,
                eventsDropped: Int, writeErrors: Int, writeQueue: Int, lastError: String?) {
        self.feedbackRows = feedbackRows
        self.feedbackBytes = feedbackBytes
        self.eventsRows = eventsRows
        self.eventsBytes = eventsBytes
        self.feedbackEvicted = feedbackEvicted
        self.eventsEvicted = eventsEvicted
        self.eventsDropped = eventsDropped
        self.writeErrors = writeErrors
        self.writeQueue = writeQueue
        self.lastError = lastError
    }
}

/// What the served model holds in memory with every worker's plan at its largest batch.
public struct ModelMemoryStatus: Codable, Equatable, Sendable {
    /// The model file as read (the FP32 weights are views into it).
    public var fileBytes: Int
    /// INT8/INT4 weights decoded from the quantization section, one byte a weight, with scales.
    public var decodedBytes: Int
    /// Weights packed for the kernels, shared by every plan.
    public var packedBytes: Int
    /// One plan's activation buffers and workspace.
    public var planBufferBytes: Int
    /// Plans counted (one per worker) and their batch capacity.
    public var plans: Int
    public var batch: Int
    public var totalBytes: Int

    enum CodingKeys: String, CodingKey {
        case plans, batch
        case fileBytes = "file_bytes", decodedBytes = "decoded_bytes", packedBytes = "packed_bytes"
        case planBufferBytes = "plan_buffer_bytes", totalBytes = "total_bytes"
    }

    public init(fileBytes: Int, decodedBytes: Int, packedBytes: Int, planBufferBytes: Int, plans: Int, batch: Int, totalBytes: Int) {
        self.fileBytes = fileBytes
        self.decodedBytes = decodedBytes
        self.packedBytes = packedBytes
        self.planBufferBytes = planBufferBytes
        self.plans = plans
        self.batch = batch
        self.totalBytes = totalBytes
    }
}

public struct StatusResponse: Codable, Sendable {
    public var state: String
    public var version: String
    public var pid: Int32
    public var uptimeS: Double
    public var socket: String
    public var model: ModelRef?
    /// The served model's memory (absent from older agents and without a model).
    public var modelMemory: ModelMemoryStatus?
    /// Values per input row the served model takes (what `/v1/infer` rows must have).
    public var inputSize: Int?
    public var serving: ServingStatus
    public var feedbackSamples: Int
    public var drift: ComponentStatus
    public var learner: ComponentStatus
    public var mqtt: ComponentStatus
    /// The fleet link: connection, outbox, last deployment (absent from older agents).
    public var fleet: FleetLinkStatus?
    public var lastEvents: [Event]
    public var store: StoreStatus?

    enum CodingKeys: String, CodingKey {
        case state, version, pid, socket, model, serving, drift, learner, mqtt, store, fleet
        case uptimeS = "uptime_s"
        case inputSize = "input_size"
        case modelMemory = "model_memory"
        case feedbackSamples = "feedback_samples"
        case lastEvents = "last_events"
    }

    public init(state: String, version: String, pid: Int32, uptimeS: Double, socket: String, model: ModelRef?, inputSize: Int? = nil,
                serving: ServingStatus, feedbackSamples: Int, drift: ComponentStatus, learner: ComponentStatus, mqtt: ComponentStatus,
                fleet: FleetLinkStatus? = nil, lastEvents: [Event], store: StoreStatus? = nil) {
        self.store = store
        self.fleet = fleet
        self.inputSize = inputSize
        self.state = state
        self.version = version
        self.pid = pid
        self.uptimeS = uptimeS
        self.socket = socket
        self.model = model
        self.serving = serving
        self.feedbackSamples = feedbackSamples
        self.drift = drift
        self.learner = learner
        self.mqtt = mqtt
        self.lastEvents = lastEvents
    }
}

/// `status.fleet`: the MQTT link as the agent sees it.
public struct FleetLinkStatus: Codable, Sendable {
    /// not-configured, connecting, connected, disconnected.
    public var state: String
    public var broker: String
    public var device: String
    public var protocolVersion: String?
    public var outboxRows: Int
    public var outboxBytes: Int
    public var outboxDropped: Int64
    public var bytesSent: Int64
    public var lastError: String?
    /// The last deployment's outcome: `{deployment} v{version}: applied|refused|rolled_back (reason)`.
    public var lastDeployment: String?

    enum CodingKeys: String, CodingKey {
        case state, broker, device
        case protocolVersion = "protocol", outboxRows = "outbox_rows", outboxBytes = "outbox_bytes", outboxDropped = "outbox_dropped"
        case bytesSent = "bytes_sent", lastError = "last_error", lastDeployment = "last_deployment"
    }

    public init(state: String, broker: String, device: String, protocolVersion: String?, outboxRows: Int, outboxBytes: Int,
                outboxDropped: Int64, bytesSent: Int64, lastError: String?, lastDeployment: String?) {
        self.state = state
        self.broker = broker
        self.device = device
        self.protocolVersion = protocolVersion
        self.outboxRows = outboxRows
        self.outboxBytes = outboxBytes
        self.outboxDropped = outboxDropped
        self.bytesSent = bytesSent
        self.lastError = lastError
        self.lastDeployment = lastDeployment
    }
}

public struct ModelVersion: Codable, Sendable {
    public var version: Int
    public var name: String
    public var sha256: String
    public var source: String
    public var precision: String
    public var created: String
    public var active: Bool
    /// Where a local update came from; nil for deployed files.
    public var lineage: Lineage?
    public init(version: Int, name: String, sha256: String, source: String, precision: String, created: String, active: Bool,
                lineage: Lineage? = nil) {
        self.version = version
        self.name = name
        self.sha256 = sha256
        self.source = source
        self.precision = precision
        self.created = created
        self.active = active
        self.lineage = lineage
    }
}

/// A local update's lineage: the version it was trained from, on how many labels, in how many steps.
public struct Lineage: Codable, Sendable, Equatable {
    public var base: Int
    public var kind: String
    public var labels: Int
    public var steps: Int
    public init(base: Int, kind: String, labels: Int, steps: Int) {
        self.base = base
        self.kind = kind
        self.labels = labels
        self.steps = steps
    }
}

public struct ModelsResponse: Codable, Sendable {
    public var models: [ModelVersion]
    public init(models: [ModelVersion]) { self.models = models }
}

public struct RollbackRequest: Codable, Sendable {
    /// The registry version to activate; nil means the one active before the current.
    public var version: Int?
    public init(version: Int? = nil) { self.version = version }
}

public struct Event: Codable, Sendable {
    public var id: Int64
    public var ts: String
    public var kind: String
    public var message: String
    public init(id: Int64, ts: String, kind: String, message: String) {
        self.id = id
        self.ts = ts
        self.kind = kind
        self.message = message
    }
}

public struct EventsResponse: Codable, Sendable {
    public var events: [Event]
    public init(events: [Event]) { self.events = events }
}

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
public struct ErrorResponse: Codable, Sendable {
    public struct Body: Codable, Sendable {
        public var code: String
        public var message: String
    }
    public var error: Body
    public init(code: String, message: String) { error = Body(code: code, message: message) }
}

/// `GET /v1/drift`, and the answer of `POST /v1/drift/reset`.
public struct DriftResponse: Codable, Sendable {
    /// ok, warning, drift, warming_up; "disabled" when `drift.enabled` is false, "no-model" before a model serves.
    public var state: String
    /// Rows observed since the reference was set.
    public var samples: Int
    public var modelVersion: Int?
    public var reference: DriftReferenceInfo?
    /// While warming up: rows collected so far and the rows needed.
    public var warmup: DriftWarmup?
    public var signals: [DriftSignal]
    public var lastAlarm: DriftAlarmInfo?
    /// Rows the monitor could not take (a worker's staging ring was full).
    public var dropped: Int

    enum CodingKeys: String, CodingKey {
        case state, samples, reference, warmup, signals, dropped
        case modelVersion = "model_version"
        case lastAlarm = "last_alarm"
    }

    public init(state: String, samples: Int, modelVersion: Int?, reference: DriftReferenceInfo?, warmup: DriftWarmup?,
                signals: [DriftSignal], lastAlarm: DriftAlarmInfo?, dropped: Int) {
        self.state = state
        self.samples = samples
        self.modelVersion = modelVersion
        self.reference = reference
        self.warmup = warmup
        self.signals = signals
        self.lastAlarm = lastAlarm
        self.dropped = dropped
    }

    /// `last_alarm` is always present (null when there was none), as the contract says.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(state, forKey: .state)
        try c.encode(samples, forKey: .samples)
        try c.encodeIfPresent(modelVersion, forKey: .modelVersion)
        try c.encode(reference, forKey: .reference)
        try c.encodeIfPresent(warmup, forKey: .warmup)
        try c.encode(signals, forKey: .signals)
        try c.encode(lastAlarm, forKey: .lastAlarm)
        try c.encode(dropped, forKey: .dropped)
    }
}

public struct DriftReferenceInfo: Codable, Sendable {
    /// "model": the model file's (agentctl model prepare); "warmup": learnt from the first live rows.
    public var source: String
    public var rows: Int
    public init(source: String, rows: Int) {
        self.source = source
        self.rows = rows
    }
}

public struct DriftWarmup: Codable, Sendable {
    public var rows: Int
    public var of: Int
    public init(rows: Int, of: Int) {
        self.rows = rows
        self.of = of
    }
}

public struct DriftFeature: Codable, Sendable {
    public var feature: Int
    public var score: Double
    public init(feature: Int, score: Double) {
        self.feature = feature
        self.score = score
    }
}

public struct DriftSignal: Codable, Sendable {
    /// input (max over features), input_sum, output, confidence, embedding.
    public var name: String
    public var score: Double
    public var threshold: Double
    public var window: Int
    /// Samples in the window now (scores count once it is full).
    public var filled: Int
    public var state: String
    /// Whether this signal raises the alarm (confidence and embedding are reported only).
    public var alarms: Bool
    public var psi: Double
    public var js: Double
    public var top: [DriftFeature]
    public init(name: String, score: Double, threshold: Double, window: Int, filled: Int, state: String, alarms: Bool,
                psi: Double, js: Double, top: [DriftFeature]) {
        self.name = name
        self.score = score
        self.threshold = threshold
        self.window = window
        self.filled = filled
        self.state = state
        self.alarms = alarms
        self.psi = psi
        self.js = js
        self.top = top
    }
}

public struct DriftAlarmInfo: Codable, Sendable {
    public var signal: String
    public var score: Double
    public var threshold: Double
    public var top: [DriftFeature]
    public var at: String
    public var sample: Int
    public var cleared: String?
    public init(signal: String, score: Double, threshold: Double, top: [DriftFeature], at: String, sample: Int, cleared: String?) {
        self.signal = signal
        self.score = score
        self.threshold = threshold
        self.top = top
        self.at = at
        self.sample = sample
        self.cleared = cleared
    }
}


/// `POST /v1/learn` body (optional).
public struct LearnRequest: Codable, Sendable {
    /// Run the whole job but register nothing: the decision and numbers only.
    public var dryRun: Bool?
    enum CodingKeys: String, CodingKey { case dryRun = "dry_run" }
    public init(dryRun: Bool? = nil) { self.dryRun = dryRun }
}

/// `POST /v1/learn` → 202.
public struct LearnStarted: Codable, Sendable {
    public var job: String
    public init(job: String) { self.job = job }
}

public struct LearnAccuracy: Codable, Sendable, Equatable {
    public var newAccuracy: Double
    public var oldAccuracy: Double
    enum CodingKeys: String, CodingKey {
        case newAccuracy = "new_accuracy"
        case oldAccuracy = "old_accuracy"
    }
    public init(newAccuracy: Double, oldAccuracy: Double) {
        self.newAccuracy = newAccuracy
        self.oldAccuracy = oldAccuracy
    }
}

/// `GET /v1/learn`: the running or last update job.
public struct LearnJob: Codable, Sendable, Equatable {
    public var job: String
    /// running, finished, failed, cancelled, interrupted (agentd stopped or crashed mid-job).
    public var state: String
    /// api, drift, or mqtt.
    public var trigger: String
    public var dryRun: Bool
    public var started: String
    public var finished: String?
    /// While running: loading, training, quantizing, registering.
    public var phase: String?
    public var step: Int?
    /// accepted, rejected, not_needed (finished jobs).
    public var decision: String?
    /// One line with the numbers, or why the job failed.
    public var reason: String?
    /// The version the update registered (accepted, not a dry run), and the one it started from.
    public var version: Int?
    public var baseVersion: Int?
    public var labels: Int?
    public var before: LearnAccuracy?
    public var after: LearnAccuracy?
    public var steps: Int?
    public var seconds: Double?
    public var cpuSeconds: Double?
    public var lambda: Double?
    public var alpha: Double?

    enum CodingKeys: String, CodingKey {
        case job, state, trigger, started, finished, phase, step, decision, reason, version, labels, before, after, steps, seconds, lambda, alpha
        case dryRun = "dry_run"
        case baseVersion = "base_version"
        case cpuSeconds = "cpu_seconds"
    }

    public init(job: String, state: String, trigger: String, dryRun: Bool, started: String) {
        self.job = job
        self.state = state
        self.trigger = trigger
        self.dryRun = dryRun
        self.started = started
    }
}

/// `GET /v1/learn` before any job ran.
public struct LearnNone: Codable, Sendable {
    public var state: String
    public init() { state = "none" }
}

/// `GET /v1/replay`: what the replay memory holds.
public struct ReplayResponse: Codable, Sendable {
    public var capacity: Int
    public var policy: String
    public var samples: Int
    public var bytes: Int
    /// Labelled samples per class label.
    public var perClass: [String: Int]
    /// seed, feedback, live.
    public var perSource: [String: Int]
    /// Labelled feedback waiting for the next update.
    public var newLabels: Int

    enum CodingKeys: String, CodingKey {
        case capacity, policy, samples, bytes
        case perClass = "per_class"
        case perSource = "per_source"
        case newLabels = "new_labels"
    }

    public init(capacity: Int, policy: String, samples: Int, bytes: Int, perClass: [String: Int], perSource: [String: Int], newLabels: Int) {
        self.capacity = capacity
        self.policy = policy
        self.samples = samples
        self.bytes = bytes
        self.perClass = perClass
        self.perSource = perSource
        self.newLabels = newLabels
    }
}
