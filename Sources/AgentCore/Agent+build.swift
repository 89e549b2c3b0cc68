import AgentConfig
import Drift
import Foundation
import Logging
import Prometheus
import Serving
import Store
import Tensor

#if canImport(Glibc)
import Glibc
#endif

/// Wires the agent: opens the database (moving a damaged one aside), starts the store writer,
/// registers or rebuilds the model registry and loads the active model, and prepares the
/// scheduler and API. Tests call it too.
public func buildAgent(config: AgentConfig, configPath: String? = nil, logger: Logger, logLevel: LogLevelControl = LogLevelControl(),
                       registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) throws -> Agent {
    BLAS.useSingleThread()
    // A write past RLIMIT_FSIZE then fails with EFBIG, reported as a storage error, instead of killing agentd.
    signal(SIGXFSZ, SIG_IGN)
    _ = try Agent.socketGroupID(config.agent.socketGroup)
    try Agent.checkAdminGroup(config.api.adminGroup)
    let state = config.agent.stateDir
    try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
    let lock = try StateLock(directory: state)
    let database: AgentDatabase, movedAside: String?
    do {
        (database, movedAside) = try AgentDatabase.openRecovering(path: state + "/agent.db")
    } catch {
        throw StartupError(message: "\(state)/agent.db: \(StoreError(error))", isConfiguration: false)
    }
    let writer = try StoreWriter(database: database, limits: StoreWriter.Limits(
        feedbackMaxRows: config.store.feedbackMaxRows, feedbackMaxBytes: config.store.feedbackMaxBytes,
        eventsMaxRows: config.store.eventsMaxRows, eventsMaxBytes: config.store.eventsMaxBytes, queueCapacity: config.store.writeQueue))
    if let movedAside {
        writer.appendEvent(kind: "database_recovered",
                           message: "agent.db was damaged or not a database; moved aside to \(movedAside); the registry is rebuilt from the model files")
        logger.error("agent.db was damaged; moved aside and started anew", metadata: ["moved_to": "\(movedAside)"])
    }
    let store = try ModelStore(directory: state + "/models")
    let slot = ModelSlot()
    let driftDirectory = state + "/drift"
    try FileManager.default.createDirectory(atPath: driftDirectory, withIntermediateDirectories: true)
    DriftMonitor.removeLeftovers(in: driftDirectory)
    let sampler = LiveSampler()
    let models = ModelManager(database: database, store: store, slot: slot, events: writer, logger: logger,
                              drift: Agent.driftSettings(config), driftDirectory: driftDirectory,
                              onDriftEvent: Agent.driftEventHandler(writer: writer, logger: logger), sampler: sampler)
    try models.start(config: config)
    let learnSettings = LearnSettingsBox(config.learn)
    let learner = Learner(database: database, writer: writer, models: models, logger: logger, sampler: sampler, replay: config.replay,
                          settings: { learnSettings.value }, driftState: { (slot.current?.observer as? DriftMonitor)?.summary().state.rawValue })
    do {
        try learner.start()
    } catch {
        throw StartupError(message: "\(state)/agent.db: the replay memory could not be read: \(StoreError(error))", isConfiguration: false)
    }
    let scheduler = BatchScheduler(slot: slot, settings: Agent.schedulerSettings(config))
    let metrics = AgentMetrics(registry: registry)
    scheduler.onBatch = { rows, waits in
        metrics.batchSize.record(Double(rows))
        for w in waits { metrics.queueWait.record(w / 1000) }  // the scheduler reports ms; the metric is in seconds
    }
    logLevel.level = Logger.Level(rawValue: config.agent.logLevel) ?? .info
    writer.appendEvent(kind: "started", message: "agentd \(agentVersion) started (pid \(getpid()))")
    let agent = Agent(config: config, configPath: configPath, logger: logger, logLevel: logLevel, database: database, writer: writer,
                      models: models, learner: learner, learnSettings: learnSettings, scheduler: scheduler, metrics: metrics,
                      notifier: SystemdNotifier(), stateLock: lock)
    agent.fleet = try FleetLink(agent: agent, config: config, device: try FleetLink.deviceName(config))
    // Before any service runs (nothing else can change the registry meanwhile).
    agent.fleet?.recoverInterruptedDeployment()
    return agent
}

/// The `[learn]` settings in force, shared with the learner (SIGHUP replaces them).
final class LearnSettingsBox: @unchecked Sendable {
    private let lock = NSLock()
    private var current: AgentConfig.Learn
    init(_ value: AgentConfig.Learn) { current = value }
    var value: AgentConfig.Learn {
        get { lock.lock(); defer { lock.unlock() }; return current }
        set { lock.lock(); current = newValue; lock.unlock() }
    }
}

/// One agentd per state directory: a second would unlink the first's socket and sweep its
/// half-written model files. An flock on `agent.lock`, held for the process's life (the kernel
/// drops it when the process dies, however it dies).
final class StateLock: Sendable {
    let fd: Int32

    init(directory: String) throws {
        let path = directory + "/agent.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StartupError(message: "\(path): \(String(cString: strerror(errno)))", isConfiguration: false) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw StartupError(message: "\(path): another agentd is using \(directory) (its lock is held)", isConfiguration: false)
        }
        self.fd = fd
    }

    deinit { close(fd) }
}

/// The log level in force, shared by every logger's handler, so SIGHUP can change it.
public final class LogLevelControl: @unchecked Sendable {
    private let lock = NSLock()
    private var current: Logger.Level

    public init(_ level: Logger.Level = .info) { current = level }

    public var level: Logger.Level {
        get {
            lock.lock()
            defer { lock.unlock() }
            return current
        }
        set {
            lock.lock()
            current = newValue
            lock.unlock()
        }
    }
}

/// A log handler whose level is `LogLevelControl`'s.
public struct ControlledLogHandler: LogHandler {
    private var inner: StreamLogHandler
    private let control: LogLevelControl

    public init(label: String, control: LogLevelControl) {
        inner = StreamLogHandler.standardError(label: label)
        inner.logLevel = .trace
        self.control = control
    }

    public var logLevel: Logger.Level {
        get { control.level }
        set { control.level = newValue }
    }

    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) {
        inner.log(event: event)
    }
}
