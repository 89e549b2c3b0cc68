import Prometheus

/// Prometheus metrics, created once with fixed labels.
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
    let escalations: Gauge
    let modelInfo: Gauge
    let feedback: Counter

    public init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        requestsOK = registry.makeCounter(name: "agentd_infer_requests_total", labels: [("outcome", "ok")])
        requestsRejected = registry.makeCounter(name: "agentd_infer_requests_total", labels: [("outcome", "queue_full")])
        requestsExpired = registry.makeCounter(name: "agentd_infer_requests_total", labels: [("outcome", "deadline")])
        requestsInvalid = registry.makeCounter(name: "agentd_infer_requests_total", labels: [("outcome", "invalid")])
        let ms: [Double] = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000]
        latency = registry.makeValueHistogram(name: "agentd_infer_latency_ms", buckets: ms)
        queueWait = registry.makeValueHistogram(name: "agentd_queue_wait_ms", buckets: ms)
        batchSize = registry.makeValueHistogram(name: "agentd_batch_size", buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256])
        queueDepth = registry.makeGauge(name: "agentd_queue_depth")
        escalations = registry.makeGauge(name: "agentd_fp32_escalations")
        modelInfo = registry.makeGauge(name: "agentd_model_version")
        feedback = registry.makeCounter(name: "agentd_feedback_samples_total")
    }

    public func render() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}
