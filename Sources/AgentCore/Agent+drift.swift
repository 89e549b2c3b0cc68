import AgentAPI
import AgentConfig
import Drift
import Foundation
import Logging
import Prometheus
import ServiceLifecycle
import Store

extension Agent {
    /// The serving model's drift monitor (each model version has its own).
    var driftMonitor: DriftMonitor? { models.slot.current?.observer as? DriftMonitor }

    func driftResponse() -> DriftResponse {
        guard config.drift.enabled else { return DriftResponse(state: "disabled", samples: 0, modelVersion: nil, reference: nil, warmup: nil, signals: [], lastAlarm: nil, dropped: 0) }
        guard let monitor = driftMonitor else {
            return DriftResponse(state: "no-model", samples: 0, modelVersion: nil, reference: nil, warmup: nil, signals: [], lastAlarm: nil, dropped: 0)
        }
        let s = monitor.snapshot()
        let alarms = Dictionary(uniqueKeysWithValues: (monitor.currentSignals ?? []).map { ($0.name, $0.alarms) })
        return DriftResponse(
            state: s.state.rawValue, samples: s.samples, modelVersion: monitor.version,
            reference: s.state == .warmingUp ? nil : DriftReferenceInfo(source: s.referenceSource, rows: s.referenceRows),
            warmup: s.state == .warmingUp ? DriftWarmup(rows: s.warmupRows, of: s.warmupTarget) : nil,
            signals: s.signals.map {
                DriftSignal(name: $0.name, score: $0.score, threshold: $0.threshold, window: $0.window, filled: $0.filled,
                            state: $0.state.rawValue, alarms: alarms[$0.name] ?? true, psi: $0.psi, js: $0.js,
                            top: $0.top.map { DriftFeature(feature: $0.feature, score: $0.score) })
            },
            lastAlarm: s.lastAlarm.map(Self.alarmInfo), dropped: s.dropped)
    }

    static func alarmInfo(_ a: DriftAlarm) -> DriftAlarmInfo {
        DriftAlarmInfo(signal: a.signal, score: a.score, threshold: a.threshold, top: a.top.map { DriftFeature(feature: $0.feature, score: $0.score) },
                       at: a.at, sample: a.sample, cleared: a.cleared)
    }

    /// `POST /v1/drift/reset`, on the control queue: windows and alarms cleared, back to the
    /// model file's reference (or a new warm-up); saved before the answer.
    func resetDrift() throws -> DriftResponse {
        guard let monitor = driftMonitor else { return driftResponse() }
        monitor.reset()
        try monitor.save(force: true)
        writer.appendEvent(kind: "drift_reset", message: "drift windows and alarms cleared for version \(monitor.version); reference: "
                           + (monitor.fileReference == nil ? "a new warm-up" : "the model file's"))
        logger.notice("drift reset", metadata: ["model.version": "\(monitor.version)"])
        return driftResponse()
    }

    /// Drift state for `/v1/status`.
    func driftComponent() -> ComponentStatus {
        guard config.drift.enabled else { return ComponentStatus(state: "disabled") }
        guard let monitor = driftMonitor else { return ComponentStatus(state: "no-model") }
        let s = monitor.summary()
        switch s.state {
        case .warmingUp: return ComponentStatus(state: s.state.rawValue, detail: "\(s.warmupRows) of \(monitor.settings.warmupRows) rows")
        default: return ComponentStatus(state: s.state.rawValue, detail: "\(s.samples) samples against the \(s.source) reference")
        }
    }

    func refreshDriftGauges() {
        guard let monitor = driftMonitor else {
            metrics.drift.clear()
            return
        }
        let g = monitor.gauges()
        metrics.drift.set(state: g.state, signals: g.signals.map { ($0.name, $0.score, $0.threshold) })
    }

    /// Turns monitor events into stored events and log lines (called on whichever thread saw the row).
    static func driftEventHandler(writer: StoreWriter, logger: Logger) -> @Sendable (Int, DriftEvent) -> Void {
        { version, event in
            switch event {
            case .detected(let a):
                let top = a.top.prefix(3).map { "\($0.feature) (\(String(format: "%.3f", $0.score)))" }.joined(separator: ", ")
                writer.appendEvent(kind: "drift_detected", message: "version \(version): signal \(a.signal) fired first, score "
                                   + String(format: "%.4f > threshold %.4f", a.score, a.threshold) + (top.isEmpty ? "" : "; top features \(top)"))
                logger.warning("drift detected", metadata: ["model.version": "\(version)", "drift.signal": "\(a.signal)",
                                                            "drift.score": "\(a.score)", "drift.threshold": "\(a.threshold)"])
            case .cleared(let a):
                writer.appendEvent(kind: "drift_cleared", message: "version \(version): every alarming score stayed at or below its threshold for a whole window (alarm by \(a.signal) at \(a.at))")
                logger.notice("drift cleared", metadata: ["model.version": "\(version)", "drift.signal": "\(a.signal)"])
            case .referenceReady(let rows, let run):
                writer.appendEvent(kind: "drift_reference_ready", message: "version \(version): drift reference learnt from live rows (\(rows) for the histograms); "
                                   + "checked run length between false alarms: " + (run.map { $0.isFinite ? String(format: "%.0f", $0) : "no alarm" } ?? "-"))
                logger.notice("drift reference learnt from live rows", metadata: ["model.version": "\(version)"])
            case .referenceFailed(let why):
                writer.appendEvent(kind: "drift_reference_failed", message: "version \(version): \(why); warming up again")
                logger.error("drift warm-up failed", metadata: ["model.version": "\(version)", "error": "\(why)"])
            }
        }
    }

    static func driftSettings(_ config: AgentConfig) -> DriftMonitor.Settings? {
        guard config.drift.enabled else { return nil }
        var s = DriftMonitor.Settings()
        s.warmupRows = config.drift.warmupRows
        s.falseAlarmRun = config.drift.falseAlarmRun
        s.workers = config.serving.workers > 0 ? config.serving.workers : ProcessInfo.processInfo.activeProcessorCount
        return s
    }
}

/// Saves the serving model's drift state every `drift.save_interval_s` (alarms and resets are
/// saved sooner: a reset before it answers, an alarm at the next tick), and once more at the end.
struct DriftService: Service {
    let agent: Agent
    func run() async throws {
        let interval = agent.config.drift.saveIntervalS
        // Stops at once on shutdown (a sleeping loop would hold up the services after it); the
        // last save happens in `Agent.run` once the queue has drained.
        try? await cancelWhenGracefulShutdown {
            var last = Date()
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(1))
                guard let monitor = agent.driftMonitor else { continue }
                let due = Date().timeIntervalSince(last) >= interval
                if due || monitor.hasUnsavedAlarm {
                    await Blocking.run(on: Blocking.control) { agent.models.saveDrift(of: agent.models.slot.current) }
                    last = Date()
                }
            }
        }
    }
}

/// Drift gauges, one pair per signal name (created on first sight: a reference names at most 16).
final class DriftGauges: @unchecked Sendable {
    private let registry: PrometheusCollectorRegistry
    private let lock = NSLock()
    private var scores: [String: Gauge] = [:], thresholds: [String: Gauge] = [:]
    let state: Gauge

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        state = registry.makeGauge(name: "agentd_drift_state",
                                   help: "Drift state of the serving model: -1 warming up, 0 ok, 1 warning (a score above half its threshold), 2 drift.")
    }

    func set(state s: DriftState, signals: [(String, Double, Double)]) {
        let value: Double
        switch s {
        case .warmingUp, .filling: value = -1
        case .ok: value = 0
        case .warning: value = 1
        case .drift: value = 2
        }
        state.set(value)
        lock.lock()
        defer { lock.unlock() }
        for (name, score, threshold) in signals {
            let g = scores[name] ?? registry.makeGauge(name: "agentd_drift_score", labels: [("signal", name)],
                                                       help: "Drift score of a signal: KL divergence of its window from the reference (max or sum over features).")
            let t = thresholds[name] ?? registry.makeGauge(name: "agentd_drift_threshold", labels: [("signal", name)],
                                                           help: "Calibrated alarm threshold of a drift signal.")
            scores[name] = g
            thresholds[name] = t
            g.set(score)
            t.set(threshold)
        }
    }

    func clear() { state.set(Double(-1)) }
}
