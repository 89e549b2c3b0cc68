import AgentAPI
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// agentd's `/metrics`, read from a live daemon, against the rules Prometheus sets for exposition
/// (those `promtool check metrics` lints): help text, base units, counter and histogram shapes.
@Suite(.serialized) struct MetricsTests {
    /// The families the README's metric table lists, with their types.
    static let expected: [String: String] = [
        "agentd_infer_requests_total": "counter",
        "agentd_replay_samples": "gauge",
        "agentd_learn_running": "gauge",
        "agentd_mqtt_connected": "gauge",
        "agentd_outbox_messages": "gauge",
        "agentd_outbox_dropped_total": "counter",
        "agentd_mqtt_sent_bytes_total": "counter",
        "agentd_learn_updates_total": "counter",
        "agentd_infer_duration_seconds": "histogram",
        "agentd_queue_wait_seconds": "histogram",
        "agentd_batch_size": "histogram",
        "agentd_queue_depth": "gauge",
        "agentd_fp32_escalations_total": "counter",
        "agentd_model_version": "gauge",
        "agentd_feedback_samples_total": "counter",
        "agentd_queue_bytes": "gauge",
        "agentd_connections": "gauge",
        "agentd_recent_inferences_bytes": "gauge",
        "agentd_store_rows": "gauge",
        "agentd_store_bytes": "gauge",
        "agentd_store_evicted_rows_total": "counter",
        "agentd_events_dropped_total": "counter",
        "agentd_store_write_errors_total": "counter",
        // The model here has no drift reference and is warming up: the per-signal score and
        // threshold gauges appear once it has one (DriftProcessTests checks those).
        "agentd_drift_state": "gauge",
    ]

    /// A one-epoch digits MLP quantized with a fixed adaptive threshold on the top-1 margin (0.5):
    /// unsure enough that adaptive precision re-runs some rows in FP32, so the escalation counter
    /// moves. (A threshold chosen at quantization depends on how well INT8 agrees with FP32: with
    /// a good calibration it is 0 and nothing is ever re-run.) Training is seeded.
    static let roughModel: String = {
        let fp32 = Agentctl.trainedModel(name: "digits-rough", arch: "mlp:64-64-10", epochs: 1)
        let out = temporaryDirectory("rough-int8") + "/digits-rough-int8.safetensors"
        let r = try! Agentctl.run(["model", "quantize", fp32, out, "--calib", Agentctl.digits, "--threshold", "0.5"])
        precondition(r.status == 0, r.stderr)
        return out
    }()

    @Test func liveMetricsFollowPrometheusConventions() throws {
        let agent = try AgentdProcess(config: "adaptive = true", model: Self.roughModel)
        try #require(agent.waitForNotification("READY=1") != nil, "no READY=1; log:\n\(agent.log)")
        let clock = ContinuousClock()
        let started = clock.now
        for _ in 0..<3 {
            #expect(try agent.client.infer(InferRequest(inputs: [AgentdTests.digitRow, AgentdTests.digitRow])).results.count == 2)
        }
        let elapsed = clock.now - started
        let elapsedSeconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        // The scheduler records a batch just after answering it: scrape until the six rows are in.
        var text = try agent.client.metrics()
        for _ in 0..<500 where try Exposition(text).value("agentd_batch_size_sum") != 6 {
            usleep(10_000)
            text = try agent.client.metrics()
        }
        let exposition = try Exposition(text)

        #expect(exposition.families.mapValues { $0.type ?? "none" } == Self.expected, "\(text)")
        for (name, family) in exposition.families.sorted(by: { $0.key < $1.key }) {
            #expect(!(family.help ?? "").isEmpty, "\(name) has no # HELP")
            #expect(family.type != nil, "\(name) has no # TYPE")
            // Prometheus wants base units spelled out: seconds, bytes; never ms, µs, KB, MB.
            let abbreviated: Set<Substring> = ["ms", "us", "ns", "kb", "mb", "gb", "millis", "micros", "msec", "usec"]
            #expect(Set(name.lowercased().split(separator: "_")).isDisjoint(with: abbreviated), "\(name) has an abbreviated unit")
            #expect((family.type == "counter") == name.hasSuffix("_total"), "\(name): only counters end in _total, and every counter does")
            #expect(!family.samples.isEmpty, "\(name) has no samples")
            if family.type == "histogram" {
                let buckets = family.samples.filter { $0.name == name + "_bucket" }
                let bounds = buckets.compactMap { $0.labels["le"] }
                #expect(bounds.count == buckets.count && bounds.last == "+Inf", "\(name): buckets \(bounds)")
                let counts = buckets.map(\.value)
                #expect(counts == counts.sorted(), "\(name): bucket counts are not cumulative: \(counts)")
                let count = try #require(family.samples.first { $0.name == name + "_count" }, "\(name) has no _count").value
                #expect(family.samples.contains { $0.name == name + "_sum" }, "\(name) has no _sum")
                #expect(counts.last == count, "\(name): +Inf bucket \(counts.last ?? -1) != count \(count)")
                if name.hasSuffix("_seconds") {
                    // Bounds in seconds: none above a minute (millisecond buckets reach 1000).
                    let finite = bounds.dropLast().compactMap(Double.init)
                    #expect(finite.count == bounds.count - 1 && finite.allSatisfy { $0 > 0 && $0 <= 60 }, "\(name): bounds \(bounds)")
                }
            } else {
                #expect(family.samples.allSatisfy { $0.name == name }, "\(name): stray samples \(family.samples.map(\.name))")
            }
        }

        // The three inferences are there, in seconds: agentd's share of each cannot exceed what the
        // client waited in all (recorded in milliseconds, the sums would be 1000 times too large).
        #expect(exposition.value("agentd_infer_requests_total", ["outcome": "ok"]) == 3)
        #expect(exposition.value("agentd_infer_duration_seconds_count") == 3)
        for name in ["agentd_infer_duration_seconds_sum", "agentd_queue_wait_seconds_sum"] {
            let sum = try #require(exposition.value(name))
            #expect(sum >= 0 && sum <= elapsedSeconds, "\(name) \(sum) s, yet the client waited \(elapsedSeconds) s in all")
        }
        #expect(try #require(exposition.value("agentd_infer_duration_seconds_sum")) > 0)
        #expect(exposition.value("agentd_batch_size_sum") == 6)
        #expect(exposition.value("agentd_model_version") == 1)
        // The FP32 re-run counter follows the scheduler's cumulative count across scrapes.
        let before = try #require(exposition.value("agentd_fp32_escalations_total"))
        #expect(try agent.agentctl(["infer", "--input", Agentctl.digits, "--json"]).status == 0)
        // The scheduler counts a batch's re-runs just after answering it: poll until the two agree.
        var after = before, escalations = -1
        for _ in 0..<500 where after != Double(escalations) {
            usleep(10_000)
            after = try #require(try Exposition(try agent.client.metrics()).value("agentd_fp32_escalations_total"))
            escalations = try agent.client.status().serving.escalations
        }
        #expect(after == Double(escalations) && after > before, "counter \(before) → \(after), scheduler \(escalations)")
        let again = try Exposition(try agent.client.metrics()).value("agentd_fp32_escalations_total")
        #expect(again == after, "a scrape with no new re-runs moved the counter from \(after) to \(again ?? -1)")

        if let promtool = Self.promtool() {
            let lint = try Self.run(promtool, ["check", "metrics"], input: text)
            #expect(lint.status == 0 && lint.output.isEmpty, "promtool check metrics (exit \(lint.status)):\n\(lint.output)")
        } else if ProcessInfo.processInfo.environment["CI"] != nil {
            Issue.record("no promtool on PATH or in $PROMTOOL: make test provides one")
        } else {
            print("SKIPPED promtool check metrics: no promtool on PATH or in $PROMTOOL (make test provides one)")
        }
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
    }

    /// `$PROMTOOL`, else `promtool` on PATH.
    static func promtool() -> String? {
        let environment = ProcessInfo.processInfo.environment
        if let explicit = environment["PROMTOOL"], !explicit.isEmpty { return explicit }
        return (environment["PATH"] ?? "").split(separator: ":").map { $0 + "/promtool" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Runs `tool` with `input` on stdin; stdout and stderr together, through a file (no pipe to fill).
    static func run(_ tool: String, _ arguments: [String], input: String) throws -> (status: Int32, output: String) {
        let dir = temporaryDirectory("promtool")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try input.write(toFile: dir + "/in", atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: dir + "/out", contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/out"))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        process.standardInput = try FileHandle(forReadingFrom: URL(fileURLWithPath: dir + "/in"))
        process.standardOutput = out
        process.standardError = out
        try process.runToExit()
        try out.close()
        return (process.terminationStatus, (try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? "")
    }
}

/// The Prometheus text format, parsed just enough to check it: families from `# HELP` and
/// `# TYPE`, samples assigned to their family (histogram series by their suffix).
struct Exposition {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    struct Family {
        var help: String?
        var type: String?
        var samples: [Sample] = []
    }

    struct Malformed: Error, CustomStringConvertible {
        var line: String
        var description: String { "malformed exposition line: \(line)" }
    }

    var families: [String: Family] = [:]

    init(_ text: String) throws {
        var samples: [Sample] = []
        for line in text.split(separator: "\n").map(String.init) where !line.isEmpty {
            if line.hasPrefix("#") {
                let parts = line.split(separator: " ", maxSplits: 3).map(String.init)
                guard parts.count >= 3 else { continue }  // a plain comment
                if parts[1] == "HELP" { families[parts[2], default: Family()].help = parts.count == 4 ? parts[3] : "" }
                if parts[1] == "TYPE" { families[parts[2], default: Family()].type = parts.count == 4 ? parts[3] : "" }
                continue
            }
            samples.append(try Self.sample(line))
        }
        for sample in samples {
            // A sample whose own name is untyped belongs to the histogram or summary it suffixes.
            var family = sample.name
            if families[family] == nil {
                for suffix in ["_bucket", "_sum", "_count"] where sample.name.hasSuffix(suffix) {
                    family = String(sample.name.dropLast(suffix.count))
                }
            }
            families[family, default: Family()].samples.append(sample)
        }
    }

    /// `name{label="value",...} number` or `name number`.
    static func sample(_ line: String) throws -> Sample {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...].replacingOccurrences(of: "+Inf", with: "inf"))
        else { throw Malformed(line: line) }
        let series = line[..<space]
        guard let brace = series.firstIndex(of: "{") else { return Sample(name: String(series), labels: [:], value: value) }
        guard series.hasSuffix("}") else { throw Malformed(line: line) }
        var labels: [String: String] = [:]
        for pair in series[series.index(after: brace)..<series.index(before: series.endIndex)].split(separator: ",") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, kv[1].hasPrefix("\""), kv[1].hasSuffix("\"") else { throw Malformed(line: line) }
            labels[String(kv[0])] = String(kv[1].dropFirst().dropLast())
        }
        return Sample(name: String(series[..<brace]), labels: labels, value: value)
    }

    /// The value of one series, if it is there.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        families.values.lazy.flatMap(\.samples).first { $0.name == name && $0.labels == labels }?.value
    }
}
