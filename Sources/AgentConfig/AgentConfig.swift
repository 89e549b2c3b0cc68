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

    static let sections = ["agent", "model", "serving", "api", "store"]

    /// The keys SIGHUP applies; a change to any other key is reported as needing a restart.
    public static let reloadableKeys: Set<String> = [
        "agent.log_level", "model.adaptive", "serving.max_batch_size", "serving.max_queue_delay_ms", "serving.deadline_ms",
        "serving.adaptive_batching", "serving.latency_target_ms", "serving.max_deadline_ms", "serving.queue_capacity",
        "serving.queue_bytes", "api.admin_group",
    ]

    /// Dotted keys whose values differ between two configurations.
    public func changedKeys(from old: AgentConfig) -> [String] {
        func pairs(_ c: AgentConfig) -> [(String, String)] {
            [("agent.state_dir", c.agent.stateDir), ("agent.socket", c.agent.socket), ("agent.socket_group", c.agent.socketGroup),
             ("agent.log_level", c.agent.logLevel), ("agent.release_startup_pages", "\(c.agent.releaseStartupPages)"),
             ("model.initial", c.model.initial), ("model.precision", c.model.precision), ("model.calibration", c.model.calibration),
             ("model.method", c.model.method), ("model.adaptive", "\(c.model.adaptive)"),
             ("serving.workers", "\(c.serving.workers)"), ("serving.max_batch_size", "\(c.serving.maxBatchSize)"),
             ("serving.max_queue_delay_ms", "\(c.serving.maxQueueDelayMs)"), ("serving.queue_capacity", "\(c.serving.queueCapacity)"),
             ("serving.deadline_ms", "\(c.serving.deadlineMs)"), ("serving.memory_budget_mb", "\(c.serving.memoryBudgetMB)"),
             ("serving.adaptive_batching", "\(c.serving.adaptiveBatching)"), ("serving.latency_target_ms", "\(c.serving.latencyTargetMs)"),
             ("serving.max_deadline_ms", "\(c.serving.maxDeadlineMs)"), ("serving.queue_bytes", "\(c.serving.queueBytes)"),
             ("serving.recent_inferences_bytes", "\(c.serving.recentInferencesBytes)"),
             ("api.max_body_bytes", "\(c.api.maxBodyBytes)"), ("api.max_rows_per_request", "\(c.api.maxRowsPerRequest)"),
             ("api.idle_timeout_s", "\(c.api.idleTimeoutS)"), ("api.drain_timeout_s", "\(c.api.drainTimeoutS)"),
             ("api.max_connections", "\(c.api.maxConnections)"), ("api.admin_group", c.api.adminGroup),
             ("store.feedback_max_rows", "\(c.store.feedbackMaxRows)"), ("store.feedback_max_bytes", "\(c.store.feedbackMaxBytes)"),
             ("store.events_max_rows", "\(c.store.eventsMaxRows)"), ("store.events_max_bytes", "\(c.store.eventsMaxBytes)"),
             ("store.write_queue", "\(c.store.writeQueue)")]
        }
        return zip(pairs(self), pairs(old)).filter { $0.0.1 != $0.1.1 }.map(\.0.0)
    }

    public static func parse(_ text: String, file: String) throws -> AgentConfig {
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
        reader.section(table, "model", ["initial", "precision", "calibration", "method", "adaptive"]) { t in
            reader.string(t, "model", "initial", &c.model.initial)
            reader.string(t, "model", "precision", &c.model.precision, oneOf: ["fp32", "int8"])
            reader.string(t, "model", "calibration", &c.model.calibration)
            reader.string(t, "model", "method", &c.model.method, oneOf: ["kl", "minmax", "percentile", "mse"])
            reader.bool(t, "model", "adaptive", &c.model.adaptive)
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
        for key in table.keys where !Self.sections.contains(key) {
            reader.problem(key, "unknown section or key (known sections: \(Self.sections.joined(separator: ", ")))")
        }
        if c.serving.deadlineMs > c.serving.maxDeadlineMs {
            reader.problem("serving.deadline_ms", "\(c.serving.deadlineMs) is above serving.max_deadline_ms (\(c.serving.maxDeadlineMs))")
        }
        guard reader.problems.isEmpty else { throw ConfigErrors(problems: reader.problems) }
        return c
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
