import AgentAPI
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Root is needed to mount a tmpfs or make users; outside CI a non-root run skips with a line
/// saying so, in CI (root, like the machines it runs on) it is a failure.
func requireRoot(_ what: String) -> Bool {
    if getuid() == 0 { return true }
    if ProcessInfo.processInfo.environment["CI"] != nil {
        Issue.record("\(what) needs root, and CI runs as root")
    } else {
        print("SKIPPED \(what): needs root")
    }
    return false
}

@discardableResult
func shell(_ command: String) -> (status: Int32, output: String) {
    let dir = temporaryDirectory("shell")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let path = dir + "/out"
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    guard let out = try? FileHandle(forWritingTo: URL(fileURLWithPath: path)) else { return (-1, "cannot create \(path)") }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command]
    p.standardOutput = out
    p.standardError = out
    do {
        try p.runToExit()
    } catch {
        return (-1, "\(error)")
    }
    try? out.close()
    return (p.terminationStatus, (try? String(contentsOfFile: path, encoding: .utf8)) ?? "")
}

/// Faults made for real: a damaged or lost database, a bad new model file, a full disk.
@Suite(.serialized) struct FaultTests {
    func started(_ agent: AgentdProcess) throws {
        try #require(agent.waitForNotification("READY=1") != nil, "agentd did not start: \(agent.log)")
    }

    func stop(_ agent: AgentdProcess) {
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0, "\(agent.log)")
    }

    /// A copy of the shared test model that the test may overwrite.
    func ownModel(_ dir: String) throws -> String {
        let path = dir + "/initial.safetensors"
        try FileManager.default.copyItem(atPath: AgentdProcess.model, toPath: path)
        return path
    }

    @Test(arguments: ["garbage", "deleted"])
    func aDamagedOrLostDatabaseIsSetAsideAndTheRegistryRebuilt(_ damage: String) throws {
        let dir = temporaryDirectory("corrupt-db")
        let model = try ownModel(dir)
        var agent = try AgentdProcess(model: model, dir: dir)
        try started(agent)
        let before = try agent.client.infer(InferRequest(inputs: [AgentdTests.digitRow]))
        stop(agent)
        let db = dir + "/state/agent.db"
        for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: db + suffix) }
        if damage == "garbage" {
            try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: db))
        } else {
            try FileManager.default.removeItem(atPath: db)
        }
        // The initial file is gone too: only the stored model files can bring the model back.
        try FileManager.default.removeItem(atPath: model)
        agent = try AgentdProcess(model: model, dir: dir)
        try started(agent)
        let after = try agent.client.infer(InferRequest(inputs: [AgentdTests.digitRow]))
        #expect(after.results[0].scores == before.results[0].scores)
        #expect(after.model.precision == before.model.precision)
        let models = try agent.client.models().models
        #expect(models.count == 1 && models[0].active && models[0].source.hasPrefix("recovered:"))
        let events = try agent.client.events().events.map(\.kind)
        #expect(events.contains("registry_rebuilt"), "\(events)")
        let aside = try FileManager.default.contentsOfDirectory(atPath: dir + "/state").filter { $0.hasPrefix("agent.db.corrupt-") }
        if damage == "garbage" {
            #expect(events.contains("database_recovered"), "\(events)")
            #expect(aside.count == 1, "\(aside)")
        } else {
            #expect(aside.isEmpty)
        }
        stop(agent)
    }

    /// A second agentd on the same state directory would unlink the first one's socket and sweep
    /// its half-written files: it exits with one line instead, and the first serves on.
    @Test func aSecondAgentdOnTheSameStateDirectoryRefusesToStart() throws {
        let first = try AgentdProcess()
        try started(first)
        let dir = temporaryDirectory("second-agentd")
        try FileManager.default.createSymbolicLink(atPath: dir + "/state", withDestinationPath: first.dir + "/state")
        let second = try AgentdProcess(dir: dir)
        #expect(second.waitForExit() == 1, "\(second.log)")
        #expect(second.log.contains("another agentd is using"), "\(second.log)")
        #expect(try first.client.infer(InferRequest(inputs: [AgentdTests.digitRow])).results.count == 1)
        stop(first)
    }

    @Test func anInvalidNewInitialModelIsLoggedAndTheActiveVersionServes() throws {
        let dir = temporaryDirectory("bad-initial")
        let model = try ownModel(dir)
        var agent = try AgentdProcess(model: model, dir: dir)
        try started(agent)
        stop(agent)
        // The operator drops a broken file where model.initial points.
        try Data("not a safetensors file".utf8).write(to: URL(fileURLWithPath: model))
        agent = try AgentdProcess(model: model, dir: dir)
        try started(agent)
        #expect(try agent.client.infer(InferRequest(inputs: [AgentdTests.digitRow])).model.version == 1)
        let events = try agent.client.events().events
        let refused = try #require(events.first { $0.kind == "initial_refused" }, "\(events.map(\.kind))")
        #expect(refused.message.contains("initial.safetensors"))
        #expect(try agent.client.models().models.count == 1)
        stop(agent)
    }

    /// The state directory on a small tmpfs, then filled: feedback is refused with a storage
    /// error that says so (no SQL), inference goes on, a rollback either happens or is reported
    /// as not made — never half — and once space is back, writes work again.
    @Test func aFullDiskIsReportedAndNothingHalfApplied() throws {
        guard requireRoot("full-disk test (tmpfs mount)") else { return }
        let dir = temporaryDirectory("full-disk")
        let state = dir + "/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        let mounted = shell("mount -t tmpfs -o size=4m tmpfs '\(state)'")
        try #require(mounted.status == 0, "mount: \(mounted.output)")
        defer { shell("umount -l '\(state)'") }
        // Two versions, so a rollback has somewhere to go.
        let second = dir + "/second.safetensors"
        let r = try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--arch", "mlp:64-16-10", "--epochs", "1", "--name", "digits-tiny",
                                  "--out", second])
        try #require(r.status == 0, "\(r.stderr)")
        var agent = try AgentdProcess(dir: dir)
        try started(agent)
        stop(agent)
        agent = try AgentdProcess(model: second, dir: dir)
        try started(agent)
        #expect(try agent.client.models().models.map(\.version) == [1, 2])

        shell("dd if=/dev/zero of='\(state)/filler' bs=64k 2>/dev/null; sync")
        let body = try JSONEncoder().encode(FeedbackRequest(input: AgentdTests.digitRow, label: "0"))
        var refusal: AgentClient.Response?
        for _ in 0..<2000 where refusal == nil {
            let answer = try agent.client.send("POST", "/v1/feedback", body: body)
            if answer.status != 200 { refusal = answer }
        }
        let refused = try #require(refusal, "feedback never failed on a full disk")
        let error = try JSONDecoder().decode(ErrorResponse.self, from: refused.body).error
        // ENOSPC on tmpfs is SQLITE_FULL: 507 storage_full, not a generic failure.
        #expect(refused.status == 507 && error.code == "storage_full", "\(refused.status) \(error)")
        #expect(error.message.contains("feedback was not stored") && !error.message.contains("SQL") && !error.message.contains("INSERT"))
        // Inference does not touch the disk.
        #expect(try agent.client.infer(InferRequest(inputs: [AgentdTests.digitRow])).results.count == 1)
        let status = try agent.client.status()
        #expect((status.store?.writeErrors ?? 0) > 0)
        // A rollback on a full disk: made and reported, or refused and nothing changed.
        let rb = try agent.client.send("POST", "/v1/models/rollback")
        let serving = try agent.client.infer(InferRequest(inputs: [AgentdTests.digitRow])).model.version
        if rb.status == 200 {
            #expect(serving == 1)
        } else {
            #expect(serving == 2, "refused (\(rb.status)) but serving changed")
            let e = try JSONDecoder().decode(ErrorResponse.self, from: rb.body).error
            #expect(["storage_full", "storage"].contains(e.code), "\(e)")
        }
        let registered = try agent.client.models().models.first(where: \.active)?.version
        #expect(registered == serving, "registry says \(registered ?? -1), agentd serves \(serving)")
        // Space back: writes work again without a restart.
        try FileManager.default.removeItem(atPath: state + "/filler")
        #expect(try agent.client.feedback(FeedbackRequest(input: AgentdTests.digitRow, label: "0")).stored)
        stop(agent)
    }
}
