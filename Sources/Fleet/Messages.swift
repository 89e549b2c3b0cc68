import Foundation

// The fleet's JSON payloads (README, "Fleet over MQTT"). Every one carries `msg_id` and `ts`.

/// `{root}/status`, retained. The last will and a clean stop publish `{"state": "offline"}`.
public struct FleetStatus: Codable, Sendable, Equatable {
    public var msgId: String
    public var ts: String
    public var state: String
    public var device: String
    public var agentVersion: String?
    public var model: String?
    public var modelVersion: Int?
    public var precision: String?
    public var groups: [String]?
    public var uptimeS: Double?
    public var drift: String?
    public var outboxDropped: Int64?
    public var lastDeployment: String?

    enum CodingKeys: String, CodingKey {
        case ts, state, device, model, precision, groups, drift
        case msgId = "msg_id", agentVersion = "agent_version", modelVersion = "model_version", uptimeS = "uptime_s"
        case outboxDropped = "outbox_dropped", lastDeployment = "last_deployment"
    }

    public init(msgId: String, ts: String, state: String, device: String) {
        self.msgId = msgId
        self.ts = ts
        self.state = state
        self.device = device
    }
}

/// `{root}/telemetry`, every `mqtt.telemetry_interval_s`, through the outbox.
public struct FleetTelemetry: Codable, Sendable, Equatable {
    public var msgId: String
    public var ts: String
    public var seq: Int64
    public var device: String
    public var modelVersion: Int?
    public var requests: Int
    public var throughputPerS: Double
    public var latencyP50Ms: Double
    public var latencyP99Ms: Double
    public var meanBatchSize: Double
    public var queueDepth: Int
    public var refused: Int
    public var deadlineExpired: Int
    public var driftState: String?
    public var driftScores: [String: Double]
    public var replaySamples: Int
    public var learner: String
    public var rssBytes: Int
    public var cpuSeconds: Double
    public var bytesSent: Int64
    public var outboxRows: Int
    public var outboxDropped: Int64

    enum CodingKeys: String, CodingKey {
        case ts, seq, device, requests, learner
        case msgId = "msg_id", modelVersion = "model_version", throughputPerS = "throughput_per_s", latencyP50Ms = "latency_p50_ms"
        case latencyP99Ms = "latency_p99_ms", meanBatchSize = "mean_batch_size", queueDepth = "queue_depth", refused
        case deadlineExpired = "deadline_expired", driftState = "drift_state", driftScores = "drift_scores"
        case replaySamples = "replay_samples", rssBytes = "rss_bytes", cpuSeconds = "cpu_s", bytesSent = "bytes_sent"
        case outboxRows = "outbox_rows", outboxDropped = "outbox_dropped"
    }

    public init(msgId: String, ts: String, seq: Int64, device: String, modelVersion: Int?, requests: Int, throughputPerS: Double,
                latencyP50Ms: Double, latencyP99Ms: Double, meanBatchSize: Double, queueDepth: Int, refused: Int, deadlineExpired: Int,
                driftState: String?, driftScores: [String: Double], replaySamples: Int, learner: String, rssBytes: Int, cpuSeconds: Double,
                bytesSent: Int64, outboxRows: Int, outboxDropped: Int64) {
        self.msgId = msgId
        self.ts = ts
        self.seq = seq
        self.device = device
        self.modelVersion = modelVersion
        self.requests = requests
        self.throughputPerS = throughputPerS
        self.latencyP50Ms = latencyP50Ms
        self.latencyP99Ms = latencyP99Ms
        self.meanBatchSize = meanBatchSize
        self.queueDepth = queueDepth
        self.refused = refused
        self.deadlineExpired = deadlineExpired
        self.driftState = driftState
        self.driftScores = driftScores
        self.replaySamples = replaySamples
        self.learner = learner
        self.rssBytes = rssBytes
        self.cpuSeconds = cpuSeconds
        self.bytesSent = bytesSent
        self.outboxRows = outboxRows
        self.outboxDropped = outboxDropped
    }
}

/// `{root}/events`: one row of the event log (`/v1/events`), through the outbox.
public struct FleetEvent: Codable, Sendable, Equatable {
    public var msgId: String
    public var ts: String
    public var id: Int64
    public var kind: String
    public var message: String

    enum CodingKeys: String, CodingKey {
        case ts, id, kind, message
        case msgId = "msg_id"
    }
}

/// A command on `cmd/{verb}`: `{"msg_id", "ts", "args": {...}}`.
public struct FleetCommand: Codable, Sendable {
    public var msgId: String
    public var ts: String
    public var args: [String: FleetValue]?

    enum CodingKeys: String, CodingKey {
        case ts, args
        case msgId = "msg_id"
    }

    public init(msgId: String = FleetTime.messageId(), ts: String = FleetTime.string(), args: [String: FleetValue]? = nil) {
        self.msgId = msgId
        self.ts = ts
        self.args = args
    }
}

/// The answer to a command, on the MQTT 5 response topic or `{root}/cmd/{verb}/reply`.
public struct FleetReply: Codable, Sendable {
    public var msgId: String
    public var ts: String
    public var inReplyTo: String
    public var device: String
    public var verb: String
    /// "ok", "refused" (malformed, stale, unknown verb, not possible now) or "failed".
    public var status: String
    /// A duplicate delivery of a command already run: the first answer again, not a second run.
    public var duplicate: Bool?
    public var reason: String?
    public var result: FleetValue?

    enum CodingKeys: String, CodingKey {
        case ts, device, verb, status, duplicate, reason, result
        case msgId = "msg_id", inReplyTo = "in_reply_to"
    }

    public init(inReplyTo: String, device: String, verb: String, status: String, reason: String? = nil, result: FleetValue? = nil) {
        msgId = FleetTime.messageId()
        ts = FleetTime.string()
        self.inReplyTo = inReplyTo
        self.device = device
        self.verb = verb
        self.status = status
        self.reason = reason
        self.result = result
    }
}

/// `{root}/model/deploy/result`, through the outbox.
public struct DeployResult: Codable, Sendable, Equatable {
    public var msgId: String
    public var ts: String
    public var device: String
    public var deployment: String?
    /// applied, refused or rolled_back.
    public var status: String
    public var reason: String?
    public var version: Int?
    /// The registry version the agent serves afterwards.
    public var modelVersion: Int?

    enum CodingKeys: String, CodingKey {
        case ts, device, deployment, status, reason, version
        case msgId = "msg_id", modelVersion = "model_version"
    }

    public init(device: String, deployment: String?, status: String, reason: String?, version: Int?, modelVersion: Int?) {
        msgId = FleetTime.messageId()
        ts = FleetTime.string()
        self.device = device
        self.deployment = deployment
        self.status = status
        self.reason = reason
        self.version = version
        self.modelVersion = modelVersion
    }
}

/// Any JSON value (command arguments and results).
public indirect enum FleetValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([FleetValue])
    case object([String: FleetValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([FleetValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: FleetValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n): try c.encode(n)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// Any Encodable as a value (through JSON).
    public static func of<T: Encodable>(_ value: T) -> FleetValue {
        guard let data = try? JSONEncoder().encode(value), let v = try? JSONDecoder().decode(FleetValue.self, from: data) else { return .null }
        return v
    }

    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var number: Double? { if case .number(let n) = self { n } else { nil } }
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
}
