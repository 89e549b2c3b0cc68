import AgentAPI
import AgentConfig
import Foundation
import UnixSignals
import Hummingbird
import Logging
import Prometheus
import ServiceLifecycle
import Serving
import Store
import Tensor

#if canImport(Glibc)
import Glibc
#endif

public let agentVersion = "0.1.0"

/// Everything agentd runs, wired by `buildAgent(config:)`; `run()` runs its service group.
public final class Agent: @unchecked Sendable {
    public let configPath: String?
    /// Read by request handlers while SIGHUP may replace it: always through `config`, under `stateLock`.
    private var currentConfig: AgentConfig
    public let logger: Logger
    public let database: AgentDatabase
    public let models: ModelManager
    public let scheduler: BatchScheduler
    public let recent = RecentInferences()
    public let metrics: AgentMetrics
    let notifier: SystemdNotifier
    let started = Date()
    private let stateLock = NSLock()
    private var stopping = false

    init(config: AgentConfig, configPath: String?, logger: Logger, database: AgentDatabase, models: ModelManager,
         scheduler: BatchScheduler, metrics: AgentMetrics, notifier: SystemdNotifier) {
        self.currentConfig = config
        self.configPath = configPath
        self.logger = logger
        self.database = database
        self.models = models
        self.scheduler = scheduler
        self.metrics = metrics
        self.notifier = notifier
    }

    public var config: AgentConfig {
        stateLock.lock()
        defer { stateLock.unlock() }
        return currentConfig
    }

    var isReady: Bool {
        stateLock.lock()
        defer { stateLock.unlock() }
        return !stopping && models.slot.current != nil
    }

    func markStopping() {
        stateLock.lock()
        stopping = true
        stateLock.unlock()
    }

    func events(limit: Int) throws -> [Event] {
        try database.events(limit: limit).map { Event(id: $0.id, ts: $0.ts, kind: $0.kind, message: $0.message) }
    }

    func modelsResponse() throws -> ModelsResponse {
        ModelsResponse(models: try database.models().map {
            ModelVersion(version: $0.version, name: $0.name, sha256: $0.sha256, source: $0.source, precision: $0.precision,
                         created: $0.created, active: $0.active)
        })
    }

    func refreshGauges() {
        let s = scheduler.snapshot
        metrics.queueDepth.set(Double(s.queueDepth))
        metrics.recordEscalations(total: s.escalations)
        metrics.modelInfo.set(Double(models.slot.current?.version ?? 0))
    }

    public func status() -> StatusResponse {
        let s = scheduler.snapshot
        let model = models.slot.current
        let serving = ServingStatus(workers: s.workers, maxBatchSize: s.maxBatchSize, requests: s.requests, samples: s.samples,
                                    rejectedQueueFull: s.rejectedQueueFull, deadlineExpired: s.deadlineExpired, queueDepth: s.queueDepth,
                                    batches: s.batches, meanBatchSize: s.batches == 0 ? 0 : Double(s.batchedRows) / Double(s.batches),
                                    throughputPerS: s.throughput, latencyP50Ms: s.latencyP50, latencyP99Ms: s.latencyP99,
                                    escalations: s.escalations, batchWaitMs: s.batchWait * 1000)
        return StatusResponse(
            state: isReady ? "serving" : (model == nil ? "no-model" : "stopping"), version: agentVersion, pid: getpid(),
            uptimeS: Date().timeIntervalSince(started), socket: config.agent.socket,
            model: model.map { ModelRef(name: $0.name, version: $0.version, precision: $0.precision) }, inputSize: model?.inputCount,
            serving: serving,
            feedbackSamples: (try? database.feedbackCount()) ?? 0,
            drift: ComponentStatus(state: "not-configured", detail: "drift monitoring arrives with the drift issue"),
            learner: ComponentStatus(state: "idle", detail: "\((try? database.feedbackCount()) ?? 0) labelled samples stored"),
            mqtt: ComponentStatus(state: "not-configured"),
            lastEvents: (try? events(limit: 5)) ?? [])
    }

    /// SIGHUP: re-read the config file, apply the reloadable keys, reload the active model.
    func reload() {
        guard let configPath else { return }
        notifier.notify("RELOADING=1\nSTATUS=reloading configuration")
        do {
            let new = try AgentConfig.load(path: configPath)
            scheduler.update(maxBatchSize: new.serving.maxBatchSize, maxQueueDelay: new.serving.maxQueueDelayMs / 1000,
                             adaptive: new.serving.adaptiveBatching, latencyTarget: new.serving.latencyTargetMs / 1000)
            try models.reload(adaptive: new.model.adaptive)
            stateLock.lock()
            currentConfig.serving = new.serving
            currentConfig.model.adaptive = new.model.adaptive
            currentConfig.agent.logLevel = new.agent.logLevel
            stateLock.unlock()
            _ = try? database.appendEvent(kind: "reload", message: "configuration and model reloaded from \(configPath)")
            logger.notice("reloaded", metadata: ["config": "\(configPath)"])
        } catch {
            // A bad file changes nothing; the agent keeps serving with what it had.
            _ = try? database.appendEvent(kind: "reload_failed", message: "\(error)")
            logger.error("reload failed; keeping the running configuration", metadata: ["error": "\(error)"])
        }
        notifier.notify("READY=1\nSTATUS=\(statusLine())")
    }

    func statusLine() -> String {
        guard let m = models.slot.current else { return "no model loaded" }
        return "serving \(m.name) v\(m.version) (\(m.precision)) on \(config.agent.socket)"
    }

    /// Runs until SIGTERM or SIGINT; then drains and returns.
    public func run() async throws {
        let app = try makeApplication()
        let group = ServiceGroup(configuration: .init(
            services: [
                .init(service: SchedulerService(agent: self)),
                .init(service: app),
                .init(service: SupervisorService(agent: self)),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
    }

    /// Whether a new inference request is refused at once because the queue is full (counted).
    func refuseIfQueueFull() -> Bool {
        guard scheduler.refuseIfFull() else { return false }
        metrics.requestsRejected.increment()
        return true
    }

    func makeApplication() throws -> some ApplicationProtocol {
        let socket = config.agent.socket
        try FileManager.default.createDirectory(atPath: (socket as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        if FileManager.default.fileExists(atPath: socket) { unlink(socket) }
        let group = config.agent.socketGroup
        let notifier = self.notifier
        let agent = self
        return Application(
            router: APIServer.router(self),
            server: .http1(configuration: .init(
                additionalChannelHandlers: [OverloadShedder(refuse: { agent.refuseIfQueueFull() }, body: APIServer.queueFullBody)],
                idleTimeout: .milliseconds(Int64(config.api.idleTimeoutS * 1000)))),
            configuration: .init(address: .unixDomainSocket(path: socket), serverName: "agentd"),
            onServerRunning: { _ in
                chmod(socket, 0o660)
                if !group.isEmpty, let g = getgrnam(group) { chown(socket, UInt32.max, g.pointee.gr_gid) }
                notifier.notify("READY=1\nSTATUS=\(agent.statusLine())")
                agent.logger.info("agentd ready", metadata: ["socket": "\(socket)"])
                if agent.config.agent.releaseStartupPages {
                    let trim = MemoryTrim.release()
                    agent.logger.info("start-up pages released", metadata: [
                        "resident_before_kb": "\(trim.rssBeforeKB)", "resident_after_kb": "\(trim.rssAfterKB)",
                        "mappings": "\(trim.mappings)", "refused": "\(trim.refused)"])
                }
            },
            logger: logger)
    }
}

/// Starts the inference workers; on shutdown (after the API has answered what it accepted)
/// drains the queue within `api.drain_timeout_s` and stops them.
struct SchedulerService: Service {
    let agent: Agent
    func run() async throws {
        agent.scheduler.start()
        try? await gracefulShutdown()
        let drained = agent.scheduler.drain(timeout: agent.config.api.drainTimeoutS)
        agent.scheduler.stop()
        agent.logger.info("inference workers stopped", metadata: ["drained": "\(drained)"])
    }
}

/// sd_notify watchdog pings while the workers make progress, SIGHUP reloads, STOPPING=1.
struct SupervisorService: Service {
    let agent: Agent
    func run() async throws {
        let interval = SystemdNotifier.watchdogInterval() ?? 5
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                for await _ in hangups.cancelOnGracefulShutdown() { agent.reload() }
            }
            tasks.addTask {
                while !Task.isShuttingDownGracefully && !Task.isCancelled {
                    // A stalled worker stops the pings, and systemd restarts the service.
                    if agent.scheduler.isMakingProgress(within: max(interval * 2, 2)) {
                        agent.notifier.notify("WATCHDOG=1")
                    } else {
                        agent.logger.warning("inference workers stalled; withholding the watchdog ping")
                    }
                    try? await Task.sleep(for: .milliseconds(Int64(interval * 1000)))
                }
            }
            try? await gracefulShutdown()
            agent.markStopping()
            agent.notifier.notify("STOPPING=1\nSTATUS=draining")
            tasks.cancelAll()
        }
    }
}

/// Wires the agent: opens the database, stores and registers the initial model if needed, loads
/// the active model, and prepares the scheduler and API. Tests call it too.
public func buildAgent(config: AgentConfig, configPath: String? = nil, logger: Logger,
                       registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) throws -> Agent {
    BLAS.useSingleThread()
    let state = config.agent.stateDir
    try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
    let database = try AgentDatabase(path: state + "/agent.db")
    let store = try ModelStore(directory: state + "/models")
    let slot = ModelSlot()
    let models = ModelManager(database: database, store: store, slot: slot, logger: logger)
    try models.start(config: config)
    let settings = SchedulerSettings(
        workers: config.serving.workers, maxBatchSize: config.serving.maxBatchSize, maxQueueDelay: config.serving.maxQueueDelayMs / 1000,
        queueCapacity: config.serving.queueCapacity, memoryBudgetBytes: config.serving.memoryBudgetMB << 20,
        adaptive: config.serving.adaptiveBatching, latencyTarget: config.serving.latencyTargetMs / 1000)
    let scheduler = BatchScheduler(slot: slot, settings: settings)
    let metrics = AgentMetrics(registry: registry)
    scheduler.onBatch = { rows, waits in
        metrics.batchSize.record(Double(rows))
        for w in waits { metrics.queueWait.record(w / 1000) }  // the scheduler reports ms; the metric is in seconds
    }
    _ = try? database.appendEvent(kind: "started", message: "agentd \(agentVersion) started (pid \(getpid()))")
    return Agent(config: config, configPath: configPath, logger: logger, database: database, models: models, scheduler: scheduler,
                 metrics: metrics, notifier: SystemdNotifier())
}
