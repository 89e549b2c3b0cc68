import AgentAPI
@preconcurrency import Crypto
import Fleet
import Foundation
import Learning
import Serving
import Store

/// Commands (`cmd/{verb}`) and signed deployments (`model/deploy`).
extension FleetLink {
    static let verbs = ["status", "learn", "pause-learning", "resume-learning", "rollback", "drift-reset", "reload", "feedback"]

    // MARK: commands (on `queue`)

    func command(verb: String, _ m: MQTTMessage) {
        let config = agent.config
        func answer(_ reply: FleetReply) -> [UInt8] {
            let bytes = [UInt8](APIServer.encode(reply))
            send(reply: bytes, verb: verb, to: m)
            return bytes
        }
        guard m.payload.count <= Self.maxCommandBytes else {
            _ = answer(FleetReply(inReplyTo: "", device: topics.device, verb: verb, status: "refused",
                                  reason: "malformed: \(m.payload.count) bytes; a command is at most \(Self.maxCommandBytes)"))
            return
        }
        guard let cmd = try? JSONDecoder().decode(FleetCommand.self, from: Data(m.payload)), !cmd.msgId.isEmpty, cmd.msgId.utf8.count <= 128 else {
            _ = answer(FleetReply(inReplyTo: "", device: topics.device, verb: verb, status: "refused",
                                  reason: "malformed: expected {\"msg_id\": \"...\" (1 to 128 bytes), \"ts\": \"ISO 8601\", \"args\": {...}}"))
            return
        }
        guard let ts = FleetTime.parse(cmd.ts) else {
            _ = answer(FleetReply(inReplyTo: cmd.msgId, device: topics.device, verb: verb, status: "refused",
                                  reason: "malformed: ts '\(cmd.ts.prefix(64))' is not an ISO 8601 time"))
            return
        }
        let age = Date().timeIntervalSince(ts)
        guard abs(age) <= config.mqtt.commandTtlS else {
            _ = answer(FleetReply(inReplyTo: cmd.msgId, device: topics.device, verb: verb, status: "refused",
                                  reason: "stale: sent \(Int(age)) s ago; commands older than mqtt.command_ttl_s (\(Int(config.mqtt.commandTtlS)) s) are not run"))
            return
        }
        guard Self.verbs.contains(verb) else {
            _ = answer(FleetReply(inReplyTo: cmd.msgId, device: topics.device, verb: verb, status: "refused",
                                  reason: "unknown verb '\(verb.prefix(64))' (known: \(Self.verbs.joined(separator: ", ")))"))
            return
        }
        let claim: AgentDatabase.CommandClaim
        do {
            claim = try agent.database.claimCommand(msgId: cmd.msgId, verb: verb)
        } catch {
            _ = answer(FleetReply(inReplyTo: cmd.msgId, device: topics.device, verb: verb, status: "failed",
                                  reason: "not run: \(StoreError(error))"))
            return
        }
        switch claim {
        case .answered(let bytes):
            // A redelivery (QoS 1) of a command already run: its first answer, marked, not a second run.
            var reply = (try? JSONDecoder().decode(FleetReply.self, from: Data(bytes)))
                ?? FleetReply(inReplyTo: cmd.msgId, device: topics.device, verb: verb, status: "ok")
            reply.duplicate = true
            _ = answer(reply)
            return
        case .interrupted:
            var reply = FleetReply(inReplyTo: cmd.msgId, device: topics.device, verb: verb, status: "failed",
                                   reason: "agentd stopped while this command ran; it is not run again")
            reply.duplicate = true
            _ = answer(reply)
            return
        case .new:
            break
        }
        let reply = run(verb: verb, cmd)
        let bytes = answer(reply)
        do {
            try agent.database.recordReply(msgId: cmd.msgId, reply: bytes)
        } catch {
            logger.warning("command reply not recorded; a redelivery will be answered as interrupted", metadata: ["error": "\(error)"])
        }
        agent.writer.appendEvent(kind: "command", message: "\(verb) (\(cmd.msgId.prefix(40))): \(reply.status)\(reply.reason.map { ": \($0)" } ?? "")")
    }

    /// The MQTT 5 response topic when the command gave a usable one, else `{root}/cmd/{verb}/reply`.
    /// A response topic inside the fleet's tree is taken only under `{prefix}/{fleet}/operator/`:
    /// otherwise a reply could be aimed at `all/cmd/...` and arrive at every device as a command.
    private func send(reply: [UInt8], verb: String, to m: MQTTMessage) {
        var topic = topics.reply(verb: verb)
        if let r = m.responseTopic, Self.usableResponseTopic(r, fleetRoot: topics.fleetRoot, prefix: topics.prefix) { topic = r }
        guard let client else { return }
        if (try? client.publish(topic: topic, payload: reply, qos: 1, correlationData: m.correlationData)) != nil {
            publishBytes(reply.count + topic.utf8.count)
        }
    }

    static func usableResponseTopic(_ r: String, fleetRoot: String, prefix: String) -> Bool {
        guard !r.isEmpty, r.utf8.count <= 1024, !r.contains("+"), !r.contains("#"), !r.contains("\0"), !r.hasPrefix("$") else { return false }
        if r.hasPrefix(prefix + "/") { return r.hasPrefix(fleetRoot + "/operator/") }
        return true
    }

    private func run(verb: String, _ cmd: FleetCommand) -> FleetReply {
        func ok(_ result: FleetValue? = nil) -> FleetReply {
            FleetReply(inReplyTo: cmd.msgId, device: topics.device, verb: verb, status: "ok", result: result)
        }
        func refused(_ reason: String) -> FleetReply {
            FleetReply(inReplyTo: cmd.msgId, device: topics.device, verb: verb, status: "refused", reason: reason)
        }
        func failed(_ reason: String) -> FleetReply {
            FleetReply(inReplyTo: cmd.msgId, device: topics.device, verb: verb, status: "failed", reason: reason)
        }
        let args = cmd.args ?? [:]
        let agent = self.agent
        switch verb {
        case "status":
            return ok(.of(agent.status()))
        case "learn":
            let dryRun: Bool
            switch args["dry_run"] {
            case nil: dryRun = false
            case .bool(let b)?: dryRun = b
            default: return refused("malformed: args.dry_run must be true or false")
            }
            do {
                let id = try Blocking.learner.sync { try agent.learner.startJob(trigger: "mqtt", dryRun: dryRun) }
                return ok(.of(LearnStarted(job: id)))
            } catch let e as LearnRefusal {
                return refused(e.description)
            } catch {
                return failed("\(error)")
            }
        case "pause-learning", "resume-learning":
            do {
                try agent.learner.setAutoPaused(verb == "pause-learning")
                return ok(.object(["auto_paused": .bool(verb == "pause-learning")]))
            } catch {
                return failed("not saved: \(StoreError(error))")
            }
        case "rollback":
            // Signed like a deployment (kind "rollback", with the anti-rollback counter): an
            // unsigned command must not bring back a version the counter keeps out.
            guard case .string(let manifest)? = args["manifest"] else {
                return refused("unsigned: a rollback carries args {\"manifest\", \"signature\", \"key\"} signed like a deployment (agentctl fleet cmd DEVICE rollback --key KEY)")
            }
            let envelope = DeploymentEnvelope(msgId: cmd.msgId, ts: cmd.ts, manifest: manifest, signature: args["signature"]?.string,
                                              key: args["key"]?.string, model: nil)
            let verifier: DeploymentVerifier
            do {
                verifier = try makeVerifier(maxModelBytes: 0)
            } catch {
                return failed("the anti-rollback counter could not be read: \(StoreError(error))")
            }
            let signed: DeploymentManifest
            do {
                (signed, _) = try verifier.verify([UInt8](APIServer.encode(envelope)))
            } catch {
                return refused(error.description)
            }
            guard signed.kind == "rollback" else { return refused("malformed: the signed manifest is a \(signed.kind.prefix(32)), not a rollback") }
            do {
                guard try agent.database.advanceDeployVersion(to: signed.version) else { return refused("not_newer: version \(signed.version) was taken first") }
            } catch {
                return failed("the anti-rollback counter could not be written: \(StoreError(error))")
            }
            let adaptive = agent.config.model.adaptive
            do {
                let row = try Blocking.control.sync { try agent.models.rollback(to: signed.rollbackTo, adaptive: adaptive) }
                return ok(.object(["version": .number(Double(row.version)), "name": .string(row.name)]))
            } catch let e as ModelError {
                return refused(e.message)
            } catch {
                return failed("\(error)")
            }
        case "drift-reset":
            do {
                return ok(.of(try Blocking.control.sync { try agent.resetDrift() }))
            } catch {
                return failed("drift state not saved: \(error)")
            }
        case "reload":
            guard agent.configPath != nil else { return refused("agentd was started without a configuration file") }
            Blocking.control.sync { agent.reload() }
            // reload() records its outcome as the newest event.
            let last = agent.writer.recentEvents.last
            if last?.kind == "reload_failed" { return failed(last?.message ?? "reload failed") }
            return ok(.object(["message": .string(last?.message ?? "reloaded")]))
        case "feedback":
            guard let model = agent.models.slot.current else { return refused("no model is loaded") }
            guard let data = try? JSONEncoder().encode(args), let f = try? JSONDecoder().decode(FeedbackRequest.self, from: data) else {
                return refused("malformed: args must be {\"label\": \"...\", \"input\": [...]} or {\"label\": \"...\", \"id\": \"...\"}")
            }
            let sample: AgentDatabase.Feedback
            do {
                sample = try APIServer.feedbackSample(agent, f, model: model)
            } catch {
                return refused(error.message)
            }
            let done = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var outcome: StoreWriter.FeedbackResult = .failure(.closed)
            agent.writer.storeFeedback(sample) { result in
                outcome = result
                done.signal()
            }
            done.wait()
            switch outcome {
            case .success(let stored):
                agent.metrics.feedback.increment()
                return ok(.of(FeedbackResponse(stored: true, sampleId: stored.id, samples: stored.count)))
            case .failure(let e):
                return failed("not stored: \(e)")
            }
        default:
            return refused("unknown verb")
        }
    }

    /// The verifier for this device now: the trusted keys and the anti-rollback counter (throws when
    /// the counter cannot be read: the caller refuses, never assumes 0).
    func makeVerifier(maxModelBytes: Int) throws -> DeploymentVerifier {
        let lastVersion = Int(try agent.database.fleetValue(AgentDatabase.deployVersionKey) ?? "0") ?? 0
        lock.lock()
        let keys = trusted
        lock.unlock()
        return DeploymentVerifier(trusted: keys, lastVersion: lastVersion, device: topics.device, groups: topics.groups,
                                  hardware: DeploymentVerifier.machineHardware, agentVersion: agentVersion, maxModelBytes: maxModelBytes)
    }

    // MARK: deployments (on `deployQueue`)

    func refuseBusy(_ m: MQTTMessage) {
        finish(DeployResult(device: topics.device, deployment: Self.deploymentName(m.payload), status: "refused",
                            reason: "busy: two deployments are already waiting; send it again later", version: nil,
                            modelVersion: agent.models.slot.current?.version))
    }

    func deploy(_ m: MQTTMessage) {
        let config = agent.config
        let limit = config.deploy.maxModelBytes / 3 * 4 + (64 << 10)
        guard m.payload.count <= limit else {
            finish(DeployResult(device: topics.device, deployment: nil, status: "refused",
                                reason: "oversize: the message is \(m.payload.count) bytes; a deployment of at most deploy.max_model_bytes (\(config.deploy.maxModelBytes)) is \(limit)",
                                version: nil, modelVersion: agent.models.slot.current?.version))
            return
        }
        let verifier: DeploymentVerifier
        do {
            verifier = try makeVerifier(maxModelBytes: config.deploy.maxModelBytes)
        } catch {
            // Fail closed: without the counter an old deployment could be replayed.
            finish(DeployResult(device: topics.device, deployment: Self.deploymentName(m.payload), status: "refused",
                                reason: "failed: the anti-rollback counter could not be read: \(StoreError(error))", version: nil,
                                modelVersion: agent.models.slot.current?.version))
            return
        }
        let manifest: DeploymentManifest, model: [UInt8]
        do {
            (manifest, model) = try verifier.verify(m.payload)
        } catch {
            finish(DeployResult(device: topics.device, deployment: Self.deploymentName(m.payload), status: "refused", reason: error.description,
                                version: nil, modelVersion: agent.models.slot.current?.version))
            return
        }
        func result(_ status: String, _ reason: String?) -> DeployResult {
            DeployResult(device: topics.device, deployment: manifest.deployment, status: status, reason: reason, version: manifest.version,
                         modelVersion: agent.models.slot.current?.version)
        }
        /// Moves the anti-rollback counter to the manifest's version with `extra` in the same
        /// transaction; false (the refusal already sent) when another took it or the store failed.
        func advanceCounter(extra: [String: String]) -> Bool {
            do {
                guard try agent.database.advanceDeployVersion(to: manifest.version, extra: extra) else {
                    finish(result("refused", "not_newer: version \(manifest.version) was taken by another deployment first"))
                    return false
                }
                return true
            } catch {
                finish(result("refused", "failed: the anti-rollback counter could not be written: \(StoreError(error))"))
                return false
            }
        }
        if manifest.kind == "keyset" {
            let keys = manifest.keys ?? [:]
            guard advanceCounter(extra: [Self.trustedKeysKey: String(decoding: APIServer.encode(keys), as: UTF8.self)]) else { return }
            lock.lock()
            trusted = keys.compactMapValues { SigningKey.publicKey(base64: $0) }
            lock.unlock()
            finish(result("applied", "trusted keys now: \(keys.keys.sorted().joined(separator: ", "))"))
            return
        }
        // The counter moves first, checked and moved in one transaction: a redelivery or a replay
        // racing this one is refused, and a crash from here on never lets this version in twice.
        var pending = PendingDeployment(deployment: manifest.deployment, version: manifest.version,
                                        previous: (try? agent.database.activeModel())?.version, installed: nil)
        var record = String(decoding: APIServer.encode(pending), as: UTF8.self)
        guard advanceCounter(extra: [AgentDatabase.deployPendingKey: record]) else { return }
        // From here every outcome also clears this deployment's pending record.
        func done(_ status: String, _ reason: String?) { finish(result(status, reason), pending: record) }
        // The self-test's rows, and the serving model's accuracy on them, before anything changes.
        let before = selfTestRows()
        let beforeAccuracy = agent.models.slot.current.map { accuracy(of: $0, on: before) } ?? 0
        let installed: RegisteredModel, previous: Int?
        do {
            (installed, previous) = try Blocking.control.sync {
                try agent.models.installDeployment(bytes: model, source: "mqtt:\(manifest.deployment)", adaptive: config.model.adaptive)
            }
        } catch let e as ModelError {
            done("refused", "invalid_model: \(e.message)")
            return
        } catch {
            if let s = StoreError.from(error) {
                done("refused", "failed: \(s)")
            } else {
                done("refused", "invalid_model: \(error)")
            }
            return
        }
        // The installed version, so a restart during the gate undoes exactly this install.
        pending.installed = installed.version
        pending.previous = previous
        let installedRecord = String(decoding: APIServer.encode(pending), as: UTF8.self)
        if (try? agent.database.setFleetValue(AgentDatabase.deployPendingKey, installedRecord)) != nil { record = installedRecord }
        if let why = healthGate(installed: installed, rows: before, beforeAccuracy: beforeAccuracy, seconds: config.deploy.healthSeconds) {
            if case .superseded(let detail) = why {
                // Another change (an operator's rollback, a local update) replaced it: that change stands.
                done("applied", "superseded: \(detail)")
                return
            }
            var reason = "health_gate: \(why.description)"
            guard let previous else {
                done("applied", "\(reason); there is no earlier version to roll back to, so it keeps serving")
                return
            }
            do {
                let adaptive = agent.config.model.adaptive
                _ = try Blocking.control.sync { try agent.models.rollback(to: previous, adaptive: adaptive) }
            } catch {
                reason += "; the rollback to version \(previous) failed: \(error)"
            }
            done("rolled_back", reason)
            return
        }
        done("applied", nil)
    }

    /// A deployment between its counter move and its outcome, kept in `fleet_state` so a crash
    /// in between is settled at the next start.
    struct PendingDeployment: Codable {
        var deployment: String
        var version: Int
        /// The registry version active when it arrived: what a rollback restores.
        var previous: Int?
        /// The registry version it was installed as, once it is.
        var installed: Int?
    }

    /// At start, before any service runs: a deployment whose health gate never finished (agentd
    /// was killed or lost power during it) never passed, so it is undone, as an update that was
    /// never committed is undone at the next boot (Mender, RAUC); one that never got installed
    /// is reported refused. Either way the device publishes a result, so no rollout waits for it.
    func recoverInterruptedDeployment() {
        guard let text = try? agent.database.fleetValue(AgentDatabase.deployPendingKey) else { return }
        guard let p = try? JSONDecoder().decode(PendingDeployment.self, from: Data(text.utf8)) else {
            logger.error("unreadable pending deployment record; cleared", metadata: ["record": "\(text.prefix(200))"])
            finish(DeployResult(device: topics.device, deployment: nil, status: "refused", reason: "interrupted: its record was unreadable",
                                version: nil, modelVersion: agent.models.slot.current?.version), pending: text)
            return
        }
        func settle(_ status: String, _ reason: String) {
            finish(DeployResult(device: topics.device, deployment: p.deployment, status: status, reason: reason, version: p.version,
                                modelVersion: agent.models.slot.current?.version), pending: text)
        }
        let models = (try? agent.database.models()) ?? []
        let active = models.first(where: \.active)
        // Installed before the record said so (a crash between the two): the newest registration from it.
        let installed = p.installed ?? models.last(where: { $0.source == "mqtt:\(p.deployment)" && $0.version > (p.previous ?? 0) })?.version
        guard let installed, let active else {
            settle("refused", "interrupted: agentd stopped before the model was installed")
            return
        }
        guard active.version == installed else {
            settle(active.version == p.previous ? "rolled_back" : "applied",
                   "interrupted: agentd stopped after version \(installed) was installed; version \(active.version) is active")
            return
        }
        guard let previous = p.previous, previous != installed else {
            settle("applied", "interrupted: agentd stopped during the health gate; there is no earlier version to roll back to, so it keeps serving")
            return
        }
        do {
            let adaptive = agent.config.model.adaptive
            _ = try Blocking.control.sync { try agent.models.rollback(to: previous, adaptive: adaptive) }
            settle("rolled_back", "interrupted: agentd stopped during the health gate; version \(previous) restored")
        } catch {
            settle("applied", "interrupted: agentd stopped during the health gate and the rollback to version \(previous) failed: \(error)")
        }
    }

    /// The deployment name from a payload that did not verify (for the result), if it can be read.
    static func deploymentName(_ payload: [UInt8]) -> String? {
        guard let e = try? JSONDecoder().decode(DeploymentEnvelope.self, from: Data(payload)), let bytes = Data(base64Encoded: e.manifest),
              let m = try? JSONDecoder().decode(DeploymentManifest.self, from: bytes) else { return nil }
        return String(m.deployment.prefix(128))
    }

    /// Records the outcome: the result through the outbox, an event, the status line.
    /// `pending`: the pending record this outcome settles (cleared with it), nil for a message
    /// refused before it moved the counter.
    func finish(_ r: DeployResult, pending: String? = nil) {
        let line = "\(r.deployment ?? "?")\(r.version.map { " v\($0)" } ?? ""): \(r.status)\(r.reason.map { " (\($0))" } ?? "")"
        do {
            try agent.database.finishDeployment(result: [UInt8](APIServer.encode(r)), line: line, lineKey: Self.lastDeploymentKey, pending: pending)
        } catch {
            logger.error("deployment result not stored", metadata: ["error": "\(error)"])
        }
        lock.lock()
        lastDeployment = line
        lock.unlock()
        agent.writer.appendEvent(kind: r.status == "applied" ? "deploy_applied" : r.status == "rolled_back" ? "deploy_rolled_back" : "deploy_refused",
                                 message: line)
        logger.notice("deployment", metadata: ["outcome": "\(line)"])
        queue.async { self.publishStatus(force: true); self.pump() }
    }

    /// Labelled rows of the replay memory (at most 500): what the self-test scores.
    private func selfTestRows() -> [LearnSample] {
        guard let model = agent.models.slot.current,
              let rows = try? agent.database.replayRows(inputs: model.inputCount, classes: model.outputCount).rows else { return [] }
        return rows.compactMap { r in r.label.map { LearnSample(input: r.input, label: $0, logits: nil) } }.suffix(500)
    }

    private func accuracy(of model: ServingModel, on rows: [LearnSample]) -> Double {
        guard !rows.isEmpty, rows.allSatisfy({ $0.input.count == model.inputCount && ($0.label ?? -1) < model.outputCount }) else { return 0 }
        let correct = PlanClassifier(plan: model.makePlan(batch: 64)).correct(rows)
        return Double(correct.filter { $0 }.count) / Double(rows.count)
    }

    /// The health gate: the self-test on the replay memory's labelled rows (accuracy may fall by at
    /// most `deploy.max_accuracy_drop`), then `seconds` of serving with at most
    /// `deploy.max_error_rate` of requests answered with an error. nil when it passes.
    enum GateFailure: CustomStringConvertible {
        case failed(String)
        case superseded(String)
        var description: String {
            switch self {
            case .failed(let s), .superseded(let s): s
            }
        }
    }

    private func healthGate(installed: RegisteredModel, rows: [LearnSample], beforeAccuracy: Double, seconds: Double) -> GateFailure? {
        guard let model = agent.models.slot.current, model.version == installed.version else {
            return .superseded("version \(agent.models.slot.current?.version ?? 0) replaced it before the health gate")
        }
        let config = agent.config
        if rows.count >= 20 {
            guard rows.allSatisfy({ $0.input.count == model.inputCount && ($0.label ?? -1) < model.outputCount }) else {
                return .failed("the self-test rows do not fit the deployed model (\(model.inputCount) inputs, \(model.outputCount) classes)")
            }
            let after = accuracy(of: model, on: rows)
            if after < beforeAccuracy - config.deploy.maxAccuracyDrop {
                return .failed(String(format: "self-test accuracy %.3f on %d labelled replay rows; the model it replaced had %.3f (deploy.max_accuracy_drop %.3f)",
                                      after, rows.count, beforeAccuracy, config.deploy.maxAccuracyDrop))
            }
        }
        let start = agent.scheduler.snapshot
        let until = Date().addingTimeInterval(seconds)
        while Date() < until {
            Thread.sleep(forTimeInterval: min(0.25, max(0, until.timeIntervalSinceNow)))
            guard let now = agent.models.slot.current?.version, now == installed.version else {
                return .superseded("version \(agent.models.slot.current?.version ?? 0) replaced it during the health window")
            }
        }
        let end = agent.scheduler.snapshot
        let requests = end.requests - start.requests
        let errors = (end.deadlineExpired - start.deadlineExpired)
        if requests >= 20 && Double(errors) / Double(requests) > config.deploy.maxErrorRate {
            return .failed("\(errors) of \(requests) requests passed their deadline in the \(Int(seconds)) s health window (deploy.max_error_rate \(config.deploy.maxErrorRate))")
        }
        return nil
    }
}
