import AgentConfig
import Foundation
import Testing

@Suite struct AgentConfigTests {
    @Test func defaultsNeedNoFile() throws {
        let c = try AgentConfig.parse("", file: "a.toml")
        #expect(c == AgentConfig())
        #expect(c.serving.maxBatchSize == 64)
    }

    @Test func theShippedFileIsValidAndMatchesTheDefaults() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../etc/agentd.toml").standardized.path
        let c = try AgentConfig.load(path: path)
        var expected = AgentConfig()
        expected.model.initial = "/usr/share/agentd/digits-mlp.safetensors"
        expected.model.calibration = "/usr/share/agentd/digits.csv"
        #expect(c == expected, "etc/agentd.toml documents the defaults")
    }

    @Test func readsEveryKind() throws {
        let c = try AgentConfig.parse("""
            [agent]
            socket = "/tmp/a.sock"
            [serving]
            max_batch_size = 8
            max_queue_delay_ms = 2
            adaptive_batching = true
            """, file: "a.toml")
        #expect(c.agent.socket == "/tmp/a.sock")
        #expect(c.serving.maxBatchSize == 8 && c.serving.maxQueueDelayMs == 2 && c.serving.adaptiveBatching)
    }

    @Test func reportsEveryProblemWithItsKey() {
        do {
            _ = try AgentConfig.parse("""
                [serving]
                max_batchsize = 8
                workers = "two"
                deadline_ms = -5
                [agent]
                log_level = "loud"
                [telemetry]
                x = 1
                """, file: "a.toml")
            Issue.record("accepted")
        } catch let e as ConfigErrors {
            let lines = e.problems.map(\.description)
            #expect(lines.contains("a.toml: serving.max_batchsize: unknown key (did you mean 'max_batch_size'?)"), "\(lines)")
            #expect(lines.contains("a.toml: serving.workers: expected an integer, found a string"))
            #expect(lines.contains { $0.hasPrefix("a.toml: serving.deadline_ms: -5.0 is out of range") })
            #expect(lines.contains { $0.hasPrefix("a.toml: agent.log_level: 'loud' is not one of") })
            #expect(lines.contains { $0.hasPrefix("a.toml: telemetry: unknown section") })
            #expect(lines.count == 5)
        } catch {
            Issue.record("\(error)")
        }
    }

    func refusal(_ text: String) -> String? {
        do {
            _ = try AgentConfig.parse(text, file: "a.toml")
            return nil
        } catch let e as ConfigErrors {
            return e.problems.map(\.description).joined(separator: "\n")
        } catch {
            return "\(error)"
        }
    }

    /// Input that overflowed toml++'s stack or tripped its assertions (found by the config fuzzer)
    /// is refused with one problem before toml++ sees it.
    @Test func hostileInputIsRefusedBeforeTOMLParsesIt() throws {
        let deepKey = "a" + String(repeating: ".a", count: 200_000) + " = 1\n"
        let deepHeader = "[" + Array(repeating: "a", count: 200_000).joined(separator: ".") + "]\n"
        let numericKey = "1" + String(repeating: ".1", count: 50_000) + " = 1\n"
        let acrossLines = "a = [\n" + String(repeating: "{ b.b.b.b.b = [\n", count: 20)
        for text in [deepKey, deepHeader, numericKey, acrossLines] {
            let message = try #require(refusal(text))
            #expect(message.hasPrefix("a.toml: line ") && message.contains("more than 32 levels"), "\(message.prefix(200))")
        }
        for text in ["a = 2024-01-01T:00\n", "[serving]\nx = [2024-01-01t=0]\n", "a = {b = 2024-01-01Tx0:00}", "a = 1970-05-27 8,",
                     "[model]\ninitial = 1979-05-27T07:32:00Z\n", "agAot= 1979-05-3= 1\n", "a = 07:32:00", "a = 1_979-0",
                     "a =1\u{7F}ru----uu 0# c\n", "a = 1979-05-2\" 8#\n"] {
            let message = try #require(refusal(text))
            #expect(message.contains("a date or time; agentd's configuration holds neither"), "\(message)")
        }
        for text in ["[=]\n", "[[ .a]]\n", "[agent]\nx = 1\n[[[x]]\n", "[\nx]\n", "\u{FEFF}[#]\n", "  [ ,]"] {
            let message = try #require(refusal(text))
            #expect(message.contains("a table header must start with a key"), "\(message)")
        }
        for text in ["a = [}\n", "a = [1, # c\n }\n", "[serving]\nx = {b = [[}]]}\n"] {
            let message = try #require(refusal(text))
            #expect(message.contains("'}' inside an array"), "\(message)")
        }
        let huge = "# " + String(repeating: "x", count: 1 << 20) + "\n"
        #expect(refusal(huge)?.contains("a configuration file is at most 1048576 bytes") == true)
    }

    /// The limits refuse nothing a real file holds: dates, floats, dotted keys and the same
    /// patterns inside strings and comments still reach toml++ and the usual checks.
    @Test func thePrecheckLeavesOrdinaryTOMLAlone() throws {
        let c = try AgentConfig.parse("""
            # a comment with 2024-01-01T: and a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.a.b.c.d.e.f.g.h
            [agent]
            socket = "/tmp/2024-01-01T:x/a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.a.b.c.d.e.f.g.h.sock"
            state_dir = '''/var/lib/a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.a.b.c.d.e.f.g.h'''
            [serving]
            max_queue_delay_ms = 2.5
            deadline_ms = 1.5e3
            latency_target_ms = 2E-1
            queue_capacity = +1_000
            """, file: "a.toml")
        #expect(c.serving.maxQueueDelayMs == 2.5 && c.serving.deadlineMs == 1500)
        #expect(c.serving.latencyTargetMs == 0.2 && c.serving.queueCapacity == 1000)
        #expect(c.agent.socket.hasPrefix("/tmp/2024-01-01T:x/"))
        let dotted = try #require(refusal("serving.workers = 2\nagent.x.y = 1\n"))
        #expect(dotted.contains("agent.x: unknown key"), "\(dotted)")
        let shipped = try String(contentsOfFile: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../etc/agentd.toml").standardized.path, encoding: .utf8)
        #expect(refusal(shipped) == nil)
        #expect(refusal("[ agent ]\nsocket = \"/a\"\n[ \"serving\" ]\nworkers = 2\nx = [\n  [1],\n]\n")?.contains("serving.x: unknown key") == true)
    }

    @Test func syntaxErrorsNameTheLine() {
        #expect(throws: ConfigErrors.self) { try AgentConfig.parse("[serving\nx=1", file: "a.toml") }
        do { _ = try AgentConfig.parse("a = \n", file: "a.toml") } catch { #expect("\(error)".hasPrefix("a.toml: line 1")) }
    }

    /// Hostile numbers in the file: every one is a problem with its key, none reaches agentd.
    @Test(arguments: [
        ("serving", "deadline_ms", "inf"), ("serving", "deadline_ms", "nan"), ("serving", "deadline_ms", "-0.0"),
        ("serving", "max_deadline_ms", "1e300"), ("serving", "max_queue_delay_ms", "-inf"), ("serving", "latency_target_ms", "0.0"),
        ("serving", "queue_bytes", "9223372036854775807"), ("serving", "queue_bytes", "-1"), ("serving", "workers", "-1"),
        ("serving", "recent_inferences_bytes", "-4096"), ("api", "max_connections", "0"), ("api", "drain_timeout_s", "1e300"),
        ("api", "idle_timeout_s", "nan"), ("api", "max_body_bytes", "18446744073709551615"), ("store", "feedback_max_rows", "0"),
        ("store", "events_max_bytes", "-1"), ("store", "write_queue", "inf"),
        ("drift", "warmup_rows", "99"), ("drift", "warmup_rows", "inf"), ("drift", "warmup_rows", "9223372036854775807"),
        ("drift", "false_alarm_run", "-2000"), ("drift", "false_alarm_run", "1e300"), ("drift", "save_interval_s", "nan"),
        ("drift", "save_interval_s", "0.0"), ("drift", "enabled", "1"),
        ("learn", "min_labels", "14"), ("learn", "min_labels", "9223372036854775807"), ("learn", "max_steps", "0"),
        ("learn", "max_steps", "-1"), ("learn", "min_gain", "nan"), ("learn", "min_gain", "1e300"), ("learn", "max_forgetting", "-0.01"),
        ("learn", "cpu_budget_s", "inf"), ("learn", "cpu_budget_s", "0.0"), ("learn", "auto", "1"),
        ("replay", "capacity", "9"), ("replay", "capacity", "1e300"), ("replay", "max_bytes", "-1"), ("replay", "max_bytes", "65535"),
        ("replay", "live_share", "nan"), ("replay", "live_share", "0.51"), ("replay", "live_share", "-inf"), ("replay", "policy", "\"lru\""),
        ("replay", "policy", "3"),
        ("mqtt", "broker", "\"tcp://host:1883\""), ("mqtt", "broker", "1883"), ("mqtt", "prefix", "\"\""), ("mqtt", "prefix", "\"a/b\""),
        ("mqtt", "fleet", "\"f#\""), ("mqtt", "device", "\"all\""), ("mqtt", "device", "\"d+1\""), ("mqtt", "device", "\"a\\u0007b\""),
        ("mqtt", "groups", "\"north\""), ("mqtt", "groups", "[\"a/b\"]"), ("mqtt", "groups", "[1]"), ("mqtt", "groups", "[\"\"]"),
        ("mqtt", "protocol", "\"4\""), ("mqtt", "keepalive_s", "0"), ("mqtt", "keepalive_s", "9223372036854775807"),
        ("mqtt", "telemetry_interval_s", "nan"), ("mqtt", "telemetry_interval_s", "inf"), ("mqtt", "telemetry_interval_s", "0.0"),
        ("mqtt", "outbox_bytes", "65535"), ("mqtt", "outbox_bytes", "1e300"), ("mqtt", "daily_bytes", "-1"), ("mqtt", "command_ttl_s", "-inf"),
        ("deploy", "trusted_keys", "\"/k.pub\""), ("deploy", "trusted_keys", "[true]"), ("deploy", "health_seconds", "-1"),
        ("deploy", "health_seconds", "nan"), ("deploy", "max_accuracy_drop", "1.5"), ("deploy", "max_error_rate", "inf"),
        ("deploy", "max_model_bytes", "1023"), ("deploy", "max_model_bytes", "9223372036854775807"),
        ("model", "reduce_range", "1"), ("model", "reduce_range", "\"yes\""), ("model", "reduce_range", "1e300"),
    ])
    func hostileNumbersAreProblemsWithTheirKey(_ section: String, _ key: String, _ value: String) {
        do {
            _ = try AgentConfig.parse("[\(section)]\n\(key) = \(value)\n", file: "a.toml")
            Issue.record("\(section).\(key) = \(value) was accepted")
        } catch let e as ConfigErrors {
            #expect(e.problems.count == 1 && e.problems.allSatisfy { $0.key == "\(section).\(key)" || $0.key == nil }, "\(e)")
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test func bodiesHeldAtOnceAreBounded() {
        #expect(throws: ConfigErrors.self) { try AgentConfig.parse("[api]\nmax_connections = 2048\nmax_body_bytes = 1048576\n", file: "a.toml") }
        #expect((try? AgentConfig.parse("[api]\nmax_connections = 1024\nmax_body_bytes = 1048576\n", file: "a.toml")) != nil)
    }

    @Test func aDefaultDeadlineAboveTheMaximumIsAProblem() {
        #expect(throws: ConfigErrors.self) { try AgentConfig.parse("[serving]\ndeadline_ms = 5000\nmax_deadline_ms = 100\n", file: "a.toml") }
    }

    @Test func changedKeysSeparateReloadableFromRestart() throws {
        let old = AgentConfig()
        let new = try AgentConfig.parse("[serving]\nworkers = 3\nmax_batch_size = 8\n[api]\nadmin_group = \"ops\"\n", file: "a.toml")
        let changed = new.changedKeys(from: old)
        #expect(Set(changed) == ["serving.workers", "serving.max_batch_size", "api.admin_group"])
        #expect(changed.filter { !AgentConfig.reloadableKeys.contains($0) } == ["serving.workers"])
        // A reload runs with the new reloadable values and the old values of the rest.
        let running = old.reloaded(from: new)
        #expect(running.serving.maxBatchSize == 8 && running.api.adminGroup == "ops" && running.serving.workers == old.serving.workers)
        #expect(running.changedKeys(from: old) == ["serving.max_batch_size", "api.admin_group"])
    }
}
