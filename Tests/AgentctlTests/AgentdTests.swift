import AgentAPI
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Whole-process tests of agentd: a real daemon, driven through agentctl and raw HTTP on its socket.
@Suite(.serialized) struct AgentdTests {
    static let digitRow: [Float] = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
                                    0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]

    func json(_ text: String) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "\(text)")
    }

    @Test func servesInferenceFeedbackStatusAndMetrics() throws {
        let agent = try AgentdProcess(environment: ["WATCHDOG_USEC": "400000"])
        let ready = try #require(agent.waitForNotification("READY=1"), "no READY=1; log:\n\(agent.log)")
        #expect(ready.contains("STATUS=serving digits-mlp v1 (int8)"))
        #expect(agent.waitForNotification("WATCHDOG=1", timeout: 5) != nil, "no watchdog ping")

        let status = try json(try agent.agentctl(["status", "--json"]).stdout)
        #expect(status["state"] as? String == "serving")
        let model = try #require(status["model"] as? [String: Any])
        #expect(model["name"] as? String == "digits-mlp" && model["precision"] as? String == "int8")
        // The model's memory with every worker's plan at its largest batch, by what holds it.
        let memory = try #require(status["model_memory"] as? [String: Int])
        let serving = try #require(status["serving"] as? [String: Any])
        #expect(memory["plans"] == serving["workers"] as? Int && memory["batch"] == 64)
        #expect(memory["file_bytes"]! > 0 && memory["decoded_bytes"]! > 0 && memory["packed_bytes"]! > 0 && memory["plan_buffer_bytes"]! > 0)
        #expect(memory["total_bytes"] == memory["file_bytes"]! + memory["decoded_bytes"]! + memory["packed_bytes"]!
                + memory["plans"]! * memory["plan_buffer_bytes"]!)

        let text = try agent.agentctl(["status"])
        #expect(text.stdout.contains("● agentd") && text.stdout.contains("digits-mlp version 1 (int8)"))

        // agentctl infer from the digits CSV (the label column is ignored).
        let infer = try agent.agentctl(["infer", "--input", Agentctl.digits, "--json"])
        #expect(infer.status == 0, "\(infer.stderr)")
        let answer = try json(infer.stdout)
        let results = try #require(answer["results"] as? [[String: Any]])
        #expect(results.count == 1797)
        // The daemon answers exactly what the stored (quantized) model file gives offline.
        let stored = try FileManager.default.contentsOfDirectory(atPath: agent.dir + "/state/models").filter { $0.hasSuffix(".safetensors") }
        #expect(stored.count == 1)
        let offline = try Agentctl.run(["model", "predict", agent.dir + "/state/models/" + stored[0], "--data", Agentctl.digits, "--json"])
        let offlineLabels = offline.stdout.split(separator: "\n").compactMap { try? json(String($0))["label"] as? String }
        #expect(results.map { $0["label"] as? String } == offlineLabels)

        // Raw HTTP: JSON and octet-stream give the same answer.
        let viaJSON = try agent.client.infer(InferRequest(inputs: [Self.digitRow]))
        let raw = InferRequest.f32Body(Self.digitRow)
        let octet = try agent.client.send("POST", "/v1/infer", body: raw, contentType: "application/octet-stream")
        #expect(octet.status == 200)
        let viaOctet = try JSONDecoder().decode(InferResponse.self, from: octet.body)
        #expect(viaOctet.results[0].scores == viaJSON.results[0].scores)
        #expect(viaJSON.results[0].label == "0")

        // Feedback by inference id, then by input.
        let fb = try agent.agentctl(["feedback", "--id", viaJSON.results[0].id, "--label", "0", "--json"])
        #expect(fb.status == 0, "\(fb.stderr)")
        #expect(try agent.client.feedback(FeedbackRequest(input: Self.digitRow, label: "0")).samples == 2)
        let unknown = try agent.client.send("POST", "/v1/feedback", body: Data(#"{"id": "9-999999", "label": "0"}"#.utf8))
        #expect(unknown.status == 404)

        let metrics = try agent.agentctl(["metrics"]).stdout
        #expect(metrics.contains("agentd_infer_requests_total{outcome=\"ok\"}"))
        #expect(metrics.contains("agentd_batch_size_bucket"))
        #expect(metrics.contains("agentd_queue_wait_seconds_bucket"))
        #expect(try agent.client.send("GET", "/healthz").status == 200)
        #expect(try agent.client.send("GET", "/readyz").status == 200)

        // Socket permissions.
        var st = stat()
        stat(agent.socket, &st)
        #expect(st.st_mode & 0o777 == 0o660)

        // Drain the status updates sent so far first: the notify socket holds only 10 datagrams
        // (net.unix.max_dgram_qlen) and a full one drops the STOPPING=1 this waits for.
        let before = agent.mark()
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
        #expect(agent.waitForNotification("STOPPING=1", after: before, timeout: 2) != nil)
    }

    @Test func badInputGetsTheDocumentedStatusAndTheDaemonKeepsServing() throws {
        let agent = try AgentdProcess(config: "[api]\nmax_body_bytes = 4096")
        try #require(agent.waitForNotification("READY=1") != nil, "\(agent.log)")
        func post(_ body: String, type: String = "application/json") throws -> (Int, String) {
            let r = try agent.client.send("POST", "/v1/infer", body: Data(body.utf8), contentType: type)
            let e = try? JSONDecoder().decode(ErrorResponse.self, from: r.body)
            return (r.status, e?.error.code ?? "")
        }
        #expect(try post("{not json") == (400, "malformed"))
        #expect(try post(#"{"inputs": []}"#) == (400, "empty"))
        #expect(try post(#"{"inputs": [[1, 2, 3]]}"#) == (422, "wrong_shape"))
        let row = "[" + Self.digitRow.map { String(Int($0)) }.joined(separator: ",") + "]"
        #expect(try post(#"{"inputs": [\#(row)], "priority": "urgent"}"#) == (400, "malformed"))
        let big = try post(#"{"inputs": ["# + Array(repeating: row, count: 40).joined(separator: ",") + "]}")
        #expect(big == (413, "too_large"), "\(big)")
        let nan = InferRequest.f32Body((0..<64).map { $0 == 5 ? Float.nan : 1 })
        let r = try agent.client.send("POST", "/v1/infer", body: nan, contentType: "application/octet-stream")
        #expect(r.status == 422)
        #expect(String(decoding: r.body, as: UTF8.self).contains("not_finite"))
        #expect(try agent.client.send("POST", "/v1/infer", body: Data([1, 2, 3]), contentType: "application/octet-stream").status == 422)
        let missing = try agent.client.send("GET", "/v1/nothing-here")
        #expect(missing.status == 404)
        #expect((try? JSONDecoder().decode(ErrorResponse.self, from: missing.body))?.error.code == "not_found")
        // Deadline already passed when a worker looks at it: 504, never computed.
        let late = try agent.client.send("POST", "/v1/infer", body: try JSONEncoder().encode(InferRequest(inputs: [Self.digitRow], deadlineMs: 0.001)))
        #expect(late.status == 504)
        // Still serving.
        #expect(try agent.client.infer(InferRequest(inputs: [Self.digitRow])).results.count == 1)
        let status = try agent.client.status()
        #expect(status.serving.deadlineExpired == 1)
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
    }

    @Test func fullQueueIsAnswered503WithRetryAfter() throws {
        let agent = try AgentdProcess(config: """
            precision = "fp32"
            [serving]
            workers = 1
            max_batch_size = 1
            queue_capacity = 1
            """)
        try #require(agent.waitForNotification("READY=1") != nil, "\(agent.log)")
        // Octet-stream bodies: cheap to decode, so requests reach the queue faster than one worker
        // drains it. Whether one round of 48 overflows a queue of one depends on scheduling; rounds
        // repeat (at most 20) until one has.
        let body = InferRequest.f32Body(repeatElement(Self.digitRow, count: 1024).joined())
        let client = agent.client
        var answers: [AgentClient.Response?] = []
        for _ in 0..<20 where !answers.contains(where: { $0?.status == 503 }) {
            answers = Concurrent(48) { try? client.send("POST", "/v1/infer", body: body, contentType: "application/octet-stream") }.wait()
        }
        let statuses = answers.map { $0?.status ?? 0 }
        let retryAfter = answers.compactMap { $0?.status == 503 ? $0?.headers["retry-after"] ?? "" : nil }
        #expect(statuses.contains(200))
        #expect(statuses.contains(503), "\(statuses)")
        #expect(Set(statuses).isSubset(of: [200, 503]))
        #expect(retryAfter.allSatisfy { $0 == "1" })
        #expect(try agent.client.status().serving.rejectedQueueFull > 0)
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
    }

    @Test func sigtermAnswersEveryAcceptedRequest() throws {
        let agent = try AgentdProcess(config: "precision = \"fp32\"\n[serving]\nworkers = 1\nmax_batch_size = 4")
        try #require(agent.waitForNotification("READY=1") != nil, "\(agent.log)")
        let body = try JSONEncoder().encode(InferRequest(inputs: Array(repeating: Self.digitRow, count: 512)))
        let client = agent.client
        let requests = Concurrent(16) { try? client.send("POST", "/v1/infer", body: body) }
        usleep(30_000)
        agent.signal(SIGTERM)
        let statuses = requests.wait().map { $0?.status ?? -1 }
        #expect(agent.waitForExit() == 0, "\(agent.log)")
        // Accepted requests are answered 200; a request that arrived after the listener closed was
        // never accepted (connection refused, -1) or was told agentd is stopping (503).
        #expect(statuses.contains(200))
        #expect(statuses.allSatisfy { [200, 503, -1].contains($0) }, "\(statuses)")
        #expect(agent.log.contains("drained=true"))
    }

    @Test func rollbackReloadAndRestartKeepTheRegistry() throws {
        let dir = temporaryDirectory("registry")
        // Version 1 from one initial file…
        var agent = try AgentdProcess(dir: dir)
        try #require(agent.waitForNotification("READY=1") != nil, "\(agent.log)")
        #expect(try agent.agentctl(["model", "rollback"]).stderr.contains("nothing to roll back to"))
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
        // …version 2 when that file changes and agentd restarts.
        let second = dir + "/second.safetensors"
        let r = try Agentctl.run(["model", "train", "--data", Agentctl.digits, "--arch", "mlp:64-32-10", "--epochs", "3", "--name", "digits-small",
                                  "--out", second])
        #expect(r.status == 0)
        agent = try AgentdProcess(model: second, dir: dir)
        try #require(agent.waitForNotification("READY=1") != nil, "\(agent.log)")
        var models = try agent.client.models().models
        #expect(models.map(\.version) == [1, 2] && models.last?.active == true)
        // Roll back to 1: served at once.
        let rb = try agent.agentctl(["model", "rollback", "1"])
        #expect(rb.status == 0, "\(rb.stderr)")
        #expect(rb.stdout.contains("now serving digits-mlp version 1"))
        #expect(try agent.client.infer(InferRequest(inputs: [Self.digitRow])).model.version == 1)
        #expect(try agent.agentctl(["model", "rollback", "7"]).stderr.contains("version 7 is not registered"))
        // SIGHUP: a good change applies (READY=1 follows RELOADING=1 once it has), a key that needs
        // a restart is named, a broken file changes nothing.
        let good = (try String(contentsOfFile: agent.configPath, encoding: .utf8)) + "\n[serving]\nmax_batch_size = 16\nworkers = 1\n"
        try good.write(toFile: agent.configPath, atomically: true, encoding: .utf8)
        var mark = agent.mark()
        agent.signal(SIGHUP)
        let reloading = agent.waitForNotification("RELOADING=1", after: mark, timeout: 10)
        #expect(reloading?.contains("MONOTONIC_USEC=") == true, "\(reloading ?? "no RELOADING=1")")
        #expect(agent.waitForNotification("READY=1", after: mark, timeout: 10) != nil)
        #expect(try agent.client.status().serving.maxBatchSize <= 16)
        let reload = try #require(try agent.client.events().events.last { $0.kind == "reload" })
        #expect(reload.message.contains("applied: serving.max_batch_size") && reload.message.contains("need a restart to take effect: serving.workers"),
                "\(reload.message)")
        try (good + "\n[serving]\nmax_batch_size = \"many\"\n").write(toFile: agent.configPath, atomically: true, encoding: .utf8)
        mark = agent.mark()
        agent.signal(SIGHUP)
        #expect(agent.waitForNotification("READY=1", after: mark, timeout: 10) != nil)
        #expect(try agent.client.status().serving.maxBatchSize <= 16)
        let events = try agent.client.events().events.map(\.kind)
        #expect(events.contains("reload") && events.contains("reload_failed") && events.contains("rollback"))
        #expect(try agent.client.status().state == "serving")
        try good.write(toFile: agent.configPath, atomically: true, encoding: .utf8)
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
        // Restart: registry and active version survive; the unreferenced-file sweep keeps both files.
        agent = try AgentdProcess(model: second, dir: dir)
        try #require(agent.waitForNotification("READY=1") != nil, "\(agent.log)")
        models = try agent.client.models().models
        #expect(models.map(\.version) == [1, 2])
        #expect(models.first(where: \.active)?.version == 1)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/state/models").filter { $0.hasSuffix(".safetensors") }
        #expect(files.count == 2)
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
    }

    @Test func brokenConfigAndCorruptInitialModelFailWithOneLine() throws {
        let dir = temporaryDirectory("broken")
        try "[serving]\nmax_batchsize = 4\n".write(toFile: dir + "/bad.toml", atomically: true, encoding: .utf8)
        let check = try Agentctl.run(["config", "check", dir + "/bad.toml"])
        #expect(check.status == 1)
        #expect(check.stderr.contains("serving.max_batchsize: unknown key (did you mean 'max_batch_size'?)"))
        #expect(try Agentctl.run(["config", "check", Agentctl.repoRoot + "/etc/agentd.toml"]).status == 0)

        let p = Process()
        p.executableURL = URL(fileURLWithPath: AgentdProcess.binary)
        p.arguments = ["--config", dir + "/bad.toml"]
        _ = FileManager.default.createFile(atPath: dir + "/stderr", contents: nil)
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/stderr"))
        p.standardError = err
        try p.runToExit()
        try err.close()
        #expect(p.terminationStatus == 78)
        #expect(try String(contentsOfFile: dir + "/stderr", encoding: .utf8).contains("max_batchsize"))

        let corrupt = dir + "/corrupt.safetensors"
        try Data([1, 2, 3, 4, 5, 6, 7, 8, 9]).write(to: URL(fileURLWithPath: corrupt))
        let agent = try AgentdProcess(model: corrupt, dir: dir)
        #expect(agent.waitForExit() == 1)
        #expect(agent.log.contains("corrupt.safetensors: header length"), "\(agent.log)")
    }

    /// systemd is not PID 1 here (nor on most CI machines), so `systemd-run -p …` cannot apply the
    /// unit's properties. tools/hardening/confine.py applies the ones that can break a Swift program
    /// the way systemd does, read from systemd/agentd.service itself: the SystemCallFilter allow
    /// list (groups expanded by this machine's systemd-analyze), SystemCallErrorNumber,
    /// MemoryDenyWriteExecute (systemd's seccomp rules plus PR_SET_MDWE where the kernel has it),
    /// RestrictAddressFamilies and NoNewPrivileges. Under them agentd must start, serve, reload and
    /// drain exactly as it does unconfined.
    @Test func runsUnderTheUnitsSeccompConfinement() throws {
        let launcher = ["/usr/bin/python3", Agentctl.repoRoot + "/tools/hardening/confine.py", Agentctl.repoRoot + "/systemd/agentd.service"]
        let agent = try AgentdProcess(launcher: launcher)
        guard agent.waitForNotification("READY=1", timeout: 60) != nil else {
            let code = agent.waitForExit(timeout: 5)
            // Exit 97 is confine.py's own: without the module nothing was confined, so nothing was shown.
            Issue.record(code == 97 ? "python3-seccomp is not installed, so agentd's confinement is unchecked: apt-get install python3-seccomp (make test installs it)"
                                    : "agentd did not start confined (exit \(code.map(String.init) ?? "-")): \(agent.log)")
            return
        }
        // The filters are really in force on the agentd process.
        let status = try String(contentsOfFile: "/proc/\(agent.process.processIdentifier)/status", encoding: .utf8)
        #expect(status.contains("NoNewPrivs:\t1"))
        #expect(status.contains("Seccomp:\t2"), "\(status)")
        #expect(status.contains("Seccomp_filters:\t3"), "\(status)")

        #expect(try agent.client.infer(InferRequest(inputs: [Self.digitRow, Self.digitRow])).results.count == 2)
        let raw = InferRequest.f32Body(Self.digitRow)
        #expect(try agent.client.send("POST", "/v1/infer", body: raw, contentType: "application/octet-stream").status == 200)
        let id = try agent.client.infer(InferRequest(inputs: [Self.digitRow])).results[0].id
        #expect(try agent.client.feedback(FeedbackRequest(id: id, label: "0")).stored)
        #expect(try agent.client.status().state == "serving")
        #expect(try agent.client.metrics().contains("agentd_infer_requests_total{outcome=\"ok\"} 3"))
        // An update job lowers its thread to SCHED_IDLE: the unit allows that call by name.
        for r in 0..<20 { _ = try agent.client.feedback(FeedbackRequest(input: Self.digitRow.map { 16 - $0 }, label: String(r % 10))) }
        _ = try agent.client.learn(dryRun: true)
        let until = Date(timeIntervalSinceNow: 60)
        while try agent.client.learnJob()?.state == "running", Date() < until { usleep(20_000) }
        let job = try agent.client.learnJob()
        #expect(job?.state == "finished", "\(String(describing: job))")
        // The job's record is stored a moment before its last log line is written.
        let logged = Date(timeIntervalSinceNow: 10)
        while !agent.log.contains("update job ended"), Date() < logged { usleep(20_000) }
        #expect(agent.log.contains("priority=idle"), "\(agent.log)")
        let mark = agent.mark()
        agent.signal(SIGHUP)
        #expect(agent.waitForNotification("RELOADING=1", after: mark, timeout: 30) != nil)
        #expect(agent.waitForNotification("READY=1", after: mark, timeout: 30) != nil)
        #expect(try agent.client.events().events.last?.kind == "reload")
        #expect(try agent.client.infer(InferRequest(inputs: [Self.digitRow])).results.count == 1)
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
        #expect(!agent.log.contains("not permitted"), "\(agent.log)")
    }

    /// Once ready, agentd hands back the pages only start-up used (agent.release_startup_pages).
    @Test func releasesStartupPagesOnceReady() throws {
        // agentd runs from a private copy of its binary: MADV_PAGEOUT skips pages another process
        // also maps, and the agentd of a test running beside this one maps the same binary (then
        // little is paged out and resident memory can rise with the workers' start-up instead).
        let copy = temporaryDirectory("trim-bin") + "/agentd"
        let agent = try AgentdProcess(launcher: ["/bin/sh", "-c", "cp \"$0\" '\(copy)' && exec '\(copy)' \"$@\""])
        #expect(agent.waitForNotification("READY=1") != nil)
        var line: Substring?
        for _ in 0..<100 {
            line = agent.log.split(separator: "\n").first { $0.contains("start-up pages released") }
            if line != nil { break }
            usleep(20_000)
        }
        let fields = try #require(line, "\(agent.log)").split(separator: " ").compactMap { f -> (String, Int)? in
            let kv = f.split(separator: "=")
            return kv.count == 2 ? (String(kv[0]), Int(kv[1]) ?? -1) : nil
        }
        let values = Dictionary(fields, uniquingKeysWith: { a, _ in a })
        let mappings = try #require(values["mappings"]), refused = try #require(values["refused"])
        #expect(mappings > 0)
        // Linux >= 5.4 (this machine and CI alike) takes MADV_PAGEOUT on read-only file mappings; a
        // refusal means agentd asks for the wrong advice or picks mappings the kernel rejects.
        let kernel = (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8)) ?? "?"
        #expect(refused == 0, "the kernel (\(kernel.trimmingCharacters(in: .whitespacesAndNewlines))) refused MADV_PAGEOUT on \(refused) of \(mappings) mappings; Linux >= 5.4 takes it, so the advice or the mappings are wrong: \(line!)")
        let before = try #require(values["resident_before_kb"]), after = try #require(values["resident_after_kb"])
        #expect(after < before, "\(line!)")
        // Serving still works: the released code comes back on first use.
        #expect(try agent.client.infer(InferRequest(inputs: [Self.digitRow])).results.count == 1)
    }

    /// One keep-alive connection serves many requests; when agentd closes it for idleness, the
    /// client notices before sending and opens a fresh one, so even a feedback (never resent
    /// blindly) goes through.
    @Test func keepAliveConnectionOutlivesTheIdleTimeout() throws {
        let agent = try AgentdProcess(config: "[api]\nidle_timeout_s = 0.2")
        #expect(agent.waitForNotification("READY=1") != nil)
        let connection = try agent.client.connect()
        let body = try JSONEncoder().encode(InferRequest(inputs: [Self.digitRow]))
        var ids: [String] = []
        for _ in 0..<20 {
            let r = try connection.send("POST", "/v1/infer", body: body)
            #expect(r.status == 200)
            ids.append(try JSONDecoder().decode(InferResponse.self, from: r.body).results[0].id)
        }
        usleep(600_000)  // agentd closes the idle connection
        let feedback = try connection.send("POST", "/v1/feedback", body: try JSONEncoder().encode(FeedbackRequest(id: ids[0], label: "0")))
        #expect(feedback.status == 200, "\(String(decoding: feedback.body, as: UTF8.self))")
        #expect(try connection.send("GET", "/v1/status").status == 200)
    }

    @Test func unreachableDaemonExitsThree() throws {
        let r = try Agentctl.run(["status", "--socket", "/nonexistent/agentd.sock"])
        #expect(r.status == 3)
        #expect(r.stderrLines.count == 1)
        #expect(r.stderr.contains("cannot reach agentd at /nonexistent/agentd.sock") && r.stderr.contains("systemctl status agentd"))
    }
}

/// `count` client threads sending at once; `wait()` returns their answers (nil: no answer).
final class Concurrent: @unchecked Sendable {
    private let lock = NSLock()
    private let group = DispatchGroup()
    private var answers: [AgentClient.Response?] = []

    init(_ count: Int, _ send: @escaping @Sendable () -> AgentClient.Response?) {
        for _ in 0..<count {
            group.enter()
            Thread { [self] in
                let r = send()
                lock.lock()
                answers.append(r)
                lock.unlock()
                group.leave()
            }.start()
        }
    }

    func wait() -> [AgentClient.Response?] {
        group.wait()
        lock.lock()
        defer { lock.unlock() }
        return answers
    }
}
