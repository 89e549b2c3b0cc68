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

    @Test func syntaxErrorsNameTheLine() {
        #expect(throws: ConfigErrors.self) { try AgentConfig.parse("[serving\nx=1", file: "a.toml") }
        do { _ = try AgentConfig.parse("a = \n", file: "a.toml") } catch { #expect("\(error)".hasPrefix("a.toml: line 1")) }
    }
}
