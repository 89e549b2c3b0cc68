import AgentAPI
import AgentConfig
import Foundation
import Hummingbird
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import Serving
import Store
import Tensor
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

public let agentVersion = "0.1.0"

/// A start that cannot go on: agentd exits 1 with this one line.
public struct StartupError: Error, CustomStringConvertible, Sendable {
    public let message: String
    /// EX_CONFIG (78) when the configuration names something that does not exist; systemd does not restart on it.
    public let isConfiguration: Bool
    public var description: String { message }
}

/// Everything agentd runs, wired by `buildAgent(config:)`; `run()` runs its service group.
public final class Agent: @unchecked Sendable {
    enum State {
        case starting
        case serving
        case stopping
    }

    public let configPath: String?
    /// Read by request handlers while SIGHUP may replace it: always through `config`, under `stateLock`.
    private var currentConfig: AgentConfig
    public let logger: Logger
    public let database: AgentDatabase
    public let writer: StoreWriter
    public let models: ModelManager
    let learner: Learner
    let learnSettings: LearnSettingsBox
    public let scheduler: BatchScheduler
    public let recent: RecentInferences
    public let metrics: AgentMetrics
    let connections: ConnectionCount
    let logLevel: LogLevelControl
    let notifier: SystemdNotifier
    let started = Date()
    private let stateLock = NSLock()
    private var state = State.starting
    private var startupFailure: StartupError?
    private var group: ServiceGroup?
    private var drain: Task<Void, Never>?
    let stateDirectoryLock: StateLock
    /// The fleet link; set once by `buildAgent` before anything runs.
    var fleet: FleetLink?

    init(config: AgentConfig, configPath: String?, logger: Logger, logLevel: LogLevelControl, database: AgentDatabase, writer: StoreWriter,
         models: ModelManager, learner: Learner, learnSettings: LearnSettingsBox, scheduler: BatchScheduler, metrics: AgentMetrics, notifier: SystemdNotifier, stateLock: StateLock) {
        self.stateDirectoryLock = stateLock
        self.currentConfig = config
        self.configPath = configPath
        self.logger = logger
        self.logLevel = logLevel
        self.database = database
        self.writer = writer
        self.models = models
        self.learner = learner
        self.learnSettings = learnSettings
        self.scheduler = scheduler
        self.recent = RecentInferences(limitBytes: config.serving.recentInferencesBytes)
        self.metrics = metrics
        self.connections = ConnectionCount(limit: config.api.maxConnections)
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
        return state == .serving && models.slot.current != nil
    }

    /// The lifecycle fields, under `stateLock` (callable from async code).
    private func withState<T>(_ body: (Agent) -> T) -> T {
        stateLock.lock()
        defer { stateLock.unlock() }
        return body(self)
    }

    private func setState(_ new: State) {
        stateLock.lock()
        state = new
        stateLock.unlock()
    }

    func events(limit: Int) throws -> [Event] {
        try database.events(limit: limit).map { Event(id: $0.id, ts: $0.ts, kind: $0.kind, message: $0.message) }
    }

    func modelsResponse() throws -> ModelsResponse {
        ModelsResponse(models: try database.models().map {
            ModelVersion(version: $0.version, name: $0.name, sha256: $0.sha256, source: $0.source, precision: $0.precision,
                         created: $0.created, active: $0.active,
                         lineage: $0.lineage.flatMap { try? JSONDecoder().decode(Lineage.self, from: Data($0.utf8)) })
        })
    }

    func refreshGauges() {
        let s = scheduler.snapshot
        metrics.queueDepth.set(Double(s.queueDepth))
        metrics.escalations.record(total: s.escalations)
        metrics.modelInfo.set(Double(models.slot.current?.version ?? 0))
        metrics.queuedBytes.set(Double(s.queuedBytes))
        metrics.connections.set(Double(connections.current))
        metrics.recentBytes.set(Double(recent.byteCount))
        let store = writer.state
        metrics.storeRows.feedback.set(Double(store.feedback.rows))
        metrics.storeRows.events.set(Double(store.events.rows))
        metrics.storeBytes.feedback.set(Double(store.feedback.bytes))
        metrics.storeBytes.events.set(Double(store.events.bytes))
        metrics.evicted.feedback.record(total: store.feedbackEvicted)
        metrics.evicted.events.record(total: store.eventsEvicted)
        metrics.eventsDropped.record(total: store.eventsDropped)
        metrics.storeWriteErrors.record(total: store.writeErrors)
        refreshDriftGauges()
        metrics.replaySamples.set(Double(learner.replayFill.samples))
        metrics.learnRunning.set(Double(learner.isRunning ? 1 : 0))
        for (outcome, total) in learner.outcomeTotals { metrics.updates[outcome]?.record(total: total) }
        if let f = fleet?.status() {
            metrics.mqttConnected.set(Double(f.state == "connected" ? 1 : 0))
            metrics.outboxMessages.set(Double(f.outboxRows))
            metrics.outboxDropped.record(total: Int(f.outboxDropped))
            metrics.mqttBytesSent.record(total: Int(f.bytesSent))
        }
    }

    /// From memory only (scheduler counters, the writer's counts, cached events): never SQLite.
    public func status() -> StatusResponse {
        let s = scheduler.snapshot
        let model = models.slot.current
        let store = writer.state
        let serving = ServingStatus(workers: s.workers, maxBatchSize: s.maxBatchSize, requests: s.requests, samples: s.samples,
                                    rejectedQueueFull: s.rejectedQueueFull, deadlineExpired: s.deadlineExpired, queueDepth: s.queueDepth,
                                    batches: s.batches, meanBatchSize: s.batches == 0 ? 0 : Double(s.batchedRows) / Double(s.batches),
                                    throughputPerS: s.throughput, latencyP50Ms: s.latencyP50, latencyP99Ms: s.latencyP99,
                                    escalations: s.escalations, batchWaitMs: s.batchWait * 1000, queuedBytes: s.queuedBytes,
                                    connections: connections.current, recentInferencesBytes: recent.byteCount)
        let stateName: String
        stateLock.lock()
        switch state {
        case .starting: stateName = "starting"
        case .serving: stateName = model == nil ? "no-model" : "serving"
        case .stopping: stateName = "stopping"
        }
        stateLock.unlock()
        var response = StatusResponse(
            state: stateName, version: agentVersion, pid: getpid(),
            uptimeS: Date().timeIntervalSince(started), socket: config.agent.socket,
            model: model.map { ModelRef(name: $0.name, version: $0.version, precision: $0.precision) }, inputSize: model?.inputCount,
            serving: serving,
            feedbackSamples: store.feedback.rows,
            drift: driftComponent(),
            learner: learner.component(),
            mqtt: fleet?.component() ?? ComponentStatus(state: "not-configured"),
            fleet: fleet?.status(),
            lastEvents: writer.recentEvents.map { Event(id: $0.id, ts: $0.ts, kind: $0.kind, message: $0.message) },
            store: StoreStatus(feedbackRows: store.feedback.rows, feedbackBytes: store.feedback.bytes, eventsRows: store.events.rows,
                               eventsBytes: store.events.bytes, feedbackEvicted: store.feedbackEvicted, eventsEvicted: store.eventsEvicted,
                               eventsDropped: store.eventsDropped, writeErrors: store.writeErrors, writeQueue: store.queued,
                               lastError: store.lastError))
        if let model {
            let batch = scheduler.largestPlan(for: model)
            let m = model.memory(plans: s.workers, batch: batch)
            response.modelMemory = ModelMemoryStatus(fileBytes: m.file, decodedBytes: m.decoded, packedBytes: m.packed,
                                                     planBufferBytes: m.planBuffers, plans: m.plans, batch: batch, totalBytes: m.total)
        }
        return response
    }

    static func monotonicMicroseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000 + UInt64(t.tv_nsec) / 1000
    }

    /// SIGHUP, on the control queue: re-read the config file and reload the active model, then
    /// apply the reloadable keys — all of it, or (a bad file, a model that fails to load) none of
    /// it. Changed keys that need a restart are named in the event.
    func reload() {
        guard let configPath else { return }
        notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(Self.monotonicMicroseconds())\nSTATUS=reloading configuration")
        do {
            let new = try AgentConfig.load(path: configPath)
            try Self.checkAdminGroup(new.api.adminGroup)
            let changed = new.changedKeys(from: config)
            let needRestart = changed.filter { !AgentConfig.reloadableKeys.contains($0) }
            let running = config.reloaded(from: new)
            try models.reload(adaptive: running.model.adaptive) {
                scheduler.update(Self.schedulerSettings(running))
                logLevel.level = Logger.Level(rawValue: running.agent.logLevel) ?? .info
                stateLock.lock()
                currentConfig = running
                learnSettings.value = running.learn
                stateLock.unlock()
            }
            var message = "configuration and model reloaded from \(configPath)"
            let applied = changed.filter { AgentConfig.reloadableKeys.contains($0) }
            if !applied.isEmpty { message += "; applied: \(applied.joined(separator: ", "))" }
            if !needRestart.isEmpty { message += "; need a restart to take effect: \(needRestart.joined(separator: ", "))" }
            writer.appendEvent(kind: "reload", message: message)
            logger.notice("reloaded", metadata: ["config": "\(configPath)", "applied": "\(applied)", "restart_needed": "\(needRestart)"])
        } catch {
            // A bad file or model changes nothing; the agent keeps serving with what it had.
            writer.appendEvent(kind: "reload_failed", message: "\(error)")
            logger.error("reload failed; keeping the running configuration", metadata: ["error": "\(error)"])
        }
        // READY=1 means the reload is done, its event included.
        writer.flush()
        notifier.notify("READY=1\nSTATUS=\(statusLine())")
    }

    static func schedulerSettings(_ config: AgentConfig) -> SchedulerSettings {
        SchedulerSettings(
            workers: config.serving.workers, maxBatchSize: config.serving.maxBatchSize, maxQueueDelay: config.serving.maxQueueDelayMs / 1000,
            queueCapacity: config.serving.queueCapacity, queueBytes: config.serving.queueBytes,
            memoryBudgetBytes: config.serving.memoryBudgetMB << 20,
            adaptive: config.serving.adaptiveBatching, latencyTarget: config.serving.latencyTargetMs / 1000)
    }

    func statusLine() -> String {
        guard let m = models.slot.current else { return "no model loaded" }
        return "serving \(m.name) v\(m.version) (\(m.precision)) on \(config.agent.socket)"
    }

    /// Runs until SIGTERM or SIGINT. Shutdown order: the supervisor marks agentd stopping, the
    /// scheduler stops taking requests and drains within `api.drain_timeout_s` (what is left is
    /// answered 503), meanwhile the API closes its listener and then each connection once its
    /// answers are out; then the store writer finishes its queue.
    public func run() async throws {
        let app = try makeApplication()
        let group = ServiceGroup(configuration: .init(
            services: [
                // First, so it stops last: shutdown runs the list in reverse, and the goodbye goes out after the rest.
                .init(service: FleetService(agent: self)),
                .init(service: DriftService(agent: self)),
                // Before the API in the list, so it stops after it: no job starts once it is gone.
                .init(service: LearnService(agent: self)),
                .init(service: app),
                .init(service: SchedulerService(agent: self)),
                .init(service: SupervisorService(agent: self)),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        withState { $0.group = group }
        try await group.run()
        await withState { $0.drain }?.value
        // Every answered row has been observed: the drift state saved now is complete.
        models.saveDrift(of: models.slot.current)
        writer.close()
        if let failure = withState({ $0.startupFailure }) { throw failure }
    }

    /// The start cannot go on (after the server is up): log it, stop the group, and make `run` throw.
    func failStart(_ message: String) async {
        logger.critical("start failed", metadata: ["error": "\(message)"])
        let group = withState { agent -> ServiceGroup? in
            agent.startupFailure = StartupError(message: message, isConfiguration: false)
            return agent.group
        }
        await group?.triggerGracefulShutdown()
    }

    /// Stops taking requests and drains on a thread of its own (the wait blocks); `run` waits for it.
    func beginDrain() {
        let timeout = config.api.drainTimeoutS
        let scheduler = self.scheduler, logger = self.logger
        logger.info("draining the inference queue", metadata: ["queued": "\(scheduler.snapshot.queueDepth)", "timeout_s": "\(timeout)"])
        stateLock.lock()
        drain = Task {
            await Blocking.run(on: DispatchQueue(label: "agentd.drain")) {
                let drained = scheduler.drain(timeout: timeout)
                let left = scheduler.snapshot.queueDepth
                scheduler.stop()
                logger.info("inference workers stopped", metadata: ["drained": "\(drained)", "refused_at_stop": "\(left)"])
            }
        }
        stateLock.unlock()
    }

    /// Whether a new inference request is refused at once because the queue is full (counted).
    func refuseIfQueueFull() -> Bool {
        guard scheduler.refuseIfFull() else { return false }
        metrics.requestsRejected.increment()
        return true
    }

    func makeApplication() throws -> some ApplicationProtocol {
        let config = self.config
        let socket = config.agent.socket
        try FileManager.default.createDirectory(atPath: (socket as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        if FileManager.default.fileExists(atPath: socket) { unlink(socket) }
        let gid = try Self.socketGroupID(config.agent.socketGroup)
        let agent = self
        let connections = self.connections
        return Application(
            router: APIServer.router(self),
            server: .http1(configuration: .init(
                additionalChannelHandlers: [
                    ConnectionLimiter(connections: connections, body: APIServer.tooManyConnectionsBody),
                    OverloadShedder(refuse: { agent.refuseIfQueueFull() }, body: APIServer.queueFullBody),
                ],
                idleTimeout: .milliseconds(Int64(config.api.idleTimeoutS * 1000)))),
            configuration: .init(address: .unixDomainSocket(path: socket), serverName: "agentd"),
            onServerRunning: { _ in
                // The socket's mode and group are its access control: a failure here must stop the start.
                guard chmod(socket, 0o660) == 0 else {
                    await agent.failStart("\(socket): chmod 0660 failed: \(String(cString: strerror(errno)))")
                    return
                }
                if let gid, chown(socket, UInt32.max, gid) != 0 {
                    await agent.failStart("\(socket): chown to group '\(config.agent.socketGroup)' failed: \(String(cString: strerror(errno)))")
                    return
                }
                agent.setState(.serving)
                agent.notifier.notify("READY=1\nSTATUS=\(agent.statusLine())")
                agent.logger.info("agentd ready", metadata: ["socket": "\(socket)"])
                if config.agent.releaseStartupPages {
                    let trim = MemoryTrim.release()
                    agent.logger.info("start-up pages released", metadata: [
                        "resident_before_kb": "\(trim.rssBeforeKB)", "resident_after_kb": "\(trim.rssAfterKB)",
                        "mappings": "\(trim.mappings)", "refused": "\(trim.refused)"])
                }
            },
            logger: logger)
    }

    /// The socket group's id; nil for an empty name (keep the process's group).
    static func socketGroupID(_ name: String) throws -> UInt32? {
        guard !name.isEmpty else { return nil }
        guard let group = AdminPolicy.group(name) else {
            throw StartupError(message: "agent.socket_group: group '\(name)' does not exist (create it, e.g. with systemd-sysusers, or set another)",
                               isConfiguration: true)
        }
        return group.gid
    }

    /// A named admin group must exist: a typo would silently lock every admin out.
    static func checkAdminGroup(_ name: String) throws {
        guard !name.isEmpty, AdminPolicy.group(name) == nil else { return }
        throw StartupError(message: "api.admin_group: group '\(name)' does not exist", isConfiguration: true)
    }

    /// The first half of shutdown: readiness goes, systemd is told.
    func markStopping() {
        logger.info("stopping")
        setState(.stopping)
        notifier.notify("STOPPING=1\nSTATUS=draining")
    }
}

/// Starts the inference workers; on shutdown stops taking requests and drains them.
struct SchedulerService: Service {
    let agent: Agent
    func run() async throws {
        agent.scheduler.start()
        try? await gracefulShutdown()
        agent.beginDrain()
    }
}

/// sd_notify watchdog pings while the workers make progress, SIGHUP reloads (on the control
/// queue), and on shutdown the first step: stopping state and STOPPING=1.
struct SupervisorService: Service {
    let agent: Agent
    func run() async throws {
        let interval = SystemdNotifier.watchdogInterval() ?? 5
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                for await _ in hangups.cancelOnGracefulShutdown() { await Blocking.run(on: Blocking.control) { agent.reload() } }
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
            tasks.cancelAll()
        }
    }
}
