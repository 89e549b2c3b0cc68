import AgentAPI
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Whole-process on-device learning: labelled drifted rows sent to agentd through its socket,
/// `agentctl learn --wait`, the decision, the new version, and a kill -9 in the middle of an update.
@Suite(.serialized) struct LearnProcessTests {
    /// Digits rows with their labels, in file order.
    static let labelled: [(row: [Float], label: Int)] = {
        let text = try! String(contentsOfFile: Agentctl.digits, encoding: .utf8)
        return text.split(separator: "\n").dropFirst().map { line in
            let v = line.split(separator: ",")
            return (v.dropLast().map { Float($0)! }, Int(v.last!)!)
        }
    }()

    /// The drift: a fixed permutation of the 64 pixels (the model has never seen these features).
    static let permutation: [Int] = {
        var p = Array(0..<64)
        var state: UInt64 = 12345
        for i in stride(from: 63, to: 0, by: -1) {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            p.swapAt(i, Int((state >> 33) % UInt64(i + 1)))
        }
        return p
    }()

    static func drifted(_ r: ArraySlice<(row: [Float], label: Int)>) -> [(row: [Float], label: Int)] {
        r.map { s in (permutation.map { s.row[$0] }, s.label) }
    }

    /// The shared digits MLP, prepared (drift reference, EWC anchor, replay seed).
    static let prepared: String = {
        let out = temporaryDirectory("learn-prepared") + "/digits-field.safetensors"
        let r = try! Agentctl.run(["model", "prepare", AgentdProcess.model, "--data", Agentctl.digits, "--out", out, "--json"])
        precondition(r.status == 0, r.stderr)
        return out
    }()

    /// A wider MLP whose updates take seconds: long enough to be interrupted.
    static let slowPrepared: String = {
        let model = Agentctl.trainedModel(name: "digits-wide", arch: "mlp:64-512-512-10", epochs: 3)
        let out = temporaryDirectory("learn-wide") + "/wide-field.safetensors"
        let r = try! Agentctl.run(["model", "prepare", model, "--data", Agentctl.digits, "--out", out, "--json"])
        precondition(r.status == 0, r.stderr)
        return out
    }()

    static let config = "[learn]\nauto = false"

    func sendFeedback(_ agent: AgentdProcess, _ rows: [(row: [Float], label: Int)]) throws {
        let client = agent.client
        for r in rows { _ = try client.feedback(FeedbackRequest(input: r.row, label: String(r.label))) }
    }

    /// Accuracy of what agentd serves now.
    func accuracy(_ agent: AgentdProcess, _ rows: [(row: [Float], label: Int)]) throws -> Double {
        var correct = 0, start = 0
        while start < rows.count {
            let end = min(start + 64, rows.count)
            let r = try agent.client.infer(InferRequest(inputs: rows[start..<end].map(\.row)))
            for (i, result) in r.results.enumerated() where result.label == String(rows[start + i].label) { correct += 1 }
            start = end
        }
        return Double(correct) / Double(rows.count)
    }

    func learn(_ agent: AgentdProcess, _ extra: [String] = []) throws -> (status: Int32, json: [String: Any], stderr: String) {
        let r = try Agentctl.run(["learn", "--socket", agent.socket, "--wait", "--json"] + extra)
        let json = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
        return (r.status, json, r.stderr)
    }

    @Test func driftedLabelsGiveANewVersionBetterOnNewRowsAndNoWorseOnOld() throws {
        let agent = try AgentdProcess(config: Self.config, model: Self.prepared)
        try #require(agent.waitForNotification("READY=1") != nil, "log:\n\(agent.log)")
        // The seed from the file fills the replay memory at start.
        var replay = try agent.client.replay()
        #expect(replay.perSource["seed"] == 200 && replay.perClass.count == 10 && replay.newLabels == 0, "\(replay)")

        let heldOutOld = Array(Self.labelled[1200..<1500])
        let heldOutNew = Self.drifted(Self.labelled[1200..<1500])
        let oldBefore = try accuracy(agent, heldOutOld), newBefore = try accuracy(agent, heldOutNew)
        try sendFeedback(agent, Self.drifted(Self.labelled[0..<200]))
        #expect(try agent.client.replay().newLabels == 200)
        // A dry run decides and registers nothing, even when it would accept.
        let replayBefore = try agent.client.replay()
        let dry = try learn(agent, ["--dry-run"])
        #expect(dry.status == 0 && dry.json["decision"] as? String == "accepted", "\(dry.json)")
        #expect(dry.json["version"] is NSNull)
        #expect(try agent.client.models().models.count == 1)
        let replayAfter = try agent.client.replay()
        #expect(replayAfter.samples == replayBefore.samples && replayAfter.newLabels == replayBefore.newLabels)

        let r = try learn(agent)
        #expect(r.status == 0, "\(r.stderr)\n\(agent.log)")
        #expect(r.json["decision"] as? String == "accepted", "\(r.json)")
        #expect(r.json["version"] as? Int == 2)
        for key in ["before", "after", "steps", "seconds", "lambda", "alpha"] { #expect(r.json[key] != nil, "no \(key) in \(r.json)") }
        let before = try #require(r.json["before"] as? [String: Double]), after = try #require(r.json["after"] as? [String: Double])
        #expect(after["new_accuracy"]! >= before["new_accuracy"]! + 0.01)
        #expect(after["old_accuracy"]! >= before["old_accuracy"]! - 0.01)

        // agentd serves the new version: better on drifted rows it never saw, no worse on old ones.
        let status = try agent.client.status()
        #expect(status.model?.version == 2 && status.model?.precision == "int8", "\(String(describing: status.model))")
        let oldAfter = try accuracy(agent, heldOutOld), newAfter = try accuracy(agent, heldOutNew)
        #expect(newAfter > newBefore + 0.3, "drifted rows: \(newBefore) → \(newAfter)")
        #expect(oldAfter >= oldBefore - 0.02, "original rows: \(oldBefore) → \(oldAfter)")

        let models = try agent.client.models().models
        let v2 = try #require(models.first { $0.version == 2 })
        #expect(v2.active && v2.lineage == Lineage(base: 1, kind: "local_update", labels: 200, steps: r.json["steps"] as! Int))
        let table = try Agentctl.run(["models", "--socket", agent.socket])
        #expect(table.stdout.contains("local_update from v1: 200 labels"), "\(table.stdout)")
        // The labels joined the replay memory; none wait any more; the drift reference starts anew.
        replay = try agent.client.replay()
        #expect((replay.perSource["feedback"] ?? 0) > 0 && replay.newLabels == 0, "\(replay)")
        #expect(try agent.client.drift().state == "warming_up")
        let events = try agent.client.events(limit: 10).events.map(\.kind)
        #expect(events.contains("update_started") && events.contains("update_accepted"), "\(events)")
        #expect(try agent.client.status().learner.detail?.contains("accepted (version 2)") == true)

        // A local update rolls back like any version.
        let back = try Agentctl.run(["model", "rollback", "1", "--socket", agent.socket])
        #expect(back.status == 0 && back.stdout.contains("version 1"), "\(back.stderr)")
        #expect(abs(try accuracy(agent, heldOutOld) - oldBefore) < 1e-9)
    }

    @Test func undriftedLabelsAreNotNeededAndUnlearnableOnesAreRejected() throws {
        let agent = try AgentdProcess(config: Self.config, model: Self.prepared)
        try #require(agent.waitForNotification("READY=1") != nil, "log:\n\(agent.log)")
        // Rows like the training rows, correctly labelled: the model already does as well.
        try sendFeedback(agent, Array(Self.labelled[300..<360]))
        var r = try learn(agent)
        #expect(r.status == 0 && r.json["decision"] as? String == "not_needed", "\(r.json) \(r.stderr)")
        #expect(r.json.keys.contains("version") && r.json["version"] is NSNull)
        let first = r.json["job"] as? String
        // Labels that have nothing to do with the inputs: nothing learnt carries to the held-out share.
        var state: UInt64 = 99
        let noise = Self.drifted(Self.labelled[400..<560]).map { s -> (row: [Float], label: Int) in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return (s.row, Int((state >> 33) % 10))
        }
        try sendFeedback(agent, noise)
        r = try learn(agent)
        // A new job (the first one's outcome was once printed again: it looked ended while the
        // learner still counted it as running, and the new request got 409 busy).
        #expect(first != nil && r.json["job"] as? String != first, "\(r.json)")
        #expect(r.status == 0 && r.json["decision"] as? String == "rejected", "\(r.json) \(r.stderr)")
        let reason = try #require(r.json["reason"] as? String)
        #expect(reason.contains("gain") && reason.contains("needed") && reason.contains("forgetting"), "\(reason)")
        #expect(try agent.client.models().models.count == 1)
        #expect(try agent.client.status().model?.version == 1)
        let events = try agent.client.events(limit: 10).events
        #expect(events.contains { $0.kind == "update_not_needed" } && events.contains { $0.kind == "update_rejected" && $0.message.contains("gain") })
    }

    @Test func aSecondStartIsRefusedWhileOneRunsAndWaitWaitsForIt() throws {
        let agent = try AgentdProcess(config: Self.config, model: Self.slowPrepared)
        try #require(agent.waitForNotification("READY=1", timeout: 120) != nil, "log:\n\(agent.log)")
        try sendFeedback(agent, Self.drifted(Self.labelled[0..<200]))
        let first = try agent.client.learn(dryRun: true)
        do {
            _ = try agent.client.learn(dryRun: true)
            Issue.record("a second update started while one ran")
        } catch AgentClientError.http(let status, let code, let message) {
            #expect(status == 409 && code == "busy" && message.contains(first.job), "\(message)")
        }
        // Serving goes on while it learns.
        #expect(try agent.client.infer(InferRequest(inputs: [Self.labelled[0].row])).results.count == 1)
        let r = try learn(agent)
        #expect(r.status == 0 && r.json["job"] as? String == first.job, "\(r.json) \(r.stderr)")
        #expect(try agent.client.models().models.count == 1, "a dry run registered a version")
    }

    @Test func killNineDuringAnUpdateLosesNothing() throws {
        let dir = temporaryDirectory("learn-kill")
        var agent = try AgentdProcess(config: Self.config, model: Self.slowPrepared, dir: dir)
        try #require(agent.waitForNotification("READY=1", timeout: 120) != nil, "log:\n\(agent.log)")
        try sendFeedback(agent, Self.drifted(Self.labelled[0..<200]))
        let replayBefore = try agent.client.replay()
        let job = try agent.client.learn(dryRun: false).job
        // Kill once it is training (the update takes seconds on this model).
        let deadline = Date(timeIntervalSinceNow: 60)
        var seen: LearnJob?
        while Date() < deadline {
            seen = try agent.client.learnJob()
            if seen?.state != "running" || (seen?.step ?? 0) >= 50 { break }
            usleep(5_000)
        }
        try #require(seen?.state == "running", "the update ended before it could be interrupted: \(String(describing: seen))")
        agent.signal(SIGKILL)
        _ = agent.waitForExit()

        agent = try AgentdProcess(config: Self.config, model: Self.slowPrepared, dir: dir)
        try #require(agent.waitForNotification("READY=1", timeout: 120) != nil, "log:\n\(agent.log)")
        let after = try #require(try agent.client.learnJob())
        #expect(after.job == job && after.state == "interrupted", "\(after)")
        #expect(try agent.client.models().models.map(\.version) == [1])
        let replay = try agent.client.replay()
        #expect(replay.samples == replayBefore.samples && replay.newLabels == 200, "\(replay)")
        #expect(try agent.client.events(limit: 20).events.contains { $0.kind == "update_interrupted" && $0.message.contains(job) })
        // The labels are all still there: the update runs again and is accepted.
        let r = try learn(agent)
        #expect(r.status == 0 && r.json["decision"] as? String == "accepted", "\(r.json) \(r.stderr)")
        #expect(try agent.client.status().model?.version == 2)
    }

    @Test func hostileLearnRequestsAreRefusedWithOneLine() throws {
        let agent = try AgentdProcess(config: Self.config, model: Self.prepared)
        try #require(agent.waitForNotification("READY=1") != nil, "log:\n\(agent.log)")
        let client = agent.client
        for body in ["[1,2]", "{\"dry_run\": \"yes\"}", "nul", "{\"dry_run\": 1e999}"] {
            let r = try client.send("POST", "/v1/learn", body: Data(body.utf8))
            #expect(r.status == 400, "\(body): \(r.status)")
            let text = String(decoding: r.body, as: UTF8.self)
            #expect(text.contains("malformed") && !text.contains("\n"), "\(text)")
        }
        let big = try client.send("POST", "/v1/learn", body: Data(repeating: 0x20, count: 10_000))
        #expect(big.status == 413)
        // Too few labels: the job fails with the reason, nothing changes, agentd serves on.
        try sendFeedback(agent, Self.drifted(Self.labelled[0..<3]))
        let r = try learn(agent)
        #expect(r.status == 1 && r.json["state"] as? String == "failed", "\(r.json)")
        #expect((r.json["reason"] as? String)?.contains("at least 5 new labels") == true, "\(r.json)")
        #expect(try client.status().state == "serving")
        // One huge (finite) row among the drifted labels must not leave a served model that is
        // broken: the gate judges the re-quantized model as it would serve.
        let heldOutOld = Array(Self.labelled[1200..<1500])
        let oldBefore = try accuracy(agent, heldOutOld)
        try sendFeedback(agent, Self.drifted(Self.labelled[10..<110]) + [([Float](repeating: 1e6, count: 64), 3)])
        let outlier = try learn(agent)
        #expect(outlier.status == 0, "\(outlier.json)")
        #expect(["accepted", "rejected"].contains(outlier.json["decision"] as? String ?? ""), "\(outlier.json)")
        #expect(try accuracy(agent, heldOutOld) >= oldBefore - 0.02, "\(outlier.json)")
        // Feedback with a label the model does not have, or a wrong-length input, is refused at the door.
        #expect(throws: AgentClientError.self) { try client.feedback(FeedbackRequest(input: Self.labelled[0].row, label: "11")) }
        #expect(throws: AgentClientError.self) { try client.feedback(FeedbackRequest(input: [1, 2, 3], label: "1")) }
        // 1e39 is past Float's range: it would become inf and poison an update.
        let huge = "{\"input\": [" + Array(repeating: "1e39", count: 64).joined(separator: ",") + "], \"label\": \"1\"}"
        let refused = try client.send("POST", "/v1/feedback", body: Data(huge.utf8))
        #expect((400..<500).contains(refused.status), "\(refused.status) \(String(decoding: refused.body, as: UTF8.self))")
    }
}
