import AgentAPI
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Whole-process drift monitoring: a prepared model file, agentd watching its rows through the
/// socket, alarms, restart, swap and reset.
@Suite(.serialized) struct DriftProcessTests {
    /// The shared digits MLP with a drift reference from `agentctl model prepare`.
    static let prepared: String = {
        let out = temporaryDirectory("prepared") + "/digits-field.safetensors"
        let r = try! Agentctl.run(["model", "prepare", AgentdProcess.model, "--data", Agentctl.digits, "--out", out, "--json"])
        precondition(r.status == 0, r.stderr)
        return out
    }()

    /// Digits rows (label dropped), in file order.
    static let rows: [[Float]] = {
        let text = try! String(contentsOfFile: Agentctl.digits, encoding: .utf8)
        return text.split(separator: "\n").dropFirst().map { line in line.split(separator: ",").dropLast().map { Float($0)! } }
    }()

    func infer(_ agent: AgentdProcess, _ rows: ArraySlice<[Float]>) throws {
        var start = rows.startIndex
        while start < rows.endIndex {
            let end = min(start + 64, rows.endIndex)
            _ = try agent.client.infer(InferRequest(inputs: Array(rows[start..<end])))
            start = end
        }
    }

    @Test func prepareWritesAReferenceThatQuantizeKeepsAndDriftEvalReads() throws {
        let dir = temporaryDirectory("prepare")
        let report = try Agentctl.run(["model", "prepare", AgentdProcess.model, "--data", Agentctl.digits, "--out", dir + "/p.safetensors"])
        #expect(report.status == 0, "\(report.stderr)")
        for column in ["input_sum", "threshold", "run length", "wanted ≥ 2000"] { #expect(report.stdout.contains(column), "\(report.stdout)") }
        let q = try Agentctl.run(["model", "quantize", Self.prepared, dir + "/q.safetensors", "--calib", Agentctl.digits])
        #expect(q.status == 0, "\(q.stderr)")
        let eval = try Agentctl.run(["model", "drift-eval", dir + "/q.safetensors", "--data", Agentctl.digits, "--seeds", "2", "--stationary", "4000", "--json"])
        #expect(eval.status == 0, "\(eval.stderr)")
        let json = try #require(JSONSerialization.jsonObject(with: Data(eval.stdout.utf8)) as? [String: Any])
        let scenarios = try #require(json["scenarios"] as? [[String: Any]])
        #expect(scenarios.count == 12)
        // Severe drift is caught in both streams.
        let offset = try #require(scenarios.first { $0["scenario"] as? String == "offset +3" })
        #expect(offset["misses"] as? Int == 0)
        // A quantized file can be prepared too; a file without a reference is refused by drift-eval with one line.
        #expect(try Agentctl.run(["model", "prepare", dir + "/q.safetensors", "--data", Agentctl.digits, "--out", dir + "/qp.safetensors"]).status == 0)
        let none = try Agentctl.run(["model", "drift-eval", AgentdProcess.model, "--data", Agentctl.digits])
        #expect(none.status != 0 && none.stderr.contains("no drift reference"), "\(none.stderr)")
        let bad = try Agentctl.run(["model", "prepare", AgentdProcess.model, "--data", Agentctl.digits, "--out", dir + "/x.safetensors", "--bins", "1"])
        #expect(bad.status != 0 && bad.stderr.contains("--bins"))
    }

    @Test func driftedRowsRaiseTheAlarmAndItSurvivesARestart() throws {
        let dir = temporaryDirectory("drift")
        var agent: AgentdProcess? = try AgentdProcess(config: "[drift]\nsave_interval_s = 1", model: Self.prepared, dir: dir)
        try #require(agent!.waitForNotification("READY=1") != nil, "log:\n\(agent!.log)")
        var d = try agent!.client.drift()
        #expect(d.state == "ok" && d.reference?.source == "model" && d.samples == 0)
        #expect(d.signals.map(\.name) == ["input", "input_sum", "output", "confidence", "embedding"])
        // Every answered row is counted by the time its client asks.
        try infer(agent!, Self.rows[0..<37])
        #expect(try agent!.client.drift().samples == 37)
        try infer(agent!, Self.rows[37..<500])
        // Start from clean windows, then every pixel 3 brighter: the input signals fire.
        d = try agent!.client.driftReset()
        #expect(d.samples == 0 && d.lastAlarm == nil)
        try infer(agent!, Self.rows[500..<700].map { row in row.map { $0 + 3 } }[...])
        d = try agent!.client.drift()
        #expect(d.state == "drift")
        let alarm = try #require(d.lastAlarm)
        #expect(alarm.signal.hasPrefix("input") && alarm.cleared == nil && alarm.sample <= 40, "\(alarm)")
        let events = try agent!.client.events(limit: 20).events
        #expect(events.contains { $0.kind == "drift_detected" && $0.message.contains("signal input") }, "\(events)")
        #expect(try agent!.client.status().drift.state == "drift")
        let metrics = try agent!.client.metrics()
        #expect(metrics.contains("agentd_drift_state 2"))
        #expect(metrics.contains("agentd_drift_score{signal=\"input\"}") && metrics.contains("agentd_drift_threshold{signal=\"input_sum\"}"))
        let table = try agent!.agentctl(["drift"])
        #expect(table.stdout.contains("state: drift") && table.stdout.contains("last alarm: input"), "\(table.stdout)")

        // kill -9 after the alarm was saved (at most a second later), then a restart: alarm, count and windows are back.
        Thread.sleep(forTimeInterval: 1.5)
        agent!.signal(SIGKILL)
        _ = agent!.waitForExit()
        agent = nil
        let again = try AgentdProcess(config: "[drift]\nsave_interval_s = 1", model: Self.prepared, dir: dir)
        try #require(again.waitForNotification("READY=1") != nil, "log:\n\(again.log)")
        let restored = try again.client.drift()
        #expect(restored.state == "drift" && restored.samples == 200, "\(restored.state) \(restored.samples)")
        #expect(restored.lastAlarm?.at == alarm.at)
        #expect(restored.signals.first { $0.name == "input" }?.filled == 32)
        // Back to normal rows: the alarm clears once every score is below half its threshold.
        try infer(again, Self.rows[700..<1000])
        let cleared = try again.client.drift()
        #expect(cleared.state != "drift" && cleared.lastAlarm?.cleared != nil, "\(cleared.state)")
        #expect(try again.client.events(limit: 20).events.contains { $0.kind == "drift_cleared" })
    }

    @Test func aSwapSwitchesMonitorAndModelTogetherAndAFileWithoutAReferenceWarmsUp() throws {
        let dir = temporaryDirectory("swap")
        let config = "[drift]\nwarmup_rows = 300\nsave_interval_s = 1"
        var agent: AgentdProcess? = try AgentdProcess(config: config, model: Self.prepared, dir: dir)
        try #require(agent!.waitForNotification("READY=1") != nil, "log:\n\(agent!.log)")
        try infer(agent!, Self.rows[0..<100].map { row in row.map { $0 + 3 } }[...])
        #expect(try agent!.client.drift().state == "drift")
        agent!.signal(SIGTERM)
        _ = agent!.waitForExit()
        agent = nil
        // A new model.initial without a reference becomes version 2 and warms up.
        let next = try AgentdProcess(config: config, model: AgentdProcess.model, dir: dir)
        try #require(next.waitForNotification("READY=1") != nil, "log:\n\(next.log)")
        var d = try next.client.drift()
        #expect(d.modelVersion == 2 && d.state == "warming_up" && d.warmup?.of == 300 && d.reference == nil)
        try infer(next, Self.rows[0..<300])
        // The reference is built off the serving path.
        for _ in 0..<300 where (try? next.client.drift().state) == "warming_up" { Thread.sleep(forTimeInterval: 0.1) }
        d = try next.client.drift()
        #expect(d.state != "warming_up" && d.reference?.source == "warmup", "\(d.state)")
        #expect(try next.client.events(limit: 20).events.contains { $0.kind == "drift_reference_ready" })
        // Rolling back to version 1 brings its monitor back, alarm and all.
        _ = try next.client.rollback(to: 1)
        d = try next.client.drift()
        #expect(d.modelVersion == 1 && d.state == "drift" && d.reference?.source == "model")
        // And version 2 keeps its learnt reference for when it serves again.
        _ = try next.client.rollback(to: 2)
        d = try next.client.drift()
        #expect(d.modelVersion == 2 && d.reference?.source == "warmup")
        // Reset on a file without a reference starts a new warm-up.
        #expect(try next.client.driftReset().state == "warming_up")
    }

    @Test func disabledMonitoringSaysSo() throws {
        let agent = try AgentdProcess(config: "[drift]\nenabled = false", model: Self.prepared)
        try #require(agent.waitForNotification("READY=1") != nil, "log:\n\(agent.log)")
        try infer(agent, Self.rows[0..<10])
        #expect(try agent.client.drift().state == "disabled")
        #expect(try agent.client.status().drift.state == "disabled")
    }
}
