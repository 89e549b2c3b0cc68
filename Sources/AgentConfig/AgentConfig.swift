import Foundation
import TOMLKit

/// agentd's configuration. Every key has a default (documented in `etc/agentd.toml`); a file
/// only needs the keys it changes. Keys marked reloadable take effect on SIGHUP.
public struct AgentConfig: Equatable, Sendable {
    public var agent = Agent()
    public var model = Model()
    public var serving = Serving()
    public var api = API()
    public var store = Store()
    public var drift = Drift()
    public var learn = Learn()
    public var replay = Replay()
    public var mqtt = MQTT()
    public var deploy = Deploy()

    public struct Agent: Equatable, Sendable {
        public var stateDir = "/var/lib/agentd"
        public var socket = "/run/agentd/agentd.sock"
        /// Group that owns the socket (mode 0660); empty keeps the process's group.
        public var socketGroup = "agentd"
        /// trace, debug, info, notice, warning, error, critical. Reloadable.
        public var logLevel = "info"
        /// Once ready, hand the pages only start-up used back to the kernel (see `MemoryTrim`).
        public var releaseStartupPages = true
    }

    public struct Model: Equatable, Sendable {
        /// Registered and activated at first start (when the registry is empty).
        public var initial = ""
        /// fp32 or int8; an FP32 initial model is quantized at first start when int8.
        public var precision = "int8"
        /// CSV rows for that calibration (features, optional label column).
        public var calibration = ""
        public var method = "kl"
        /// Re-run low-margin samples in FP32 (auto threshold chosen at quantization).
        public var adaptive = false
        /// That quantization with 7-bit INT8 weights (`quantize --reduce-range`).
        public var reduceRange = false
    }

    public struct Serving: Equatable, Sendable {
        /// Inference threads; 0 means one per core.
        public var workers = 0
        /// Reloadable.
        public var maxBatchSize = 64
        /// The longest a batch waits for more requests, in milliseconds (only while the workers are
        /// the bottleneck; see BatchScheduler). Reloadable.
        public var maxQueueDelayMs = 1.0
        public var queueCapacity = 1024
        /// Deadline of a request that gives none, in milliseconds. Reloadable.
        public var deadlineMs = 1000.0
        /// Caps the batch size by the plan's memory estimate.
        public var memoryBudgetMB = 64
        /// Learn latency per batch size and keep p99 under latency_target_ms. Reloadable.
        public var adaptiveBatching = false
        public var latencyTargetMs = 10.0
        /// The longest deadline a request may ask for; longer ones are clamped to it. Reloadable.
        public var maxDeadlineMs = 60_000.0
        /// Queued request rows beyond this many bytes are answered 503 at once. Reloadable.
        public var queueBytes = 32 << 20
        /// Inputs remembered by inference id for feedback, in bytes (oldest forgotten first).
        public var recentInferencesBytes = 8 << 20
    }

    public struct API: Equatable, Sendable {
        public var maxBodyBytes = 1 << 20
        public var maxRowsPerRequest = 1024
        public var idleTimeoutS = 30.0
        /// SIGTERM: how long accepted requests may take to finish.
        public var drainTimeoutS = 10.0
        /// Open connections beyond this are answered 503 and closed. With max_body_bytes it bounds
        /// the request bodies held at once (64 × 1 MiB), within the unit's MemoryMax.
        public var maxConnections = 64
        /// Members of this group (besides root and agentd's own user) may use the control
        /// endpoints (rollback, and later learn, drift reset, deploy). Empty: nobody else. Reloadable.
        public var adminGroup = ""
    }

    /// The database's bounded tables: the oldest rows go first once either limit is passed.
    public struct Store: Equatable, Sendable {
        public var feedbackMaxRows = 100_000
        public var feedbackMaxBytes = 64 << 20
        public var eventsMaxRows = 10_000
        public var eventsMaxBytes = 4 << 20
        /// Writes waiting for the database writer beyond this are refused with 503.
        public var writeQueue = 1024
    }

    /// The drift monitor (see the README's drift section).
    public struct Drift: Equatable, Sendable {
        public var enabled = true
        /// A model file without a drift reference: the first this many live rows become one.
        public var warmupRows = 1000
        /// Samples between false alarms a warm-up reference is calibrated for.
        public var falseAlarmRun = 2000
        /// How often the windows are saved (alarm changes and resets are saved at once).
        public var saveIntervalS = 30.0
    }

    /// On-device learning (see the README's learning section).
    public struct Learn: Equatable, Sendable {
        /// Start an update on its own when drift is `drift` and `min_labels` new labels arrived.
        public var auto = true
        public var minLabels = 50
        public var maxSteps = 1000
        /// Gate: new-distribution accuracy must rise by this (0.01 = 1 point)…
        public var minGain = 0.01
        /// …and old accuracy may fall by at most this.
        public var maxForgetting = 0.01
        /// CPU seconds one update may use; training stops there and the gate judges what it has.
        public var cpuBudgetS = 300.0
    }

    /// The replay memory (SQLite, in the state directory).
    public struct Replay: Equatable, Sendable {
        public var capacity = 500
        public var maxBytes = 16 << 20
        /// class_balanced, reservoir or value_scored.
        public var policy = "class_balanced"
        /// Share of the capacity unlabelled live samples may hold (for distillation).
        public var liveShare = 0.2
    }

    /// The fleet link (see the README's fleet section). An empty broker keeps the agent fully local.
    public struct MQTT: Equatable, Sendable {
        /// `mqtt://host:port` or `mqtts://host:port` (TLS); empty: no broker.
        public var broker = ""
        public var prefix = "edge"
        public var fleet = "default"
        /// This device's name in topics; empty: the machine id (/etc/machine-id).
        public var device = ""
        public var groups: [String] = []
        public var username = ""
        /// A file holding the password (`credential:NAME` reads $CREDENTIALS_DIRECTORY/NAME, systemd's LoadCredential=).
        public var passwordFile = ""
        /// TLS (mqtts://): the CA bundle, and a client certificate and key; each also as `credential:NAME`.
        public var caFile = ""
        public var certFile = ""
        public var keyFile = ""
        /// auto (MQTT 5, falling back to 3.1.1), 5 or 3.1.1.
        public var protocolVersion = "auto"
        public var keepaliveS = 30
        public var telemetryIntervalS = 60.0
        /// The outbox's bound: telemetry goes first (oldest first), events last. Reloadable.
        public var outboxBytes = 4 << 20
        /// Bytes a day on the link beyond which telemetry thins out to one in ten (events still go); 0: no limit. Reloadable.
        public var dailyBytes = 0
        /// Commands older than this (by their `ts`) are refused. Reloadable.
        public var commandTtlS = 3600.0
    }

    /// Signed model deployments over MQTT.
    public struct Deploy: Equatable, Sendable {
        /// Ed25519 public key files (`NAME.pub`, as `agentctl keys generate` writes them).
        public var trustedKeys: [String] = []
        /// After activation: the self-test, then this long watching the error rate, before the deployment is kept.
        public var healthSeconds = 30.0
        /// The self-test's limit: accuracy on the labelled replay memory may fall by at most this much.
        public var maxAccuracyDrop = 0.05
        /// The health window's limit: the share of requests answered with an error (deadline passed).
        public var maxErrorRate = 0.05
        /// A deployment's message (base64) and its decoded bytes are held at once: 16 MiB keeps a
        /// deployment well inside the unit's MemoryMax=256M.
        public var maxModelBytes = 16 << 20
    }

    public init() {}
}

/// One problem in a configuration file: the key's dotted path and what is wrong.
public struct ConfigProblem: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let key: String?
    public let message: String
    public var description: String { key.map { "\(file): \($0): \(message)" } ?? "\(file): \(message)" }
}

public struct ConfigErrors: Error, CustomStringConvertible, Sendable {
    public let problems: [ConfigProblem]
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

extension AgentConfig {
    /// Parses and validates; collects every problem (unknown key, wrong type, out of range) before failing.
    public static func load(path: String) throws -> AgentConfig {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw ConfigErrors(problems: [ConfigProblem(file: path, key: nil, message: FileManager.default.fileExists(atPath: path) ? "cannot be read as UTF-8 text" : "no such file")])
        }
        return try parse(text, file: path)
    }

    static let sections = ["agent", "model", "serving", "api", "store", "drift", "learn", "replay", "mqtt", "deploy"]
    /// The most request-body bytes all connections together may hold while reading them.
    public static let maxBodyBytesInFlight = 1 << 30

    /// One key of the file: its dotted name, whether SIGHUP applies it, and how to compare and
    /// copy its value — the single list that reload's "applied" and "needs a restart" come from.
    public struct Key: Sendable {
        public let name: String
        public let reloadable: Bool
        let differs: @Sendable (AgentConfig, AgentConfig) -> Bool
        let copy: @Sendable (inout AgentConfig, AgentConfig) -> Void

        static func of<T: Equatable>(_ name: String, _ path: WritableKeyPath<AgentConfig, T> & Sendable, reloadable: Bool = false) -> Key {
            Key(name: name, reloadable: reloadable, differs: { $0[keyPath: path] != $1[keyPath: path] },
                copy: { $0[keyPath: path] = $1[keyPath: path] })
        }
    }

    public static let keys: [Key] = [
        .of("agent.state_dir", \.agent.stateDir), .of("agent.socket", \.agent.socket), .of("agent.socket_group", \.agent.socketGroup),
        .of("agent.log_level", \.agent.logLevel, reloadable: true), .of("agent.release_startup_pages", \.agent.releaseStartupPages),
        .of("model.initial", \.model.initial), .of("model.precision", \.model.precision), .of("model.calibration", \.model.calibration),
        .of("model.method", \.model.method), .of("model.adaptive", \.model.adaptive, reloadable: true),
        .of("model.reduce_range", \.model.reduceRange),
        .of("serving.workers", \.serving.workers), .of("serving.max_batch_size", \.serving.maxBatchSize, reloadable: true),
        .of("serving.max_queue_delay_ms", \.serving.maxQueueDelayMs, reloadable: true),
        .of("serving.queue_capacity", \.serving.queueCapacity, reloadable: true),
        .of("serving.deadline_ms", \.serving.deadlineMs, reloadable: true), .of("serving.memory_budget_mb", \.serving.memoryBudgetMB),
        .of("serving.adaptive_batching", \.serving.adaptiveBatching, reloadable: true),
        .of("serving.latency_target_ms", \.serving.latencyTargetMs, reloadable: true),
        .of("serving.max_deadline_ms", \.serving.maxDeadlineMs, reloadable: true),
        .of("serving.queue_bytes", \.serving.queueBytes, reloadable: true),
        .of("serving.recent_inferences_bytes", \.serving.recentInferencesBytes),
        .of("api.max_body_bytes", \.api.maxBodyBytes), .of("api.max_rows_per_request", \.api.maxRowsPerRequest),
        .of("api.idle_timeout_s", \.api.idleTimeoutS), .of("api.drain_timeout_s", \.api.drainTimeoutS),
        .of("api.max_connections", \.api.maxConnections), .of("api.admin_group", \.api.adminGroup, reloadable: true),
        .of("store.feedback_max_rows", \.store.feedbackMaxRows), .of("store.feedback_max_bytes", \.store.feedbackMaxBytes),
        .of("store.events_max_rows", \.store.eventsMaxRows), .of("store.events_max_bytes", \.store.eventsMaxBytes),
        .of("store.write_queue", \.store.writeQueue),
        .of("drift.enabled", \.drift.enabled), .of("drift.warmup_rows", \.drift.warmupRows),
        .of("drift.false_alarm_run", \.drift.falseAlarmRun), .of("drift.save_interval_s", \.drift.saveIntervalS),
        .of("learn.auto", \.learn.auto, reloadable: true), .of("learn.min_labels", \.learn.minLabels, reloadable: true),
        .of("learn.max_steps", \.learn.maxSteps, reloadable: true), .of("learn.min_gain", \.learn.minGain, reloadable: true),
        .of("learn.max_forgetting", \.learn.maxForgetting, reloadable: true), .of("learn.cpu_budget_s", \.learn.cpuBudgetS, reloadable: true),
        .of("replay.capacity", \.replay.capacity), .of("replay.max_bytes", \.replay.maxBytes), .of("replay.policy", \.replay.policy),
        .of("replay.live_share", \.replay.liveShare),
        .of("mqtt.broker", \.mqtt.broker), .of("mqtt.prefix", \.mqtt.prefix), .of("mqtt.fleet", \.mqtt.fleet), .of("mqtt.device", \.mqtt.device),
        .of("mqtt.groups", \.mqtt.groups), .of("mqtt.username", \.mqtt.username), .of("mqtt.password_file", \.mqtt.passwordFile),
        .of("mqtt.ca_file", \.mqtt.caFile), .of("mqtt.cert_file", \.mqtt.certFile), .of("mqtt.key_file", \.mqtt.keyFile),
        .of("mqtt.protocol", \.mqtt.protocolVersion), .of("mqtt.keepalive_s", \.mqtt.keepaliveS),
        .of("mqtt.telemetry_interval_s", \.mqtt.telemetryIntervalS), .of("mqtt.outbox_bytes", \.mqtt.outboxBytes, reloadable: true),
        .of("mqtt.daily_bytes", \.mqtt.dailyBytes, reloadable: true), .of("mqtt.command_ttl_s", \.mqtt.commandTtlS, reloadable: true),
        .of("deploy.trusted_keys", \.deploy.trustedKeys), .of("deploy.health_seconds", \.deploy.healthSeconds, reloadable: true),
        .of("deploy.max_accuracy_drop", \.deploy.maxAccuracyDrop, reloadable: true),
        .of("deploy.max_error_rate", \.deploy.maxErrorRate, reloadable: true),
        .of("deploy.max_model_bytes", \.deploy.maxModelBytes, reloadable: true),
    ]

    /// The keys SIGHUP applies; a change to any other key is reported as needing a restart.
    public static var reloadableKeys: Set<String> { Set(keys.filter(\.reloadable).map(\.name)) }

    /// Dotted keys whose values differ between two configurations.
    public func changedKeys(from old: AgentConfig) -> [String] {
        Self.keys.filter { $0.differs(self, old) }.map(\.name)
    }

    /// `self` with the reloadable keys of `new` and every other key as it is: what a reload runs with.
    public func reloaded(from new: AgentConfig) -> AgentConfig {
        var c = self
        for key in Self.keys where key.reloadable { key.copy(&c, new) }
        return c
    }

    public static func parse(_ text: String, file: String) throws -> AgentConfig {
        if let refused = TOMLPrecheck.problem(in: text) {
            throw ConfigErrors(problems: [ConfigProblem(file: file, key: nil, message: refused)])
        }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            throw ConfigErrors(problems: [ConfigProblem(file: file, key: nil, message: "line \(e.source.begin.line): \(e.description)")])
        }
        let reader = Reader(file: file)
        var c = AgentConfig()
        reader.section(table, "agent", ["state_dir", "socket", "socket_group", "log_level", "release_startup_pages"]) { t in
            reader.string(t, "agent", "state_dir", &c.agent.stateDir, nonEmpty: true)
            reader.string(t, "agent", "socket", &c.agent.socket, nonEmpty: true)
            reader.string(t, "agent", "socket_group", &c.agent.socketGroup)
            reader.string(t, "agent", "log_level", &c.agent.logLevel, oneOf: ["trace", "debug", "info", "notice", "warning", "error", "critical"])
            reader.bool(t, "agent", "release_startup_pages", &c.agent.releaseStartupPages)
        }
        reader.section(table, "model", ["initial", "precision", "calibration", "method", "adaptive", "reduce_range"]) { t in
            reader.string(t, "model", "initial", &c.model.initial)
            reader.string(t, "model", "precision", &c.model.precision, oneOf: ["fp32", "int8"])
            reader.string(t, "model", "calibration", &c.model.calibration)
            reader.string(t, "model", "method", &c.model.method, oneOf: ["kl", "minmax", "percentile", "mse"])
            reader.bool(t, "model", "adaptive", &c.model.adaptive)
            reader.bool(t, "model", "reduce_range", &c.model.reduceRange)
        }
        reader.section(table, "serving", ["workers", "max_batch_size", "max_queue_delay_ms", "queue_capacity", "deadline_ms",
                                          "memory_budget_mb", "adaptive_batching", "latency_target_ms", "max_deadline_ms",
                                          "queue_bytes", "recent_inferences_bytes"]) { t in
            reader.int(t, "serving", "workers", &c.serving.workers, 0...256)
            reader.int(t, "serving", "max_batch_size", &c.serving.maxBatchSize, 1...4096)
            reader.double(t, "serving", "max_queue_delay_ms", &c.serving.maxQueueDelayMs, 0...1000)
            reader.int(t, "serving", "queue_capacity", &c.serving.queueCapacity, 1...1_000_000)
            reader.double(t, "serving", "deadline_ms", &c.serving.deadlineMs, 1...3_600_000)
            reader.int(t, "serving", "memory_budget_mb", &c.serving.memoryBudgetMB, 1...65536)
            reader.bool(t, "serving", "adaptive_batching", &c.serving.adaptiveBatching)
            reader.double(t, "serving", "latency_target_ms", &c.serving.latencyTargetMs, 0.01...60_000)
            reader.double(t, "serving", "max_deadline_ms", &c.serving.maxDeadlineMs, 1...3_600_000)
            reader.int(t, "serving", "queue_bytes", &c.serving.queueBytes, 4096...(1 << 40))
            reader.int(t, "serving", "recent_inferences_bytes", &c.serving.recentInferencesBytes, 0...(1 << 40))
        }
        reader.section(table, "api", ["max_body_bytes", "max_rows_per_request", "idle_timeout_s", "drain_timeout_s", "max_connections",
                                      "admin_group"]) { t in
            reader.int(t, "api", "max_body_bytes", &c.api.maxBodyBytes, 64...(1 << 30))
            reader.int(t, "api", "max_rows_per_request", &c.api.maxRowsPerRequest, 1...1_000_000)
            reader.double(t, "api", "idle_timeout_s", &c.api.idleTimeoutS, 0.1...86_400)
            reader.double(t, "api", "drain_timeout_s", &c.api.drainTimeoutS, 0...3600)
            reader.int(t, "api", "max_connections", &c.api.maxConnections, 1...1_000_000)
            reader.string(t, "api", "admin_group", &c.api.adminGroup)
        }
        reader.section(table, "store", ["feedback_max_rows", "feedback_max_bytes", "events_max_rows", "events_max_bytes", "write_queue"]) { t in
            reader.int(t, "store", "feedback_max_rows", &c.store.feedbackMaxRows, 1...1_000_000_000)
            reader.int(t, "store", "feedback_max_bytes", &c.store.feedbackMaxBytes, 4096...(1 << 40))
            reader.int(t, "store", "events_max_rows", &c.store.eventsMaxRows, 10...1_000_000_000)
            reader.int(t, "store", "events_max_bytes", &c.store.eventsMaxBytes, 4096...(1 << 40))
            reader.int(t, "store", "write_queue", &c.store.writeQueue, 1...1_000_000)
        }
        reader.section(table, "drift", ["enabled", "warmup_rows", "false_alarm_run", "save_interval_s"]) { t in
            reader.bool(t, "drift", "enabled", &c.drift.enabled)
            reader.int(t, "drift", "warmup_rows", &c.drift.warmupRows, 100...1_000_000)
            reader.int(t, "drift", "false_alarm_run", &c.drift.falseAlarmRun, 100...10_000_000)
            reader.double(t, "drift", "save_interval_s", &c.drift.saveIntervalS, 1...86_400)
        }
        reader.section(table, "learn", ["auto", "min_labels", "max_steps", "min_gain", "max_forgetting", "cpu_budget_s"]) { t in
            reader.bool(t, "learn", "auto", &c.learn.auto)
            reader.int(t, "learn", "min_labels", &c.learn.minLabels, 15...1_000_000)
            reader.int(t, "learn", "max_steps", &c.learn.maxSteps, 1...1_000_000)
            reader.double(t, "learn", "min_gain", &c.learn.minGain, 0...1)
            reader.double(t, "learn", "max_forgetting", &c.learn.maxForgetting, 0...1)
            reader.double(t, "learn", "cpu_budget_s", &c.learn.cpuBudgetS, 0.1...86_400)
        }
        reader.section(table, "replay", ["capacity", "max_bytes", "policy", "live_share"]) { t in
            reader.int(t, "replay", "capacity", &c.replay.capacity, 10...1_000_000)
            reader.int(t, "replay", "max_bytes", &c.replay.maxBytes, 65_536...(1 << 40))
            reader.string(t, "replay", "policy", &c.replay.policy, oneOf: ["class_balanced", "reservoir", "value_scored"])
            reader.double(t, "replay", "live_share", &c.replay.liveShare, 0...0.5)
        }
        reader.section(table, "mqtt", ["broker", "prefix", "fleet", "device", "groups", "username", "password_file", "ca_file", "cert_file",
                                       "key_file", "protocol", "keepalive_s", "telemetry_interval_s", "outbox_bytes", "daily_bytes",
                                       "command_ttl_s"]) { t in
            reader.string(t, "mqtt", "broker", &c.mqtt.broker)
            if !c.mqtt.broker.isEmpty && !c.mqtt.broker.hasPrefix("mqtt://") && !c.mqtt.broker.hasPrefix("mqtts://") {
                reader.problem("mqtt.broker", "'\(c.mqtt.broker.prefix(200))' must be mqtt://host:port or mqtts://host:port (or empty: no broker)")
            }
            reader.string(t, "mqtt", "prefix", &c.mqtt.prefix, nonEmpty: true)
            reader.string(t, "mqtt", "fleet", &c.mqtt.fleet, nonEmpty: true)
            reader.string(t, "mqtt", "device", &c.mqtt.device)
            reader.strings(t, "mqtt", "groups", &c.mqtt.groups, maxCount: 64)
            for (key, value) in [("prefix", c.mqtt.prefix), ("fleet", c.mqtt.fleet), ("device", c.mqtt.device)] + c.mqtt.groups.map({ ("groups", $0) })
            where !(key == "device" && value.isEmpty) {
                if let problem = Self.topicLevelProblem(value, device: key == "device") { reader.problem("mqtt.\(key)", problem) }
            }
            reader.string(t, "mqtt", "username", &c.mqtt.username)
            reader.string(t, "mqtt", "password_file", &c.mqtt.passwordFile)
            reader.string(t, "mqtt", "ca_file", &c.mqtt.caFile)
            reader.string(t, "mqtt", "cert_file", &c.mqtt.certFile)
            reader.string(t, "mqtt", "key_file", &c.mqtt.keyFile)
            reader.string(t, "mqtt", "protocol", &c.mqtt.protocolVersion, oneOf: ["auto", "5", "3.1.1"])
            reader.int(t, "mqtt", "keepalive_s", &c.mqtt.keepaliveS, 5...3600)
            reader.double(t, "mqtt", "telemetry_interval_s", &c.mqtt.telemetryIntervalS, 0.1...86_400)
            reader.int(t, "mqtt", "outbox_bytes", &c.mqtt.outboxBytes, 65_536...(1 << 40))
            reader.int(t, "mqtt", "daily_bytes", &c.mqtt.dailyBytes, 0...(1 << 50))
            reader.double(t, "mqtt", "command_ttl_s", &c.mqtt.commandTtlS, 1...31_536_000)
        }
        reader.section(table, "deploy", ["trusted_keys", "health_seconds", "max_accuracy_drop", "max_error_rate", "max_model_bytes"]) { t in
            reader.strings(t, "deploy", "trusted_keys", &c.deploy.trustedKeys, maxCount: 64)
            reader.double(t, "deploy", "health_seconds", &c.deploy.healthSeconds, 0...86_400)
            reader.double(t, "deploy", "max_accuracy_drop", &c.deploy.maxAccuracyDrop, 0...1)
            reader.double(t, "deploy", "max_error_rate", &c.deploy.maxErrorRate, 0...1)
            reader.int(t, "deploy", "max_model_bytes", &c.deploy.maxModelBytes, 1024...(1 << 32))
        }
        for key in table.keys where !Self.sections.contains(key) {
            reader.problem(key, "unknown section or key (known sections: \(Self.sections.joined(separator: ", ")))")
        }
        // Every open connection may hold a whole body while it is read: bound their sum.
        let held = c.api.maxConnections.multipliedReportingOverflow(by: c.api.maxBodyBytes)
        if held.overflow || held.partialValue > Self.maxBodyBytesInFlight {
            reader.problem("api.max_connections", "\(c.api.maxConnections) connections × api.max_body_bytes \(c.api.maxBodyBytes) may hold more than \(Self.maxBodyBytesInFlight >> 20) MiB of request bodies at once")
        }
        if c.serving.deadlineMs > c.serving.maxDeadlineMs {
            reader.problem("serving.deadline_ms", "\(c.serving.deadlineMs) is above serving.max_deadline_ms (\(c.serving.maxDeadlineMs))")
        }
        guard reader.problems.isEmpty else { throw ConfigErrors(problems: reader.problems) }
        return c
    }

    /// A name that becomes an MQTT topic level (fleet, device, group).
    public static func topicLevelProblem(_ level: String, device: Bool = false) -> String? {
        if level.isEmpty { return "must not be empty" }
        if level.utf8.count > 128 { return "is longer than 128 bytes" }
        if level.contains(where: { "/+#".contains($0) }) || level.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return "'\(level.prefix(64))' holds '/', '+', '#' or a control character (it becomes an MQTT topic level)"
        }
        if device && (level == "all" || level == "group") { return "must not be 'all' or 'group' (fleet-wide addresses)" }
        return nil
    }

    private final class Reader {
        let file: String
        var problems: [ConfigProblem] = []
        init(file: String) { self.file = file }

        func problem(_ key: String, _ message: String) {
            problems.append(ConfigProblem(file: file, key: key, message: message))
        }

        func section(_ root: TOMLTable, _ name: String, _ keys: [String], _ body: (TOMLTable) -> Void) {
            guard let value = root[name] else { return }
            guard let t = value.table else { problem(name, "expected a table [\(name)], found \(Self.kind(value))"); return }
            for key in t.keys where !keys.contains(key) {
                let near = keys.min { Self.distance($0, key) < Self.distance($1, key) }
                problem("\(name).\(key)", "unknown key" + (near.map { Self.distance($0, key) <= 3 ? " (did you mean '\($0)'?)" : "" } ?? ""))
            }
            body(t)
        }

        func string(_ t: TOMLTable, _ s: String, _ k: String, _ out: inout String, nonEmpty: Bool = false, oneOf: [String]? = nil) {
            guard let v = t[k] else { return }
            guard let x = v.string else { problem("\(s).\(k)", "expected a string, found \(Self.kind(v))"); return }
            if nonEmpty && x.isEmpty { problem("\(s).\(k)", "must not be empty"); return }
            if let oneOf, !oneOf.contains(x) { problem("\(s).\(k)", "'\(x)' is not one of \(oneOf.joined(separator: ", "))"); return }
            out = x
        }

        func int(_ t: TOMLTable, _ s: String, _ k: String, _ out: inout Int, _ range: ClosedRange<Int>) {
            guard let v = t[k] else { return }
            guard let x = v.int else { problem("\(s).\(k)", "expected an integer, found \(Self.kind(v))"); return }
            guard range.contains(x) else { problem("\(s).\(k)", "\(x) is out of range \(range.lowerBound)...\(range.upperBound)"); return }
            out = x
        }

        func double(_ t: TOMLTable, _ s: String, _ k: String, _ out: inout Double, _ range: ClosedRange<Double>) {
            guard let v = t[k] else { return }
            guard let x = v.double ?? v.int.map(Double.init) else { problem("\(s).\(k)", "expected a number, found \(Self.kind(v))"); return }
            guard range.contains(x) else { problem("\(s).\(k)", "\(x) is out of range \(range.lowerBound)...\(range.upperBound)"); return }
            out = x
        }

        func strings(_ t: TOMLTable, _ s: String, _ k: String, _ out: inout [String], maxCount: Int) {
            guard let v = t[k] else { return }
            guard let a = v.array else { problem("\(s).\(k)", "expected an array of strings, found \(Self.kind(v))"); return }
            guard a.count <= maxCount else { problem("\(s).\(k)", "\(a.count) entries; at most \(maxCount)"); return }
            var values: [String] = []
            for (i, item) in a.enumerated() {
                guard let x = item.string, !x.isEmpty else { problem("\(s).\(k)", "entry \(i + 1) is not a non-empty string"); return }
                values.append(x)
            }
            out = values
        }

        func bool(_ t: TOMLTable, _ s: String, _ k: String, _ out: inout Bool) {
            guard let v = t[k] else { return }
            guard let x = v.bool else { problem("\(s).\(k)", "expected true or false, found \(Self.kind(v))"); return }
            out = x
        }

        static func kind(_ v: TOMLValueConvertible) -> String {
            switch v.type {
            case .string: "a string"
            case .int: "an integer"
            case .double: "a number"
            case .bool: "a boolean"
            case .table: "a table"
            case .array: "an array"
            default: "a date or time"
            }
        }

        static func distance(_ a: String, _ b: String) -> Int {
            let a = Array(a), b = Array(b)
            var d = Array(0...b.count)
            for i in 1...max(a.count, 1) where !a.isEmpty {
                var prev = d[0]
                d[0] = i
                for j in 1...max(b.count, 1) where !b.isEmpty {
                    let t = d[j]
                    d[j] = min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
                    prev = t
                }
            }
            return d[b.count]
        }
    }
}

/// What toml++ (through TOMLKit) cannot be trusted with, refused before it sees the text: it
/// recurses once per level of nesting (a few thousand dotted-key levels overflow the stack), and
/// asserts on malformed dates and times (`2024-01-01T:00`, `1979-05-3= 1`), on a table header
/// that does not start with a key (`[=]`, `[[[x]]`) and on a '}' where an array value belongs
/// (`[1, }`). agentd's configuration is two levels deep and holds no dates, times or arrays, so these
/// limits refuse only files that are wrong anyway.
enum TOMLPrecheck {
    static let maxBytes = 1 << 20
    /// Tables, arrays and dotted-key levels open at once.
    static let maxNesting = 32

    /// A one-line reason to refuse `text`, or nil when toml++ may parse it.
    static func problem(in text: String) -> String? {
        let count = text.utf8.count
        guard count <= maxBytes else { return "\(count) bytes; a configuration file is at most \(maxBytes) bytes" }
        return text.utf8.withContiguousStorageIfAvailable { scan($0) } ?? Array(text.utf8).withUnsafeBufferPointer { scan($0) }
    }

    private static func scan(_ b: UnsafeBufferPointer<UInt8>) -> String? {
        let n = b.count
        var i = 0, line = 1
        // The open '[' and '{' outside strings, innermost last.
        var open: [UInt8] = []
        var brackets: Int { open.count }
        var keyDots = 0
        // Only blanks so far on this line, outside any array or inline table: a '[' opens a table header.
        var lineStart = true
        if n >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF { i = 3 }
        var token = 0, tokenDots = 0, tokenLoneDigitDot = false
        func at(_ k: Int) -> UInt8 { k < n ? b[k] : 0 }
        func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
        func isBareKeyByte(_ c: UInt8) -> Bool {
            isDigit(c) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2D
        }
        func isTokenByte(_ c: UInt8) -> Bool { isBareKeyByte(c) || c == 0x2B || c == 0x2E }
        // A bare token's dots are key levels, except the one dot of a number such as 2.5.
        func endToken() {
            if token > 0 && !(tokenDots == 1 && tokenLoneDigitDot) { keyDots += tokenDots }
            token = 0
            tokenDots = 0
            tokenLoneDigitDot = false
        }
        func isValueTerminator(_ c: UInt8) -> Bool {
            c == 0x20 || c == 0x09 || c == 0x0D || c == 0x0A || c == 0x5D || c == 0x7D || c == 0x2C || c == 0x23
        }
        // toml++ reads a value starting with a digit or sign up to a terminator, whatever the bytes, and
        // asserts on some that look like dates (`2024-01-01T:00`, `1979-05-3= 1`, `1\u{7F}ru----uu 0`). A
        // run with a '-' after its first byte or a ':' is refused unless it is a plain number (1e-5):
        // no agentd key takes a date or time.
        func isDateOrTime(valueAt start: Int) -> Bool {
            var run: [UInt8] = []
            var j = start
            while j < n && !isValueTerminator(b[j]) {
                if b[j] != 0x5F { run.append(b[j]) }
                j += 1
            }
            guard run.dropFirst().contains(0x2D) || run.contains(0x3A) else { return false }
            var k = 0
            func digits() -> Bool {
                let from = k
                while k < run.count && isDigit(run[k]) { k += 1 }
                return k > from
            }
            if k < run.count && (run[k] == 0x2B || run[k] == 0x2D) { k += 1 }
            guard digits() else { return true }
            if k < run.count && run[k] == 0x2E {
                k += 1
                guard digits() else { return true }
            }
            if k < run.count && (run[k] == 0x65 || run[k] == 0x45) {
                k += 1
                if k < run.count && (run[k] == 0x2B || run[k] == 0x2D) { k += 1 }
                guard digits() else { return true }
            }
            return k != run.count
        }
        // Skips a string opened at i by `quote`; multi-line strings may end with up to two extra quotes.
        func skipString(_ quote: UInt8, escapes: Bool) {
            if at(i + 1) == quote && at(i + 2) == quote {
                i += 3
                while i < n {
                    if escapes && b[i] == 0x5C { i += 2; continue }
                    if b[i] == 0x0A { line += 1 }
                    if b[i] == quote && at(i + 1) == quote && at(i + 2) == quote {
                        i += 3
                        var extra = 0
                        while extra < 2 && at(i) == quote { i += 1; extra += 1 }
                        return
                    }
                    i += 1
                }
                return
            }
            i += 1
            while i < n && b[i] != quote && b[i] != 0x0A {
                i += escapes && b[i] == 0x5C && at(i + 1) != 0x0A ? 2 : 1
            }
            if i < n && b[i] == quote { i += 1 }
        }
        while i < n {
            let c = b[i]
            if c == 0x5B && lineStart && brackets == 0 {
                // toml++ asserts when a header's first non-blank is not a key: a bare key, a quote, or ']' (its own error).
                var j = i + 1
                if at(j) == 0x5B { j += 1 }
                while at(j) == 0x20 || at(j) == 0x09 { j += 1 }
                if j < n && !(isBareKeyByte(b[j]) || b[j] == 0x22 || b[j] == 0x27 || b[j] == 0x5D) {
                    return "line \(line): a table header must start with a key"
                }
            }
            if c != 0x20 && c != 0x09 && c != 0x0D && c != 0x0A { lineStart = false }
            if isTokenByte(c) {
                if token == 0 && (isDigit(c) || c == 0x2B || c == 0x2D) && isDateOrTime(valueAt: i) {
                    return "line \(line): a date or time; agentd's configuration holds neither"
                }
                if c == 0x2E {
                    tokenDots += 1
                    tokenLoneDigitDot = token > 0 && isDigit(b[i - 1]) && isDigit(at(i + 1))
                }
                token += 1
                i += 1
                if brackets + keyDots + tokenDots > maxNesting {
                    return "line \(line): more than \(maxNesting) levels of tables, arrays or dotted keys; agentd's configuration is two levels deep"
                }
                continue
            }
            endToken()
            switch c {
            case 0x22: skipString(0x22, escapes: true)
            case 0x27: skipString(0x27, escapes: false)
            case 0x23:
                while i < n && b[i] != 0x0A { i += 1 }
            case 0x5B, 0x7B:
                open.append(c)
                i += 1
            case 0x5D, 0x7D:
                // toml++ asserts when an array meets '}' where it expects a value.
                if c == 0x7D && open.last == 0x5B { return "line \(line): '}' inside an array" }
                if !open.isEmpty { open.removeLast() }
                i += 1
            case 0x0A:
                line += 1
                // Keys end with their line, except inside an open array or inline table.
                if brackets == 0 {
                    keyDots = 0
                    lineStart = true
                }
                i += 1
            default:
                i += 1
            }
            if brackets + keyDots > maxNesting {
                return "line \(line): more than \(maxNesting) levels of tables, arrays or dotted keys; agentd's configuration is two levels deep"
            }
        }
        return nil
    }
}
