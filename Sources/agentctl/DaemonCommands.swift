import AgentAPI
import AgentConfig
import ArgumentParser
import Foundation
import Training

/// `--socket` for every command that talks to agentd.
struct SocketOption: ParsableArguments {
    @Option(help: ArgumentHelp("agentd's socket (default $AGENTD_SOCKET or /run/agentd/agentd.sock).", valueName: "PATH"))
    var socket: String?

    var client: AgentClient {
        AgentClient(socketPath: socket ?? ProcessInfo.processInfo.environment["AGENTD_SOCKET"] ?? AgentClient.defaultSocket)
    }
}

/// Runs a daemon call: an unreachable daemon is one line and exit 3; an error answer one line and exit 1.
func talkingToDaemon(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as AgentClientError {
        printError("agentctl: \(e)")
        if case .unreachable = e { throw ExitCode(3) }
        throw ExitCode(1)
    } catch let e as ExitCode {
        throw e
    } catch {
        printError("agentctl: \(error)")
        throw ExitCode(1)
    }
}

func age(_ seconds: Double) -> String {
    let s = Int(seconds)
    if s < 60 { return "\(s)s" }
    if s < 3600 { return "\(s / 60)min \(s % 60)s" }
    if s < 86400 { return "\(s / 3600)h \(s % 3600 / 60)min" }
    return "\(s / 86400)d \(s % 86400 / 3600)h"
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "agentd's state: model, serving figures, queue, rejections, recent events.",
        discussion: "Exit status 3 when agentd cannot be reached. --json gives every field.")
    @OptionGroup var socket: SocketOption
    @Flag(help: "Print the full status as JSON.") var json = false

    func run() throws {
        try talkingToDaemon {
            let s = try socket.client.status()
            if json { printJSON(s); return }
            let dot = s.state == "serving" ? "●" : "○"
            print("\(dot) agentd \(s.version) — \(s.state)")
            print("      pid: \(s.pid), up \(age(s.uptimeS)), socket \(s.socket)")
            if let m = s.model { print("    model: \(m.name) version \(m.version) (\(m.precision))") } else { print("    model: none loaded") }
            if let m = s.modelMemory {
                func mb(_ bytes: Int) -> String { String(format: "%.1f MB", Double(bytes) / 1_048_576) }
                print("   memory: \(mb(m.totalBytes)) for the model: file \(mb(m.fileBytes)), integer weights \(mb(m.decodedBytes)), "
                      + "packed \(mb(m.packedBytes)), \(m.plans) plans of \(m.batch) × \(mb(m.planBufferBytes))")
            }
            let v = s.serving
            let wait = v.batchWaitMs.map { String(format: " (wait %.2g ms)", $0) } ?? ""
            print("  serving: \(v.workers) workers, batches up to \(v.maxBatchSize)\(wait), \(String(format: "%.1f", v.throughputPerS)) samples/s over 10 s")
            print("  latency: p50 \(String(format: "%.2f", v.latencyP50Ms)) ms, p99 \(String(format: "%.2f", v.latencyP99Ms)) ms; mean batch \(String(format: "%.1f", v.meanBatchSize))")
            print(" requests: \(v.requests) (\(v.samples) samples), queue depth \(v.queueDepth), rejected \(v.rejectedQueueFull) (queue full), expired \(v.deadlineExpired) (deadline), fp32 re-runs \(v.escalations)")
            print(" feedback: \(s.feedbackSamples) labelled samples; drift \(s.drift.state); mqtt \(s.mqtt.state)")
            print("  learner: \(s.learner.state)\(s.learner.detail.map { " — \($0)" } ?? "")")
            if let f = s.fleet {
                let link = f.broker.isEmpty ? "no broker" : "\(f.state) to \(f.broker) as \(f.device)\(f.protocolVersion.map { " (MQTT \($0))" } ?? "")"
                print("    fleet: \(link); outbox \(f.outboxRows) messages (\(f.outboxBytes) bytes), \(f.outboxDropped) dropped; \(f.bytesSent) bytes sent")
                if f.state != "connected", !f.broker.isEmpty, let e = f.lastError { print("           last error: \(e)") }
                print("           last deployment: \(f.lastDeployment ?? "none")")
            }
            if !s.lastEvents.isEmpty {
                print("\nrecent events:")
                for e in s.lastEvents { print("  \(e.ts)  \(e.kind): \(e.message)") }
            }
        }
    }
}

struct Infer: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send rows to agentd and print class and scores.",
        discussion: """
            Rows come from --input (a JSON file {"inputs": [[...]]} or a bare array of rows, or a CSV
            file with a header; a 'label' column is ignored), or from stdin when --input is absent or '-'.
            Example: agentctl infer --input tools/data/digits.csv --json
            """)
    @OptionGroup var socket: SocketOption
    @Option(help: ArgumentHelp("JSON or CSV file of rows; '-' or absent reads stdin.", valueName: "FILE")) var input: String?
    @Option(help: "latency or throughput.") var priority: String = "latency"
    @Option(help: "Deadline in milliseconds.") var deadlineMs: Double?
    @Flag(help: "Print agentd's answer as JSON.") var json = false

    func run() throws {
        try talkingToDaemon {
            let data: Data
            if let input, input != "-" {
                guard let d = FileManager.default.contents(atPath: input) else { throw ValidationError("\(input): no such file") }
                data = d
            } else {
                data = FileHandle.standardInput.readDataToEndOfFile()
            }
            let rows = try parseRows(data, name: input ?? "stdin")
            // Large inputs go in requests of 256 rows (the daemon caps rows per request).
            var answer: InferResponse? = nil
            for start in stride(from: 0, to: max(rows.count, 1), by: 256) {
                let part = Array(rows[start..<min(start + 256, rows.count)])
                let r = try socket.client.infer(InferRequest(inputs: part, priority: priority, deadlineMs: deadlineMs))
                if answer == nil { answer = r } else { answer!.results += r.results }
            }
            guard let answer else { return }
            if json { printJSON(answer); return }
            for r in answer.results {
                print("\(r.id)  \(r.label)  \(String(format: "%.4f", r.scores[r.class]))  (\(r.precision))")
            }
        }
    }

    func parseRows(_ data: Data, name: String) throws -> [[Float]] {
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if text.hasPrefix("{") || text.hasPrefix("[") {
            if let r = try? JSONDecoder().decode(InferRequest.self, from: Data(text.utf8)) { return r.inputs }
            if let rows = try? JSONDecoder().decode([[Float]].self, from: Data(text.utf8)) { return rows }
            throw ValidationError("\(name): not JSON rows ({\"inputs\": [[...]]} or [[...]])")
        }
        // CSV: the same reader as `agentctl model eval` (header row, a 'label' column ignored).
        let set = try DataSet.parse(text, file: name, requireLabels: false)
        return (0..<set.count).map { Array(set.features[($0 * set.featureCount)..<(($0 + 1) * set.featureCount)]) }
    }
}

struct Feedback: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Tell agentd the true label of an inference (by id) or of an input.",
        discussion: """
            Examples:
              agentctl feedback --id 1-42 --label 3
              agentctl feedback --input '[0,1,...]' --label 7
              agentctl feedback --data labelled.csv     # every row with its 'label' column
            """)
    @OptionGroup var socket: SocketOption
    @Option(help: "An inference id from 'agentctl infer'.") var id: String?
    @Option(help: "The input row as a JSON array.") var input: String?
    @Option(help: "The true label.") var label: String?
    @Option(help: ArgumentHelp("Send every row of a CSV file with its 'label' column.", valueName: "CSV")) var data: String?
    @Flag(help: "Print the answer as JSON.") var json = false

    func validate() throws {
        if data != nil {
            if id != nil || input != nil || label != nil { throw ValidationError("--data takes the labels from the file; give it alone") }
            return
        }
        if (id == nil) == (input == nil) { throw ValidationError("give --id or --input (with --label), or --data") }
        if label == nil { throw ValidationError("--label is needed with --id or --input") }
    }

    func run() throws {
        if let data {
            let rows = try DataSet.load(path: data)
            try talkingToDaemon {
                let client = socket.client
                var last: FeedbackResponse?
                for i in 0..<rows.count {
                    let row = Array(rows.features[(i * rows.featureCount)..<((i + 1) * rows.featureCount)])
                    last = try client.feedback(FeedbackRequest(id: nil, input: row, label: rows.classNames[rows.labels![i]]))
                }
                if json { printJSON(last.map { ["sent": rows.count, "samples": $0.samples] } ?? ["sent": 0]) } else {
                    print("sent \(rows.count) labelled rows (\(last?.samples ?? 0) labelled samples stored)")
                }
            }
            return
        }
        let label = self.label!
        try talkingToDaemon {
            let row = try input.map { text -> [Float] in
                guard let r = try? JSONDecoder().decode([Float].self, from: Data(text.utf8)) else {
                    throw ValidationError("--input: not a JSON array of numbers")
                }
                return r
            }
            let r = try socket.client.feedback(FeedbackRequest(id: id, input: row, label: label))
            if json { printJSON(r) } else { print("stored sample \(r.sampleId) (\(r.samples) labelled samples)") }
        }
    }
}

struct Models: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Registered model versions; the active one is marked.")
    @OptionGroup var socket: SocketOption
    @Flag(help: "Print as JSON.") var json = false

    func run() throws {
        try talkingToDaemon {
            let r = try socket.client.models()
            if json { printJSON(r); return }
            print(table(["", "version", "name", "precision", "created", "sha256", "source", "lineage"],
                        r.models.map { m in
                            let lineage = m.lineage.map { "\($0.kind) from v\($0.base): \($0.labels) labels, \($0.steps) steps" } ?? ""
                            return [m.active ? "*" : "", "\(m.version)", m.name, m.precision, m.created, String(m.sha256.prefix(12)), m.source, lineage]
                        },
                        rightAligned: [1]))
        }
    }
}

struct Rollback: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make agentd serve an earlier registered version (default: the one before the active).")
    @OptionGroup var socket: SocketOption
    @Argument(help: "Registry version (see 'agentctl models').") var version: Int?
    @Flag(help: "Print as JSON.") var json = false

    func run() throws {
        try talkingToDaemon {
            let r = try socket.client.rollback(to: version)
            if json { printJSON(r); return }
            if let a = r.models.first(where: \.active) { print("now serving \(a.name) version \(a.version) (\(a.precision))") }
        }
    }
}

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "agentd's event log, oldest first.")
    @OptionGroup var socket: SocketOption
    @Option(help: "How many of the newest events.") var limit: Int = 50
    @Flag(help: "Print as JSON.") var json = false

    func run() throws {
        try talkingToDaemon {
            let r = try socket.client.events(limit: limit)
            if json { printJSON(r); return }
            for e in r.events { print("\(e.ts)  \(e.kind): \(e.message)") }
        }
    }
}

struct MetricsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "metrics", abstract: "agentd's Prometheus metrics (text format).")
    @OptionGroup var socket: SocketOption
    func run() throws {
        try talkingToDaemon { print(try socket.client.metrics(), terminator: "") }
    }
}

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Work with agentd's configuration.",
                                                    subcommands: [ConfigCheck.self])
}

struct ConfigCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check a configuration file: unknown keys, wrong types, out-of-range values, one line each.")
    @Argument(help: "The file (default /etc/agentd/agentd.toml).") var path: String = "/etc/agentd/agentd.toml"
    @Flag(help: "Print the problems as JSON.") var json = false

    struct Problem: Codable { var key: String?; var message: String }

    func run() throws {
        do {
            _ = try AgentConfig.load(path: path)
            if json { printJSON([Problem]()) } else { print("\(path): ok") }
        } catch let e as ConfigErrors {
            if json { printJSON(e.problems.map { Problem(key: $0.key, message: $0.message) }) } else { for p in e.problems { printError(p.description) } }
            throw ExitCode(1)
        }
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "agentctl's version, and agentd's when it is reachable.")
    @OptionGroup var socket: SocketOption
    func run() throws {
        print("agentctl \(agentVersion)")
        if let s = try? socket.client.status() { print("agentd \(s.version) (pid \(s.pid))") }
    }
}

struct DriftCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drift",
        abstract: "Drift monitoring: each signal's score against its calibrated threshold, and the last alarm.",
        discussion: """
            States: warming_up (no reference yet: the first drift.warmup_rows rows become one),
            ok, warning (a score above half its threshold), drift (a score above its threshold;
            back to ok once every score is below half of its own). Scores are KL(window ‖
            reference) with smoothing; PSI and Jensen–Shannon divergence are shown beside them.
            'top' lists the input features (or embedding directions) that moved most.
            """,
        subcommands: [Show.self, Reset.self], defaultSubcommand: Show.self)

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the drift state (default).")
        @OptionGroup var socket: SocketOption
        @Flag(help: "Print the answer of GET /v1/drift as it is.") var json = false

        func run() throws {
            try talkingToDaemon {
                let r = try socket.client.drift()
                if json { printJSON(r); return }
                DriftCommand.print(r)
            }
        }
    }

    struct Reset: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Clear the windows and alarms and go back to the model file's reference (admin).",
            discussion: "A model file without a reference starts a new warm-up on the next live rows.")
        @OptionGroup var socket: SocketOption
        @Flag(help: "Print as JSON.") var json = false

        func run() throws {
            try talkingToDaemon {
                let r = try socket.client.driftReset()
                if json { printJSON(r); return }
                Swift.print("drift monitoring reset")
                DriftCommand.print(r)
            }
        }
    }

    static func print(_ r: DriftResponse) {
        var head = "state: \(r.state)"
        if let v = r.modelVersion { head += ", model version \(v)" }
        if let ref = r.reference { head += ", \(r.samples) samples against the \(ref.source) reference (\(ref.rows) rows)" }
        if let w = r.warmup { head += ", warming up: \(w.rows) of \(w.of) rows" }
        if r.dropped > 0 { head += ", \(r.dropped) rows not observed (staging full)" }
        Swift.print(head)
        if !r.signals.isEmpty {
            Swift.print(table(["signal", "state", "score", "threshold", "ratio", "window", "psi", "js", "alarms", "top features"],
                              r.signals.map { s in
                                  [s.name, s.state, String(format: "%.4f", s.score), String(format: "%.4f", s.threshold),
                                   String(format: "%.2f", s.score / s.threshold), "\(s.filled)/\(s.window)", String(format: "%.4f", s.psi),
                                   String(format: "%.4f", s.js), s.alarms ? "yes" : "no",
                                   s.top.prefix(3).map { "\($0.feature)" }.joined(separator: ", ")]
                              }, rightAligned: [2, 3, 4, 5, 6, 7]))
        }
        if let a = r.lastAlarm {
            Swift.print("last alarm: \(a.signal) at \(a.at) (sample \(a.sample)), score \(String(format: "%.4f", a.score)) > \(String(format: "%.4f", a.threshold))"
                        + (a.cleared.map { ", cleared \($0)" } ?? ", not cleared"))
        }
    }
}
