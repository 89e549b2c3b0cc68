import AgentAPI
@preconcurrency import Crypto
import Fleet
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Whole-process fleet tests: real agentd processes and a real mosquitto on a free loopback port.
@Suite(.serialized) struct FleetProcessTests {
    /// The operator's key pair, written by `agentctl keys generate`.
    static let keys: (dir: String, key: String, pub: String) = {
        let dir = temporaryDirectory("fleet-keys")
        let r = try! Agentctl.run(["keys", "generate", "--out", dir, "--name", "ops"])
        precondition(r.status == 0, r.stderr)
        return (dir, dir + "/ops.key", dir + "/ops.pub")
    }()

    /// A model far worse than the served one: its self-test on the replay memory fails.
    static let poorModel = Agentctl.trainedModel(name: "digits-poor", arch: "mlp:64-2-10", epochs: 1)
    /// A good new model (as accurate as the served one: the health gate lets it through; a
    /// weaker one sat at the edge of deploy.max_accuracy_drop and was rolled back under load).
    static let otherModel = Agentctl.trainedModel(name: "digits-other", arch: "mlp:64-64-10", epochs: 16)

    static func config(_ broker: Broker, fleet: String, device: String, extra: String = "", keys: [String] = [FleetProcessTests.keys.pub]) -> String {
        """
        [learn]
        auto = false
        [mqtt]
        broker = "\(broker.url)"
        fleet = "\(fleet)"
        device = "\(device)"
        groups = ["north"]
        telemetry_interval_s = 0.2
        \(extra)
        [deploy]
        trusted_keys = [\(keys.map { "\"\($0)\"" }.joined(separator: ", "))]
        health_seconds = 1
        """
    }

    static func fleetName() -> String { "f\(FleetTime.messageId().prefix(8))" }

    static func signing() throws -> SigningKey { try SigningKey.load(path: keys.key) }

    static func sha256(_ bytes: [UInt8]) -> String { SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined() }

    /// An envelope for `device` with the model at `path`, signed by the operator's key; `change` edits the manifest first.
    static func envelope(_ path: String, device: String, deployment: String, version: Int = 10,
                         change: (inout DeploymentManifest) -> Void = { _ in }) throws -> DeploymentEnvelope {
        let bytes = [UInt8](FileManager.default.contents(atPath: path)!)
        var m = DeploymentManifest(deployment: deployment, version: version, name: "m", sha256: sha256(bytes), size: bytes.count,
                                   target: "device:\(device)", expires: FleetTime.string(Date().addingTimeInterval(600)))
        change(&m)
        return try DeploymentEnvelope.signed(m, model: bytes, key: signing())
    }

    static func status(_ agent: AgentdProcess) throws -> StatusResponse {
        let r = try agent.agentctl(["status", "--json"])
        return try JSONDecoder().decode(StatusResponse.self, from: Data(r.stdout.utf8))
    }

    /// Waits for the device's retained status to say online: it subscribes to its topics before it
    /// says so, so a message published after this reaches it (one published before may not).
    static func waitOnline(_ session: MQTTSession, fleet: String, device: String) throws {
        let statusTopic = "edge/\(fleet)/\(device)/status"
        try session.subscribe([statusTopic])
        #expect(session.wait(for: statusTopic, seconds: 60) { session.json($0)["state"] as? String == "online" } != nil, "\(device) never online")
    }

    /// Publishes `envelope` once the device is online and returns the device's result for it.
    static func deploy(_ session: MQTTSession, fleet: String, device: String, _ e: DeploymentEnvelope, payload: [UInt8]? = nil,
                       deployment: String) throws -> [String: Any]? {
        let resultTopic = "edge/\(fleet)/\(device)/model/deploy/result"
        try waitOnline(session, fleet: fleet, device: device)
        try session.subscribe([resultTopic])
        try session.publish(topic: "edge/\(fleet)/\(device)/model/deploy", payload: payload ?? [UInt8](try JSONEncoder().encode(e)))
        let m = session.wait(for: resultTopic, seconds: 60) { m in (session.json(m)["deployment"] as? String) == deployment }
        return m.map { session.json($0) }
    }

    // MARK: presence

    @Test func presenceIsRetainedAndTheLastWillSaysOfflineAfterKill9() throws {
        let broker = try Broker()
        let fleet = Self.fleetName()
        let agent = try AgentdProcess(config: Self.config(broker, fleet: fleet, device: "d1"))
        #expect(agent.waitForNotification("READY=1") != nil)
        let session = try broker.session()
        defer { session.close() }
        try session.subscribe(["edge/\(fleet)/+/status"])
        let online = session.wait(for: "edge/\(fleet)/d1/status") { session.json($0)["state"] as? String == "online" }
        #expect(online != nil)
        #expect(online.map { session.json($0)["model_version"] as? Int } == 1)
        #expect(online?.payload.isEmpty == false && online.map { session.json($0)["msg_id"] != nil && session.json($0)["ts"] != nil } == true)
        // A newcomer reads it retained.
        let later = try broker.session()
        defer { later.close() }
        try later.subscribe(["edge/\(fleet)/d1/status"])
        #expect(later.wait(for: "edge/\(fleet)/d1/status", seconds: 5).map { $0.retained } == true)
        #expect(try Self.status(agent).fleet?.state == "connected")
        agent.signal(SIGKILL)
        _ = agent.waitForExit()
        // The broker notices within 1.5 keepalives at most; it closes the socket at once on a kill.
        let will = session.wait(for: "edge/\(fleet)/d1/status", seconds: 60) { session.json($0)["state"] as? String == "offline" }
        #expect(will != nil, "the last will was not published")
    }

    @Test func aCleanStopPublishesOffline() throws {
        let broker = try Broker()
        let fleet = Self.fleetName()
        let agent = try AgentdProcess(config: Self.config(broker, fleet: fleet, device: "d1"))
        let session = try broker.session()
        defer { session.close() }
        try session.subscribe(["edge/\(fleet)/d1/status"])
        #expect(session.wait(for: "edge/\(fleet)/d1/status") { session.json($0)["state"] as? String == "online" } != nil)
        usleep(1_100_000)
        let stopped = FleetTime.string(Date().addingTimeInterval(-0.5))
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
        let last = session.wait(for: "edge/\(fleet)/d1/status", seconds: 10) { session.json($0)["state"] as? String == "offline" }
        // The goodbye, not the last will: made at the stop (the will's ts is the connection's).
        #expect(last.map { (session.json($0)["ts"] as? String ?? "") >= stopped } == true, "the offline message is not the goodbye")
        // The retained message a newcomer reads is the goodbye.
        let later = try broker.session()
        defer { later.close() }
        try later.subscribe(["edge/\(fleet)/d1/status"])
        #expect(later.wait(for: "edge/\(fleet)/d1/status", seconds: 5).map { later.json($0)["state"] as? String } == "offline")
    }

    // MARK: the outbox

    /// Telemetry every 0.2 s and an event (a drift reset through the local API) during each of 20
    /// broker restarts: every telemetry sequence number and every event id arrives.
    @Test func nothingIsLostOverTwentyBrokerRestarts() throws {
        let broker = try Broker()
        let fleet = Self.fleetName()
        // A persistent session, subscribed before the agent starts: the broker keeps what arrives
        // for it while it reconnects.
        let collector = try broker.session(clientId: "collector-\(fleet)")
        try collector.subscribe(["edge/\(fleet)/d1/telemetry", "edge/\(fleet)/d1/events"])
        let agent = try AgentdProcess(config: Self.config(broker, fleet: fleet, device: "d1"))
        #expect(agent.waitForNotification("READY=1") != nil)
        var seqs = Set<Int>(), events = Set<Int>()
        func collect() {
            for m in collector.drain() {
                let j = collector.json(m)
                if m.topic.hasSuffix("/telemetry"), let s = j["seq"] as? Int { seqs.insert(s) }
                if m.topic.hasSuffix("/events"), let id = j["id"] as? Int { events.insert(id) }
            }
        }
        for _ in 0..<20 {
            usleep(300_000)
            broker.stop()
            // Made while the broker is away: kept in the outbox.
            _ = try agent.agentctl(["drift", "reset"])
            usleep(400_000)
            try broker.restart()
            collect()
        }
        // Everything made so far leaves once the link is back.
        let events1 = try agent.client.events(limit: 1000).events.map { Int($0.id) }
        let until = Date().addingTimeInterval(60)
        while Date() < until {
            collect()
            let outbox = try Self.status(agent).fleet?.outboxRows ?? -1
            if outbox == 0 && Set(events1).isSubset(of: events) && !seqs.isEmpty && seqs.count == seqs.max()! { break }
            usleep(200_000)
        }
        collector.close()
        // Every acknowledged row left the outbox.
        #expect(try Self.status(agent).fleet?.outboxRows == 0)
        let missingEvents = Set(events1).subtracting(events)
        #expect(missingEvents.isEmpty, "events never received: \(missingEvents.sorted())")
        #expect(events1.filter { _ in true }.count >= 20)
        let maxSeq = seqs.max() ?? 0
        let missingSeq = Set(1...max(maxSeq, 1)).subtracting(seqs)
        #expect(maxSeq >= 10 && missingSeq.isEmpty, "telemetry seq never received: \(missingSeq.sorted().prefix(20)) of \(maxSeq)")
        #expect(try Self.status(agent).fleet?.outboxDropped == 0)
    }

    /// Events made while the broker is away, then kill -9: the restarted agent sends every one.
    @Test func queuedEventsSurviveKill9() throws {
        let broker = try Broker()
        let fleet = Self.fleetName()
        let collector = try broker.session(clientId: "collector-\(fleet)")
        defer { collector.close() }
        try collector.subscribe(["edge/\(fleet)/d1/events"])
        let config = Self.config(broker, fleet: fleet, device: "d1")
        let agent = try AgentdProcess(config: config)
        #expect(agent.waitForNotification("READY=1") != nil)
        broker.stop()
        for _ in 0..<10 { _ = try agent.agentctl(["drift", "reset"]) }
        let made = Set(try agent.client.events(limit: 1000).events.map { Int($0.id) })
        agent.signal(SIGKILL)
        _ = agent.waitForExit()
        let restarted = try AgentdProcess(config: config, dir: agent.dir)
        #expect(restarted.waitForNotification("READY=1") != nil)
        try broker.restart()
        var received = Set<Int>()
        let until = Date().addingTimeInterval(60)
        while !made.isSubset(of: received), let m = collector.next(until: until) {
            if let id = collector.json(m)["id"] as? Int { received.insert(id) }
        }
        #expect(made.count >= 10)
        #expect(made.subtracting(received).isEmpty, "events lost across kill -9: \(made.subtracting(received).sorted())")
    }

    @Test func withoutABrokerTheOutboxKeepsEventsAndBoundsItself() throws {
        let agent = try AgentdProcess(config: "[mqtt]\noutbox_bytes = 65536\n")
        #expect(agent.waitForNotification("READY=1") != nil)
        for _ in 0..<5 { _ = try agent.agentctl(["drift", "reset"]) }
        var s = try Self.status(agent)
        let until = Date().addingTimeInterval(20)
        while (s.fleet?.outboxRows ?? 0) < 5 && Date() < until {
            usleep(500_000)
            s = try Self.status(agent)
        }
        #expect(s.mqtt.state == "not-configured")
        #expect((s.fleet?.outboxRows ?? 0) >= 5, "the outbox keeps the events made while no broker is configured")
    }

    // MARK: commands

    @Test func aDuplicateCommandRunsOnceAndBadOnesAreRefusedWithAReason() throws {
        let broker = try Broker()
        let fleet = Self.fleetName()
        let agent = try AgentdProcess(config: Self.config(broker, fleet: fleet, device: "d1"))
        #expect(agent.waitForNotification("READY=1") != nil)
        let session = try broker.session()
        defer { session.close() }
        let replies = "edge/\(fleet)/operator/test-replies"
        try session.subscribe([replies, "edge/\(fleet)/d1/status"])
        #expect(session.wait(for: "edge/\(fleet)/d1/status") { session.json($0)["state"] as? String == "online" } != nil)
        let before = try Self.status(agent).feedbackSamples
        let cmd = Fleet.FleetCommand(args: ["label": .string("3"), "input": .array((0..<64).map { .number(Double($0 % 16)) })])
        let payload = [UInt8](try JSONEncoder().encode(cmd))
        func ask(_ verb: String, _ payload: [UInt8], to device: String = "d1") throws -> [String: Any]? {
            let correlation = Array(FleetTime.messageId().utf8)
            try session.publish(topic: "edge/\(fleet)/\(device)/cmd/\(verb)", payload: payload, responseTopic: replies, correlation: correlation)
            return session.wait(for: replies, seconds: 20) { $0.correlationData == correlation }.map { session.json($0) }
        }
        let first = try ask("feedback", payload)
        #expect(first?["status"] as? String == "ok")
        #expect(first?["in_reply_to"] as? String == cmd.msgId)
        // The same msg_id again, as a QoS 1 redelivery would bring it: answered, not run.
        let second = try ask("feedback", payload)
        #expect(second?["status"] as? String == "ok")
        #expect(second?["duplicate"] as? Bool == true)
        #expect(try Self.status(agent).feedbackSamples == before + 1)
        // Through the fleet-wide and group addresses too.
        let viaGroup = try ask("status", [UInt8](try JSONEncoder().encode(Fleet.FleetCommand())), to: "group/north")
        #expect(viaGroup?["status"] as? String == "ok")
        let viaAll = try ask("pause-learning", [UInt8](try JSONEncoder().encode(Fleet.FleetCommand())), to: "all")
        #expect(viaAll?["status"] as? String == "ok")
        #expect(try Self.status(agent).learner.detail?.contains("paused") == true)
        // Stale, malformed, unknown verb, wrong arguments: refused with the reason.
        let stale = Fleet.FleetCommand(ts: FleetTime.string(Date().addingTimeInterval(-7200)))
        #expect((try ask("status", [UInt8](try JSONEncoder().encode(stale)))?["reason"] as? String)?.hasPrefix("stale") == true)
        for bad in ["", "null", "{}", "{\"msg_id\": 5}", "[1]", String(repeating: "{", count: 50_000), "\u{0}\u{1}"] {
            let r = try ask("status", Array(bad.utf8))
            #expect(r?["status"] as? String == "refused" && (r?["reason"] as? String)?.hasPrefix("malformed") == true, "\(bad.prefix(20))")
        }
        #expect((try ask("self-destruct", [UInt8](try JSONEncoder().encode(Fleet.FleetCommand())))?["reason"] as? String)?.hasPrefix("unknown verb") == true)
        let badRollback = Fleet.FleetCommand(args: ["version": .string("latest")])
        #expect((try ask("rollback", [UInt8](try JSONEncoder().encode(badRollback)))?["reason"] as? String)?.hasPrefix("unsigned") == true)
        let badFeedback = Fleet.FleetCommand(args: ["label": .string("3"), "input": .array([.number(1)])])
        #expect((try ask("feedback", [UInt8](try JSONEncoder().encode(badFeedback)))?["reason"] as? String)?.contains("64") == true)
        // A huge payload is refused before it is parsed.
        #expect((try ask("status", [UInt8](repeating: 0x20, count: 300_000))?["reason"] as? String)?.hasPrefix("malformed: 300000 bytes") == true)
        // A response topic aimed at the fleet's own command topics is not used: the reply goes to the reply topic.
        try session.subscribe(["edge/\(fleet)/d1/cmd/status/reply", "edge/\(fleet)/all/cmd/drift-reset"])
        let relay = Fleet.FleetCommand()
        try session.publish(topic: "edge/\(fleet)/d1/cmd/status", payload: [UInt8](try JSONEncoder().encode(relay)),
                            responseTopic: "edge/\(fleet)/all/cmd/drift-reset")
        let landed = session.wait(for: "edge/\(fleet)/d1/cmd/status/reply") { session.json($0)["in_reply_to"] as? String == relay.msgId }
        #expect(landed != nil)
        #expect(session.drain().allSatisfy { !$0.topic.hasSuffix("/all/cmd/drift-reset") })
        // Still serving, and the operator's CLI gets the same answers.
        let r = try Agentctl.run(["fleet", "cmd", "d1", "status", "--broker", broker.url, "--fleet", fleet, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("\"status\":\"ok\""))
        #expect(try Self.status(agent).state == "serving")
    }

    @Test func mqtt311RepliesGoToTheReplyTopic() throws {
        let broker = try Broker()
        let fleet = Self.fleetName()
        let agent = try AgentdProcess(config: Self.config(broker, fleet: fleet, device: "d1", extra: "protocol = \"3.1.1\""))
        #expect(agent.waitForNotification("READY=1") != nil)
        let session = try broker.session()
        defer { session.close() }
        try session.subscribe(["edge/\(fleet)/d1/cmd/status/reply", "edge/\(fleet)/d1/status"])
        #expect(session.wait(for: "edge/\(fleet)/d1/status") != nil)
        let cmd = Fleet.FleetCommand()
        try session.publish(topic: "edge/\(fleet)/d1/cmd/status", payload: [UInt8](try JSONEncoder().encode(cmd)))
        let reply = session.wait(for: "edge/\(fleet)/d1/cmd/status/reply") { session.json($0)["in_reply_to"] as? String == cmd.msgId }
        #expect(reply != nil)
        #expect(try Self.status(agent).fleet?.protocolVersion == "3.1.1")
    }

    // MARK: deployments

    @Test func aSignedDeploymentIsAppliedAndReportedEverywhere() throws {
        let broker = try Broker()
        let fleet = Self.fleetName()
        let agent = try AgentdProcess(config: Self.config(broker, fleet: fleet, device: "d1"), model: LearnProcessTests.prepared)
        #expect(agent.waitForNotification("READY=1") != nil)
        let session = try broker.session()
        defer { session.close() }
        let e = try Self.envelope(Self.otherModel, device: "d1", deployment: "good")
        let result = try Self.deploy(session, fleet: fleet, device: "d1", e, deployment: "good")
        #expect(result?["status"] as? String == "applied", "\(String(describing: result))")
        #expect(result?["version"] as? Int == 10 && result?["msg_id"] != nil && result?["ts"] != nil)
        let s = try Self.status(agent)
        #expect(s.model?.version == 2)
        #expect(s.fleet?.lastDeployment?.contains("applied") == true)
        let events = try agent.client.events(limit: 50).events.map(\.kind)
        #expect(events.contains("deploy_applied") && events.contains("model_deployed"))
        // The same deployment again is not newer.
        let again = try Self.deploy(session, fleet: fleet, device: "d1", e, deployment: "good")
        #expect((again?["reason"] as? String)?.hasPrefix("not_newer") == true)
        // An operator's rollback is signed; unsigned it is refused.
        let unsigned = try Agentctl.run(["fleet", "cmd", "d1", "rollback", "--args", "{\"version\": 1}", "--broker", broker.url, "--fleet", fleet])
        #expect(unsigned.status == 1)
        #expect(unsigned.stderr.contains("--key"), "\(unsigned.stderr)")
        let rolled = try Agentctl.run(["fleet", "cmd", "d1", "rollback", "--key", Self.keys.key, "--to", "1", "--version", "11",
                                       "--broker", broker.url, "--fleet", fleet])
        #expect(rolled.status == 0, "\(rolled.stdout) \(rolled.stderr)")
        #expect(try Self.status(agent).model?.version == 1)
        // Signed with the same counter value again: refused.
        let replayed = try Agentctl.run(["fleet", "cmd", "d1", "rollback", "--key", Self.keys.key, "--to", "2", "--version", "11",
                                         "--broker", broker.url, "--fleet", fleet])
        #expect(replayed.status == 1 && replayed.stdout.contains("not_newer"), "\(replayed.stdout)")
        // The counter survives a restart.
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
        let restarted = try AgentdProcess(config: Self.config(broker, fleet: fleet, device: "d1"), dir: agent.dir)
        #expect(restarted.waitForNotification("READY=1") != nil)
        let replay = try Self.envelope(Self.otherModel, device: "d1", deployment: "replayed", version: 11)
        #expect((try Self.deploy(session, fleet: fleet, device: "d1", replay, deployment: "replayed")?["reason"] as? String)?.hasPrefix("not_newer") == true)
    }

    /// One refusal per case: nothing changes, and the result names the reason.
    static let refusals: [(String, String)] = [
        ("unsigned", "unsigned"), ("unknown_key", "unknown_key"), ("bad_signature", "bad_signature"), ("tampered_manifest", "bad_signature"),
        ("tampered_model", "tampered"), ("not_newer", "not_newer"), ("expired", "expired"), ("wrong_device", "wrong_target"),
        ("wrong_group", "wrong_target"), ("wrong_hardware", "wrong_hardware"), ("agent_too_old", "agent_too_old"), ("oversize", "oversize"),
        ("invalid_model", "invalid_model"), ("malformed", "malformed"),
    ]

    static let shared: (Broker, AgentdProcess, String) = {
        let broker = try! Broker()
        let fleet = fleetName()
        let agent = try! AgentdProcess(config: config(broker, fleet: fleet, device: "d1", extra: "", keys: [keys.pub]) + "\nmax_model_bytes = 200000\n")
        _ = agent.waitForNotification("READY=1")
        return (broker, agent, fleet)
    }()

    @Test(arguments: refusals) func aDeploymentIsRefused(_ c: (String, String)) throws {
        let (broker, agent, fleet) = Self.shared
        let session = try broker.session()
        defer { session.close() }
        let name = "refuse-\(c.0)"
        var e = try Self.envelope(Self.otherModel, device: "d1", deployment: name)
        var payload: [UInt8]?
        switch c.0 {
        case "unsigned": e.signature = nil
        case "unknown_key": e.key = "intruder"
        case "bad_signature":
            let intruder = SigningKey(name: "ops", privateKey: Curve25519.Signing.PrivateKey())
            e = try DeploymentEnvelope.signed(try JSONDecoder().decode(DeploymentManifest.self, from: Data(base64Encoded: e.manifest)!), model: nil, key: intruder)
            e.model = try Self.envelope(Self.otherModel, device: "d1", deployment: name).model
        case "tampered_manifest":
            var m = try JSONDecoder().decode(DeploymentManifest.self, from: Data(base64Encoded: e.manifest)!)
            m.target = "all"
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            e.manifest = try encoder.encode(m).base64EncodedString()
        case "tampered_model":
            var bytes = [UInt8](Data(base64Encoded: e.model!)!)
            bytes[bytes.count / 2] ^= 0xFF
            e.model = Data(bytes).base64EncodedString()
        case "not_newer": e = try Self.envelope(Self.otherModel, device: "d1", deployment: name, version: 0)
        case "expired": e = try Self.envelope(Self.otherModel, device: "d1", deployment: name) { $0.expires = FleetTime.string(Date().addingTimeInterval(-60)) }
        case "wrong_device": e = try Self.envelope(Self.otherModel, device: "d1", deployment: name) { $0.target = "device:d2" }
        case "wrong_group": e = try Self.envelope(Self.otherModel, device: "d1", deployment: name) { $0.target = "group:south" }
        case "wrong_hardware":
            e = try Self.envelope(Self.otherModel, device: "d1", deployment: name) { $0.hardware = DeploymentVerifier.machineHardware == "x86_64" ? "aarch64" : "x86_64" }
        case "agent_too_old": e = try Self.envelope(Self.otherModel, device: "d1", deployment: name) { $0.minAgentVersion = "99.0" }
        case "oversize": e = try Self.envelope(Self.otherModel, device: "d1", deployment: name) { $0.size = 10_000_000 }
        case "invalid_model":
            let dir = temporaryDirectory("invalid")
            let junk = Array("not a safetensors file".utf8)
            FileManager.default.createFile(atPath: dir + "/junk", contents: Data(junk))
            e = try Self.envelope(dir + "/junk", device: "d1", deployment: name)
        case "malformed":
            // Signed, but the manifest lacks fields: refused with the deployment unknown, so send a
            // readable name through a second copy of the manifest is not possible; the result has none.
            payload = Array("{\"msg_id\": \"x\", \"manifest\": 12}".utf8)
        default: Issue.record("unknown case")
        }
        if c.0 == "malformed" {
            let resultTopic = "edge/\(fleet)/d1/model/deploy/result"
            try session.subscribe([resultTopic])
            try session.publish(topic: "edge/\(fleet)/d1/model/deploy", payload: payload!)
            let r = session.wait(for: resultTopic, seconds: 30) { (session.json($0)["reason"] as? String)?.hasPrefix("malformed") == true }
            #expect(r.map { session.json($0)["status"] as? String } == "refused")
            return
        }
        let before = try Self.status(agent).model?.version
        let result = try Self.deploy(session, fleet: fleet, device: "d1", e, deployment: name)
        #expect(result?["status"] as? String == "refused", "\(String(describing: result))")
        #expect((result?["reason"] as? String)?.hasPrefix(c.1) == true, "\(String(describing: result?["reason"]))")
        #expect(try Self.status(agent).model?.version == before)
        #expect(try agent.client.events(limit: 100).events.contains { $0.kind == "deploy_refused" && $0.message.contains(name) })
    }

    @Test func theHealthGateRollsBackAModelThatFailsItsSelfTest() throws {
        let broker = try Broker()
        let fleet = Self.fleetName()
        let agent = try AgentdProcess(config: Self.config(broker, fleet: fleet, device: "d1"), model: LearnProcessTests.prepared)
        #expect(agent.waitForNotification("READY=1") != nil)
        let session = try broker.session()
        defer { session.close() }
        let e = try Self.envelope(Self.poorModel, device: "d1", deployment: "poor")
        let result = try Self.deploy(session, fleet: fleet, device: "d1", e, deployment: "poor")
        #expect(result?["status"] as? String == "rolled_back", "\(String(describing: result))")
        #expect((result?["reason"] as? String)?.contains("self-test") == true)
        #expect(result?["model_version"] as? Int == 1)
        let s = try Self.status(agent)
        #expect(s.model?.version == 1)
        let kinds = try agent.client.events(limit: 50).events.map(\.kind)
        #expect(kinds.contains("rollback") && kinds.contains("deploy_rolled_back"))
    }

    /// kill -9 while the health gate runs: the deployment never passed it, so the next start
    /// rolls it back and publishes the outcome; the counter stays moved and a newer one goes in.
    @Test func aKill9DuringTheHealthGateRollsBackAtTheNextStart() throws {
        let broker = try Broker()
        let fleet = Self.fleetName()
        let config = Self.config(broker, fleet: fleet, device: "d1")
        let agent = try AgentdProcess(config: config.replacingOccurrences(of: "health_seconds = 1", with: "health_seconds = 120"),
                                      model: LearnProcessTests.prepared)
        #expect(agent.waitForNotification("READY=1") != nil)
        let session = try broker.session()
        defer { session.close() }
        let resultTopic = "edge/\(fleet)/d1/model/deploy/result"
        try session.subscribe([resultTopic])
        let e = try Self.envelope(Self.otherModel, device: "d1", deployment: "cut")
        try Self.waitOnline(session, fleet: fleet, device: "d1")
        try session.publish(topic: "edge/\(fleet)/d1/model/deploy", payload: [UInt8](try JSONEncoder().encode(e)))
        let until = Date().addingTimeInterval(60)
        while (try? Self.status(agent).model?.version) != 2 && Date() < until { usleep(50_000) }
        #expect(try Self.status(agent).model?.version == 2, "the deployment was not installed")
        agent.signal(SIGKILL)
        _ = agent.waitForExit()
        let restarted = try AgentdProcess(config: config, model: LearnProcessTests.prepared, dir: agent.dir)
        #expect(restarted.waitForNotification("READY=1") != nil)
        let result = session.wait(for: resultTopic, seconds: 60) { session.json($0)["deployment"] as? String == "cut" }.map { session.json($0) }
        #expect(result?["status"] as? String == "rolled_back", "\(String(describing: result))")
        #expect((result?["reason"] as? String)?.hasPrefix("interrupted") == true)
        #expect(try Self.status(restarted).model?.version == 1)
        #expect((try Self.deploy(session, fleet: fleet, device: "d1", e, deployment: "cut")?["reason"] as? String)?.hasPrefix("not_newer") == true)
        let newer = try Self.envelope(Self.otherModel, device: "d1", deployment: "after", version: 11)
        #expect(try Self.deploy(session, fleet: fleet, device: "d1", newer, deployment: "after")?["status"] as? String == "applied")
    }

    /// kill -9 at several points of a deployment: the agent always comes back serving, on the old
    /// model or the new one, and a newer deployment still goes in.
    @Test func aKill9AnywhereInADeploymentLeavesAServingAgent() throws {
        let broker = try Broker()
        let fleet = Self.fleetName()
        let config = Self.config(broker, fleet: fleet, device: "d1")
        var agent = try AgentdProcess(config: config, model: LearnProcessTests.prepared)
        #expect(agent.waitForNotification("READY=1") != nil)
        let session = try broker.session()
        defer { session.close() }
        for (i, delay) in [0, 20_000, 80_000, 200_000, 600_000].enumerated() {
            let e = try Self.envelope(i % 2 == 0 ? Self.otherModel : LearnProcessTests.prepared, device: "d1", deployment: "k\(i)", version: 20 + i)
            try session.publish(topic: "edge/\(fleet)/d1/model/deploy", payload: [UInt8](try JSONEncoder().encode(e)))
            usleep(useconds_t(delay))
            agent.signal(SIGKILL)
            _ = agent.waitForExit()
            agent = try AgentdProcess(config: config, model: LearnProcessTests.prepared, dir: agent.dir)
            #expect(agent.waitForNotification("READY=1") != nil, "no READY after a kill \(delay) µs into deployment \(i)")
            var s = try Self.status(agent)
            #expect(s.state == "serving" && s.model != nil, "after a kill \(delay) µs into deployment \(i): \(s.state)")
            // One active version, and the one served. A deployment the broker redelivers to the
            // restarted agent may land between the two reads, so they must agree within a while.
            var models = try agent.client.models().models
            let until = Date().addingTimeInterval(20)
            while models.first(where: \.active)?.version != s.model?.version && Date() < until {
                usleep(100_000)
                s = try Self.status(agent)
                models = try agent.client.models().models
            }
            #expect(models.filter(\.active).count == 1 && models.first(where: \.active)?.version == s.model?.version,
                    "registry \(models.map { "\($0.version)\($0.active ? "*" : "")" }), serving \(s.model?.version ?? -1)")
        }
        let last = try Self.envelope(Self.otherModel, device: "d1", deployment: "final", version: 40)
        #expect(try Self.deploy(session, fleet: fleet, device: "d1", last, deployment: "final")?["status"] as? String == "applied")
    }

    /// Three agents; the first (the canary) does not trust the operator's key: the rollout halts
    /// there and the other two keep their model.
    @Test func aRolloutHaltsOnAFailingCanary() throws {
        let broker = try Broker()
        let fleet = Self.fleetName()
        let stranger = temporaryDirectory("stranger-keys")
        #expect(try Agentctl.run(["keys", "generate", "--out", stranger, "--name", "other"]).status == 0)
        let agents = try [("a-bad", [stranger + "/other.pub"]), ("b-ok", [Self.keys.pub]), ("c-ok", [Self.keys.pub])].map { device, keys in
            try AgentdProcess(config: Self.config(broker, fleet: fleet, device: device, keys: keys))
        }
        for a in agents { #expect(a.waitForNotification("READY=1") != nil) }
        // Each online in the retained status.
        let session = try broker.session()
        try session.subscribe(["edge/\(fleet)/+/status"])
        var online = Set<String>()
        let until = Date().addingTimeInterval(30)
        while online.count < 3, let m = session.next(until: until) {
            if session.json(m)["state"] as? String == "online" { online.insert(session.json(m)["device"] as? String ?? "") }
        }
        session.close()
        #expect(online.count == 3)
        let r = try Agentctl.run(["fleet", "deploy", Self.otherModel, "--key", Self.keys.key, "--broker", broker.url, "--fleet", fleet,
                                  "--target", "all", "--canary", "1", "--halt-on-failure", "1", "--wait", "30", "--json"])
        #expect(r.status == 1)
        let report = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        #expect(report?["halted"] as? Bool == true, "\(r.stdout) \(r.stderr)")
        let devices = (report?["devices"] as? [[String: Any]]) ?? []
        #expect(devices.first { $0["device"] as? String == "a-bad" }?["status"] as? String == "refused")
        #expect(devices.filter { $0["status"] as? String == "not_sent" }.count == 2)
        for a in agents { #expect(try Self.status(a).model?.version == 1) }
        // Without the failing device the same rollout goes through (canary, then the rest).
        let ok = try Agentctl.run(["fleet", "deploy", Self.otherModel, "--key", Self.keys.key, "--broker", broker.url, "--fleet", fleet,
                                   "--target", "device:b-ok", "--wait", "30"])
        #expect(ok.status == 0, "\(ok.stdout) \(ok.stderr)")
        #expect(try Self.status(agents[1]).model?.version == 2)
    }

    // MARK: TLS

    @Test func tlsWithClientCertificates() throws {
        let dir = temporaryDirectory("tls")
        func sh(_ args: [String]) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            p.arguments = args
            p.currentDirectoryURL = URL(fileURLWithPath: dir)
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.runToExit()
            #expect(p.terminationStatus == 0, "openssl \(args.joined(separator: " "))")
        }
        try sh(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca"])
        for name in ["server", "client"] {
            try sh(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(name).key", "-out", "\(name).csr", "-subj", "/CN=\(name == "server" ? "127.0.0.1" : "d1")"])
            try "subjectAltName=IP:127.0.0.1\n".write(toFile: dir + "/san.ext", atomically: true, encoding: .utf8)
            try sh(["x509", "-req", "-in", "\(name).csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "\(name).crt", "-days", "1",
                    "-extfile", "san.ext"])
        }
        let broker = try Broker(tlsFiles: (dir + "/ca.crt", dir + "/server.crt", dir + "/server.key"))
        let fleet = Self.fleetName()
        // The client certificate through systemd's credentials directory.
        let creds = temporaryDirectory("creds")
        try FileManager.default.copyItem(atPath: dir + "/client.key", toPath: creds + "/mqtt-key")
        let agent = try AgentdProcess(config: Self.config(broker, fleet: fleet, device: "d1", extra: """
            ca_file = "\(dir)/ca.crt"
            cert_file = "\(dir)/client.crt"
            key_file = "credential:mqtt-key"
            """), environment: ["CREDENTIALS_DIRECTORY": creds])
        #expect(agent.waitForNotification("READY=1") != nil)
        let session = try broker.session(tlsFiles: (dir + "/ca.crt", dir + "/client.crt", dir + "/client.key"))
        defer { session.close() }
        try session.subscribe(["edge/\(fleet)/d1/status"])
        #expect(session.wait(for: "edge/\(fleet)/d1/status") { session.json($0)["state"] as? String == "online" } != nil)
        // Without a client certificate the broker refuses the agent; it keeps serving and says why.
        let refused = try AgentdProcess(config: Self.config(broker, fleet: fleet, device: "d2", extra: "ca_file = \"\(dir)/ca.crt\""))
        #expect(refused.waitForNotification("READY=1") != nil)
        usleep(1_500_000)
        let s = try Self.status(refused)
        #expect(s.state == "serving" && s.fleet?.state != "connected")
    }
}
