import Foundation
import Prometheus

/// Prometheus metrics, created once with fixed labels. Names follow Prometheus' conventions (what
/// `promtool check metrics` enforces): every family has help text, durations are in seconds,
/// counters end in `_total`.
public struct AgentMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let requestsOK: Counter
    let requestsRejected: Counter
    let requestsExpired: Counter
    let requestsInvalid: Counter
    let latency: ValueHistogram
    let queueWait: ValueHistogram
    let batchSize: ValueHistogram
    let queueDepth: Gauge
    let escalations: CumulativeCounter
    let modelInfo: Gauge
    let feedback: Counter
    let queuedBytes: Gauge
    let connections: Gauge
    let recentBytes: Gauge
    let storeRows: (feedback: Gauge, events: Gauge)
    let storeBytes: (feedback: Gauge, events: Gauge)
    let evicted: (feedback: CumulativeCounter, events: CumulativeCounter)
    let eventsDropped: CumulativeCounter
    let storeWriteErrors: CumulativeCounter
    let drift: DriftGauges
    let replaySamples: Gauge
    let learnRunning: Gauge
    /// Update jobs by how they ended: accepted, rejected, not_needed, failed, cancelled.
    let updates: [String: CumulativeCounter]
    let mqttConnected: Gauge
    let outboxMessages: Gauge
    let outboxDropped: CumulativeCounter
    let mqttBytesSent: CumulativeCounter

    public init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        let requestsHelp = "Inference requests by outcome: ok, queue_full (503), deadline (504), invalid (input refused with a 4xx)."
        requestsOK = registry.makeCounter(name: "agentd_infer_requests_total", labels: [("outcome", "ok")], help: requestsHelp)
        requestsRejected = registry.makeCounter(name: "agentd_infer_requests_total", labels: [("outcome", "queue_full")], help: requestsHelp)
        requestsExpired = registry.makeCounter(name: "agentd_infer_requests_total", labels: [("outcome", "deadline")], help: requestsHelp)
        requestsInvalid = registry.makeCounter(name: "agentd_infer_requests_total", labels: [("outcome", "invalid")], help: requestsHelp)
        // 50 µs to 1 s: one INT8 row on a small model up to a full batch behind a long queue.
        let seconds: [Double] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
        latency = registry.makeValueHistogram(
            name: "agentd_infer_duration_seconds", buckets: seconds,
            help: "Time from queueing a validated inference request to its result, in seconds (queue wait and compute; ok outcomes only).")
        queueWait = registry.makeValueHistogram(
            name: "agentd_queue_wait_seconds", buckets: seconds,
            help: "Time an inference request waited in the queue before its batch was computed, in seconds.")
        batchSize = registry.makeValueHistogram(
            name: "agentd_batch_size", buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
            help: "Rows computed together in one batch.")
        queueDepth = registry.makeGauge(name: "agentd_queue_depth", help: "Inference requests waiting in the queue now.")
        escalations = CumulativeCounter(registry.makeCounter(
            name: "agentd_fp32_escalations_total",
            help: "Rows re-run in FP32 because the INT8 top-1 margin was below the adaptive threshold."))
        modelInfo = registry.makeGauge(name: "agentd_model_version", help: "Registry version of the active model (0: no model loaded).")
        feedback = registry.makeCounter(name: "agentd_feedback_samples_total", help: "Labelled feedback samples stored.")
        queuedBytes = registry.makeGauge(name: "agentd_queue_bytes", help: "Bytes of input rows waiting in the queue now (bounded by serving.queue_bytes).")
        connections = registry.makeGauge(name: "agentd_connections", help: "Open API connections now (bounded by api.max_connections).")
        recentBytes = registry.makeGauge(name: "agentd_recent_inferences_bytes",
                                         help: "Bytes of inputs remembered by inference id for feedback (bounded by serving.recent_inferences_bytes).")
        let rowsHelp = "Rows in a bounded database table now (feedback, events)."
        replaySamples = registry.makeGauge(name: "agentd_replay_samples", help: "Samples in the replay memory now (bounded by replay.capacity and replay.max_bytes).")
        learnRunning = registry.makeGauge(name: "agentd_learn_running", help: "1 while an update job runs, else 0.")
        mqttConnected = registry.makeGauge(name: "agentd_mqtt_connected", help: "1 while the fleet link to the MQTT broker is up, else 0.")
        outboxMessages = registry.makeGauge(name: "agentd_outbox_messages",
                                            help: "Telemetry, events and deployment results waiting in the outbox for the broker's acknowledgement.")
        outboxDropped = CumulativeCounter(registry.makeCounter(
            name: "agentd_outbox_dropped_total", help: "Outbox messages dropped to keep it within mqtt.outbox_bytes (telemetry first), ever."))
        mqttBytesSent = CumulativeCounter(registry.makeCounter(
            name: "agentd_mqtt_sent_bytes_total", help: "Payload and topic bytes published to the broker, ever."))
        let updatesHelp = "Update jobs by outcome: accepted, rejected, not_needed (decisions), failed, cancelled."
        updates = Dictionary(uniqueKeysWithValues: ["accepted", "rejected", "not_needed", "failed", "cancelled"].map {
            ($0, CumulativeCounter(registry.makeCounter(name: "agentd_learn_updates_total", labels: [("outcome", $0)], help: updatesHelp)))
        })
        storeRows = (registry.makeGauge(name: "agentd_store_rows", labels: [("table", "feedback")], help: rowsHelp),
                     registry.makeGauge(name: "agentd_store_rows", labels: [("table", "events")], help: rowsHelp))
        let bytesHelp = "Bytes a bounded database table is counted as now (store.*_max_bytes)."
        storeBytes = (registry.makeGauge(name: "agentd_store_bytes", labels: [("table", "feedback")], help: bytesHelp),
                      registry.makeGauge(name: "agentd_store_bytes", labels: [("table", "events")], help: bytesHelp))
        let evictedHelp = "Rows deleted oldest-first by retention (store.*_max_rows, store.*_max_bytes)."
        evicted = (CumulativeCounter(registry.makeCounter(name: "agentd_store_evicted_rows_total", labels: [("table", "feedback")], help: evictedHelp)),
                   CumulativeCounter(registry.makeCounter(name: "agentd_store_evicted_rows_total", labels: [("table", "events")], help: evictedHelp)))
        eventsDropped = CumulativeCounter(registry.makeCounter(
            name: "agentd_events_dropped_total", help: "Events not written: the store writer's queue was full or its write failed."))
        storeWriteErrors = CumulativeCounter(registry.makeCounter(
            name: "agentd_store_write_errors_total", help: "Database write transactions that failed (disk full, I/O error)."))
        drift = DriftGauges(registry: registry)
    }

    public func render() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}

/// A Prometheus counter that follows a cumulative count kept elsewhere (the scheduler's, the
/// store writer's): a counter only grows, so each scrape adds what is new since the last.
struct CumulativeCounter: Sendable {
    let counter: Counter
    private let seen = HighWaterMark()
    init(_ counter: Counter) { self.counter = counter }

    func record(total: Int) {
        let delta = seen.advance(to: total)
        if delta > 0 { counter.increment(by: Int64(delta)) }
    }
}

/// The largest cumulative count seen so far; concurrent scrapes each add only their own share.
/// (NSLock rather than Mutex: the package still builds for macOS 14.)
final class HighWaterMark: @unchecked Sendable {
    private let lock = NSLock()
    private var seen = 0

    /// How far `total` is past the mark (0 if it is not), moving the mark there.
    func advance(to total: Int) -> Int {
        lock.lock()
        defer { lock.unlock() }
        let delta = max(total - seen, 0)
        seen = max(seen, total)
        return delta
    }
}
