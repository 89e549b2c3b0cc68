import AgentAPI
import AgentConfig
@preconcurrency import Crypto
import Fleet
import Foundation
import Learning
import Logging
import ServiceLifecycle
import Store

#if canImport(Glibc)
import Glibc
#endif

/// The agent's side of the fleet contract (README, "Fleet over MQTT"): presence, telemetry and
/// events through the SQLite outbox, commands, signed deployments with a health gate. All its
/// state lives on one serial queue (`queue`); deployments run on the control queue so a long
/// health gate never holds up the outbox.
final class FleetLink: @unchecked Sendable {
    let agent: Agent
    let topics: FleetTopics
    let broker: String
    let client: MQTTClient?
    let queue = DispatchQueue(label: "agentd.fleet")
    /// Deployments, one at a time; installs and rollbacks inside them go through the control queue.
    let deployQueue = DispatchQueue(label: "agentd.deploy")
    var deploysPending = 0
    let logger: Logger
    let lock = NSLock()
    // Under `lock`: what status reads.
    private var linkState = "connecting"
    private var lastError: String?
    private var protocolName: String?
    private var sent: Int64 = 0
    var lastDeployment: String?
    private var outbox = AgentDatabase.OutboxSize(rows: 0, bytes: 0)
    private var dropped: Int64 = 0
    var trusted: [String: Curve25519.Signing.PublicKey]
    // On `queue` only.
    /// The connection as this queue has seen it (the client's flag turns before its event arrives here).
    var linkUp = false
    private var inflight: [Int32: Int64] = [:]
    private var lastQueued: Int64 = 0
    private var seq: Int64 = 0
    private var nextTelemetry = Date()
    private var telemetryTicks = 0
    private var day = ""
    private var sentToday: Int64 = 0
    private var lastStatusKey = ""
    private let startedCPU = FleetLink.cpuSeconds()
    static let window = 32
    static let maxCommandBytes = 256 << 10

    init(agent: Agent, config: AgentConfig, device: String) throws {
        self.agent = agent
        logger = agent.logger
        broker = config.mqtt.broker
        topics = FleetTopics(prefix: config.mqtt.prefix, fleet: config.mqtt.fleet, device: device, groups: config.mqtt.groups)
        do {
            trusted = try SigningKey.loadPublicKeys(paths: config.deploy.trustedKeys)
        } catch {
            throw StartupError(message: "deploy.trusted_keys: \(error)", isConfiguration: true)
        }
        // A key set rotated in over MQTT replaces the configured keys.
        if let text = try agent.database.fleetValue(Self.trustedKeysKey), let data = text.data(using: .utf8),
           let keys = try? JSONDecoder().decode([String: String].self, from: data) {
            trusted = keys.compactMapValues { SigningKey.publicKey(base64: $0) }
        }
        lastDeployment = try agent.database.fleetValue(Self.lastDeploymentKey)
        dropped = Int64(try agent.database.fleetValue(AgentDatabase.outboxDroppedKey) ?? "0") ?? 0
        sent = Int64(try agent.database.fleetValue(Self.bytesSentKey) ?? "0") ?? 0
        seq = Int64(try agent.database.fleetValue(Self.seqKey) ?? "0") ?? 0
        outbox = try agent.database.outboxSize()
        guard !broker.isEmpty else {
            client = nil
            linkState = "not-configured"
            return
        }
        let (host, port, tls) = try Self.parse(broker)
        var settings = MQTTSettings(host: host, port: port, tls: tls, clientId: "\(config.mqtt.prefix)-\(config.mqtt.fleet)-\(device)")
        settings.keepalive = config.mqtt.keepaliveS
        // MQTT 5: the broker sends nothing larger than the largest deployment this device takes.
        settings.maximumPacketSize = UInt32(clamping: config.deploy.maxModelBytes / 3 * 4 + (1 << 20))
        settings.protocolChoice = config.mqtt.protocolVersion == "5" ? .v5 : config.mqtt.protocolVersion == "3.1.1" ? .v311 : .auto
        settings.username = config.mqtt.username
        do {
            if !config.mqtt.passwordFile.isEmpty {
                settings.password = try Self.readSecret(config.mqtt.passwordFile, key: "mqtt.password_file")
            }
            settings.caFile = try Self.credentialPath(config.mqtt.caFile, key: "mqtt.ca_file")
            settings.certFile = try Self.credentialPath(config.mqtt.certFile, key: "mqtt.cert_file")
            settings.keyFile = try Self.credentialPath(config.mqtt.keyFile, key: "mqtt.key_file")
        } catch let e as StartupError {
            throw e
        }
        var will = FleetStatus(msgId: FleetTime.messageId(), ts: FleetTime.string(), state: "offline", device: device)
        will.agentVersion = agentVersion
        settings.will = (topics.status, [UInt8](APIServer.encode(will)))
        // Each connection's will carries its own msg_id and ts (consumers de-duplicate by msg_id).
        let deviceName = device
        settings.willFactory = {
            var w = FleetStatus(msgId: FleetTime.messageId(), ts: FleetTime.string(), state: "offline", device: deviceName)
            w.agentVersion = agentVersion
            return [UInt8](APIServer.encode(w))
        }
        do {
            client = try MQTTClient(settings: settings)
        } catch {
            throw StartupError(message: "mqtt: \(error)", isConfiguration: true)
        }
    }

    static let trustedKeysKey = "trusted_keys"
    static let lastDeploymentKey = "last_deployment"
    static let bytesSentKey = "bytes_sent"
    static let seqKey = "telemetry_seq"

    static func parse(_ broker: String) throws -> (String, Int, Bool) {
        do {
            return try MQTTSettings.parseBroker(broker)
        } catch {
            throw StartupError(message: "mqtt.broker: \(error)", isConfiguration: true)
        }
    }

    /// `credential:NAME` is `$CREDENTIALS_DIRECTORY/NAME` (systemd's LoadCredential=); anything else a path.
    static func credentialPath(_ value: String, key: String) throws -> String {
        guard value.hasPrefix("credential:") else { return value }
        let name = String(value.dropFirst("credential:".count))
        guard let dir = ProcessInfo.processInfo.environment["CREDENTIALS_DIRECTORY"], !dir.isEmpty else {
            throw StartupError(message: "\(key): '\(value)' names a systemd credential, but CREDENTIALS_DIRECTORY is not set (LoadCredential= in the unit)",
                               isConfiguration: true)
        }
        guard !name.isEmpty, !name.contains("/"), name != "..", name != "." else {
            throw StartupError(message: "\(key): '\(value)' is not a credential name", isConfiguration: true)
        }
        return dir + "/" + name
    }

    static func readSecret(_ value: String, key: String) throws -> String {
        let path = try credentialPath(value, key: key)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StartupError(message: "\(key): \(path) cannot be read", isConfiguration: true)
        }
        guard data.count <= 4096 else { throw StartupError(message: "\(key): \(path) is larger than 4096 bytes", isConfiguration: true) }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)
    }

    /// `mqtt.device`, else the machine id (systemd's /etc/machine-id), else the host name.
    static func deviceName(_ config: AgentConfig) throws -> String {
        var name = config.mqtt.device
        if name.isEmpty, let id = try? String(contentsOfFile: "/etc/machine-id", encoding: .utf8) {
            name = id.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if name.isEmpty { name = ProcessInfo.processInfo.hostName }
        if let problem = AgentConfig.topicLevelProblem(name, device: true) {
            throw StartupError(message: "mqtt.device: the device name \(problem)", isConfiguration: true)
        }
        return name
    }

    // MARK: status

    func status() -> FleetLinkStatus {
        lock.lock()
        defer { lock.unlock() }
        return FleetLinkStatus(state: linkState, broker: broker, device: topics.device, protocolVersion: protocolName, outboxRows: outbox.rows,
                               outboxBytes: outbox.bytes, outboxDropped: dropped, bytesSent: sent, lastError: lastError,
                               lastDeployment: lastDeployment)
    }

    func component() -> ComponentStatus {
        let s = status()
        var detail = s.broker.isEmpty ? "no broker; outbox \(s.outboxRows) messages kept" : "\(s.broker) as \(s.device)"
        if !s.broker.isEmpty { detail += "; outbox \(s.outboxRows) (\(s.outboxBytes) bytes)" }
        if s.outboxDropped > 0 { detail += ", \(s.outboxDropped) dropped" }
        if let d = s.lastDeployment { detail += "; last deployment \(d)" }
        if s.state != "connected", let e = s.lastError { detail += "; \(e)" }
        return ComponentStatus(state: s.state, detail: detail)
    }

    private func setLink(_ state: String, error: String? = nil, protocolName: String? = nil) {
        lock.lock()
        linkState = state
        if let error { lastError = error }
        if let protocolName { self.protocolName = protocolName }
        lock.unlock()
    }

    // MARK: events from the client (on `queue`)

    func handle(_ event: MQTTEvent) {
        switch event {
        case .connected(let version, let sessionPresent):
            setLink("connected", protocolName: version == 5 ? "5" : "3.1.1")
            logger.notice("connected to the broker", metadata: ["broker": "\(broker)", "protocol": "\(version == 5 ? "5" : "3.1.1")",
                                                                "session_present": "\(sessionPresent)"])
            linkUp = true
            inflight.removeAll()
            lastQueued = 0
            do {
                try client?.subscribe(topics.subscriptions)
            } catch {
                logger.warning("subscribe failed", metadata: ["error": "\(error)"])
            }
            publishStatus(force: true)
            pump()
        case .connectFailed(let why):
            setLink("connecting", error: why)
            logger.debug("broker connection failed", metadata: ["error": "\(why)"])
        case .disconnected(let why):
            setLink("disconnected", error: why)
            logger.warning("broker connection lost", metadata: ["reason": "\(why)"])
            linkUp = false
            inflight.removeAll()
            lastQueued = 0
        case .acknowledged(let mid):
            guard let id = inflight.removeValue(forKey: mid) else { return }
            do {
                try agent.database.outboxDelete(ids: [id])
            } catch {
                logger.warning("outbox row not deleted after its acknowledgement; it will be sent again", metadata: ["error": "\(error)"])
            }
            pump()
        case .rejected(let mid, let reason):
            // The broker will not take this row (not authorised, quota): it is dropped and counted,
            // or it would hold a place in the window for ever.
            guard let id = inflight.removeValue(forKey: mid) else { return }
            logger.error("the broker refused an outbox message; dropped", metadata: ["reason": "\(reason)", "row": "\(id)"])
            do {
                try agent.database.outboxDelete(ids: [id])
                try agent.database.countOutboxDrop()
            } catch {
                logger.warning("refused outbox row not deleted", metadata: ["error": "\(error)"])
            }
            pump()
        case .droppedOversize(let topic, let bytes):
            logger.warning("a message larger than the largest deployment was dropped unread", metadata: ["topic": "\(topic)", "bytes": "\(bytes)"])
        case .message(let m):
            // A retained command or deployment would run again at every reconnect: never taken.
            if m.retained, topics.classify(m.topic) != nil {
                logger.warning("retained command or deployment ignored", metadata: ["topic": "\(m.topic.prefix(256))"])
                return
            }
            switch topics.classify(m.topic) {
            case .command(let verb)?: command(verb: verb, m)
            case .deploy?:
                // Not on this queue: the health gate takes `deploy.health_seconds`. At most two wait
                // (each may hold a model's bytes); more are refused at once.
                lock.lock()
                let admitted = deploysPending < 2
                if admitted { deploysPending += 1 }
                lock.unlock()
                guard admitted else {
                    refuseBusy(m)
                    return
                }
                deployQueue.async {
                    self.deploy(m)
                    self.lock.lock()
                    self.deploysPending -= 1
                    self.lock.unlock()
                }
            case nil: break
            }
        }
    }

    // MARK: outbox

    func publishBytes(_ count: Int) {
        let today = String(FleetTime.string().prefix(10))
        if today != day {
            day = today
            sentToday = 0
        }
        sentToday += Int64(count)
        lock.lock()
        sent += Int64(count)
        lock.unlock()
    }

    /// Sends outbox rows past the last one sent, keeping at most `window` unacknowledged.
    func pump() {
        guard let client, linkUp else { return }
        while inflight.count < Self.window {
            let rows: [AgentDatabase.OutboxRow]
            do {
                rows = try agent.database.outboxPending(after: lastQueued, limit: Self.window - inflight.count)
            } catch {
                logger.warning("outbox not readable", metadata: ["error": "\(error)"])
                return
            }
            guard !rows.isEmpty else { return }
            for row in rows {
                let topic = "\(topics.root)/\(row.kind)"
                guard let mid = try? client.publish(topic: topic, payload: row.payload, qos: 1) else { return }
                inflight[mid] = row.id
                lastQueued = row.id
                publishBytes(row.payload.count + topic.utf8.count)
            }
        }
    }

    /// Every second on `queue`: trim the outbox to its bound, make telemetry when due, send.
    func tick() {
        let config = agent.config
        do {
            let gone = try agent.database.outboxTrim(maxBytes: config.mqtt.outboxBytes)
            if gone > 0 {
                logger.warning("outbox full: oldest messages dropped", metadata: ["dropped": "\(gone)", "outbox_bytes": "\(config.mqtt.outboxBytes)"])
            }
            let size = try agent.database.outboxSize()
            let total = Int64(try agent.database.fleetValue(AgentDatabase.outboxDroppedKey) ?? "0") ?? 0
            lock.lock()
            outbox = size
            dropped = total
            lock.unlock()
        } catch {
            logger.warning("outbox not trimmed", metadata: ["error": "\(error)"])
        }
        guard client != nil else { return }
        let now = Date()
        if now >= nextTelemetry {
            nextTelemetry = now.addingTimeInterval(config.mqtt.telemetryIntervalS)
            telemetryTicks += 1
            // Over the daily budget telemetry thins out to one in ten; events still go.
            let overBudget = config.mqtt.dailyBytes > 0 && sentToday >= Int64(config.mqtt.dailyBytes)
            if !overBudget || telemetryTicks % 10 == 0 { enqueueTelemetry() }
        }
        publishStatus(force: false)
        pump()
    }

    func enqueueTelemetry() {
        seq += 1
        let s = agent.scheduler.snapshot
        let drift = agent.driftResponse()
        let status = status()
        let t = FleetTelemetry(
            msgId: FleetTime.messageId(), ts: FleetTime.string(), seq: seq, device: topics.device, modelVersion: agent.models.slot.current?.version,
            requests: s.requests, throughputPerS: s.throughput, latencyP50Ms: s.latencyP50, latencyP99Ms: s.latencyP99,
            meanBatchSize: s.batches == 0 ? 0 : Double(s.batchedRows) / Double(s.batches), queueDepth: s.queueDepth, refused: s.rejectedQueueFull,
            deadlineExpired: s.deadlineExpired, driftState: drift.state,
            driftScores: Dictionary(drift.signals.map { ($0.name, $0.score.isFinite ? $0.score : -1) }, uniquingKeysWith: { a, _ in a }),
            replaySamples: agent.learner.replayFill.samples, learner: agent.learner.component().state, rssBytes: Self.residentBytes(),
            cpuSeconds: Self.cpuSeconds(), bytesSent: status.bytesSent, outboxRows: status.outboxRows, outboxDropped: status.outboxDropped)
        do {
            try agent.database.outboxAppend(kind: "telemetry", payload: [UInt8](APIServer.encode(t)))
            try agent.database.setFleetValue(Self.seqKey, String(seq))
            try agent.database.setFleetValue(Self.bytesSentKey, String(status.bytesSent))
        } catch {
            logger.warning("telemetry not stored", metadata: ["error": "\(error)"])
        }
    }

    /// The retained presence message: at connect, and whenever what it says changes.
    func publishStatus(force: Bool) {
        guard let client, linkUp else { return }
        let model = agent.models.slot.current
        let s = status()
        let drift = agent.driftComponent().state
        let key = "\(model?.version ?? 0)/\(drift)/\(s.lastDeployment ?? "")"
        guard force || key != lastStatusKey else { return }
        var m = FleetStatus(msgId: FleetTime.messageId(), ts: FleetTime.string(), state: "online", device: topics.device)
        m.agentVersion = agentVersion
        m.model = model?.name
        m.modelVersion = model?.version
        m.precision = model?.precision
        m.groups = topics.groups
        m.uptimeS = Date().timeIntervalSince(agent.started)
        m.drift = drift
        m.outboxDropped = s.outboxDropped
        m.lastDeployment = s.lastDeployment
        let payload = [UInt8](APIServer.encode(m))
        if (try? client.publish(topic: topics.status, payload: payload, qos: 1, retain: true)) != nil {
            lastStatusKey = key
            publishBytes(payload.count + topics.status.utf8.count)
        }
    }

    /// The goodbye a clean stop publishes before DISCONNECT (the broker then sends no last will).
    func offlineMessage() -> (topic: String, payload: [UInt8]) {
        var m = FleetStatus(msgId: FleetTime.messageId(), ts: FleetTime.string(), state: "offline", device: topics.device)
        m.agentVersion = agentVersion
        return (topics.status, [UInt8](APIServer.encode(m)))
    }

    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let parts = text.split(separator: " ")
        guard parts.count > 1, let pages = Int(parts[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    static func cpuSeconds() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
    }
}

/// Runs the fleet link: the client's events and a one-second tick, both on the link's queue. With
/// no broker it only keeps the outbox within its bound. It stops last (first in the service list):
/// the goodbye goes out after everything else has stopped.
struct FleetService: Service {
    let agent: Agent

    func run() async throws {
        guard let link = agent.fleet else { return }
        guard let client = link.client else {
            // No broker: only the outbox's bound and its size for status, every 5 s (in 0.1 s steps:
            // a sleep does not end at a graceful stop, and a stop must not wait a second for it).
            var step = 0
            while !Task.isShuttingDownGracefully && !Task.isCancelled {
                if step % 50 == 0 { await Blocking.run(on: link.queue) { link.tick() } }
                step += 1
                try? await Task.sleep(for: .milliseconds(100))
            }
            return
        }
        client.start()
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                for await event in client.events { await Blocking.run(on: link.queue) { link.handle(event) } }
            }
            tasks.addTask {
                while !Task.isCancelled {
                    await Blocking.run(on: link.queue) { link.tick() }
                    try? await Task.sleep(for: .seconds(1))
                }
            }
            try? await gracefulShutdown()
            // Whatever the other services logged while stopping leaves now, if it can.
            agent.writer.flush()
            await Blocking.run(on: link.queue) { link.pump() }
            // From here nothing else is published (a deployment finishing now must not say online).
            let goodbye = await Blocking.run(on: link.queue) { () -> (topic: String, payload: [UInt8]) in
                link.linkUp = false
                return link.offlineMessage()
            }
            await Blocking.run(on: DispatchQueue.global()) { client.stop(goodbye: goodbye, timeout: 5) }
            tasks.cancelAll()
        }
    }
}
