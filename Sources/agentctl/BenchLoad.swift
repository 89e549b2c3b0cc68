import AgentAPI
import ArgumentParser
import Foundation

struct BenchLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-load",
        abstract: "Closed-loop load on agentd: N clients each sending one-row requests back to back.",
        discussion: """
            Each client keeps one connection open (HTTP keep-alive) and waits for its answer before
            sending the next, for --seconds. Reports answered requests per second, latency p50/p99,
            and how fast queue-full (503) refusals came back. Rows are seeded random values of the
            served model's input size, sent as JSON or as little-endian F32 (--binary).
            --new-connections opens a connection per request instead (what a one-shot client costs).
            --honor-retry-after makes clients back off after a 503 as Retry-After asks; without it
            they retry at once, the harshest overload.
            --feedback-rate N sends N labelled feedback samples per second alongside (one more
            client, its own connection), to show that feedback writes do not slow inference.
            Example: agentctl bench-load --clients 64 --seconds 5 --json
            """)
    @OptionGroup var socket: SocketOption
    @Option(help: "Concurrent clients.") var clients: Int = 64
    @Option(help: "Duration in seconds.") var seconds: Double = 5
    @Option(help: "Rows per request.") var rows: Int = 1
    @Flag(help: "Send rows as application/octet-stream (little-endian F32) instead of JSON.") var binary = false
    @Flag(help: "Open a new connection for every request instead of keeping one per client.") var newConnections = false
    @Flag(help: "After a 503, wait as long as its Retry-After says (as a well-behaved client does).") var honorRetryAfter = false
    @Option(help: "Feedback samples per second sent alongside the load (0: none).") var feedbackRate: Double = 0
    @Flag(help: "Print the result as JSON.") var json = false

    struct Result: Codable {
        var clients: Int
        var seconds: Double
        var rows: Int
        var format: String
        var connections: String
        var answered: Int
        var ok: Int
        var rejected: Int
        var expired: Int
        var errors: Int
        var requestsPerS: Double
        var samplesPerS: Double
        var p50Ms: Double
        var p99Ms: Double
        var rejectP50Ms: Double?
        var rejectP99Ms: Double?
        var feedbackOk: Int?
        var feedbackErrors: Int?
        var feedbackPerS: Double?
        var feedbackP99Ms: Double?
    }

    /// One sample every 1/rate s on its own connection until `end`: (stored, refused, latencies in ms).
    static func sendFeedback(_ client: AgentClient, rate: Double, inputSize n: Int, until end: Date) -> (ok: Int, errors: Int, ms: [Double]) {
        guard rate > 0, let label = try? client.infer(InferRequest(inputs: [[Float](repeating: 0, count: n)])).results.first?.label,
              let body = try? JSONEncoder().encode(FeedbackRequest(input: (0..<n).map { Float($0 % 16) }, label: label)) else { return (0, 0, []) }
        var connection = try? client.connect()
        var ok = 0, errors = 0, ms: [Double] = []
        var next = Date()
        while next < end {
            let wait = next.timeIntervalSinceNow
            if wait > 0 { Thread.sleep(forTimeInterval: wait) }
            next += 1 / rate
            let t0 = DispatchTime.now().uptimeNanoseconds
            if connection == nil { connection = try? client.connect() }
            let status = (try? connection?.send("POST", "/v1/feedback", body: body))?.status ?? 0
            if status == 200 { ok += 1; ms.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6) } else { errors += 1; connection = nil }
        }
        return (ok, errors, ms)
    }

    func run() throws {
        try talkingToDaemon {
            let client = socket.client
            let status = try client.status()
            guard let model = status.model else { throw ValidationError("agentd has no model loaded") }
            guard let n = status.inputSize else { throw ValidationError("agentd did not report its model's input size") }
            final class Tally: @unchecked Sendable {
                let lock = NSLock()
                var latencies: [Double] = [], rejectLatencies: [Double] = []
                var ok = 0, rejected = 0, expired = 0, errors = 0
            }
            let tally = Tally()
            let end = Date(timeIntervalSinceNow: seconds)
            let group = DispatchGroup()
            let feedbackTally = Tally()
            if feedbackRate > 0 {
                group.enter()
                Thread { [feedbackRate] in
                    let r = Self.sendFeedback(client, rate: feedbackRate, inputSize: n, until: end)
                    feedbackTally.lock.lock()
                    (feedbackTally.ok, feedbackTally.errors, feedbackTally.latencies) = (r.ok, r.errors, r.ms)
                    feedbackTally.lock.unlock()
                    group.leave()
                }.start()
            }
            for c in 0..<clients {
                group.enter()
                let t = Thread {
                    var state = UInt64(c + 1) &* 0x9E37_79B9_7F4A_7C15
                    let values: [[Float]] = (0..<rows).map { _ in
                        (0..<n).map { _ in
                            state = state &* 6364136223846793005 &+ 1442695040888963407
                            return Float(state >> 40) / Float(1 << 24) * 16
                        }
                    }
                    let body: Data, type: String
                    if binary {
                        body = InferRequest.f32Body(values.joined())
                        type = "application/octet-stream"
                    } else {
                        body = try! JSONEncoder().encode(InferRequest(inputs: values))
                        type = "application/json"
                    }
                    var connection: AgentClient.Connection? = newConnections ? nil : try? client.connect()
                    var mine: [Double] = [], mineRejects: [Double] = []
                    var o = 0, r = 0, x = 0, e = 0
                    while Date() < end {
                        let t0 = DispatchTime.now().uptimeNanoseconds
                        var answer: AgentClient.Response?
                        if newConnections {
                            answer = try? client.send("POST", "/v1/infer", body: body, contentType: type)
                        } else {
                            if connection == nil { connection = try? client.connect() }
                            do {
                                answer = try connection?.send("POST", "/v1/infer", body: body, contentType: type)
                            } catch {
                                connection = nil
                            }
                        }
                        let status = answer?.status ?? 0
                        let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
                        switch status {
                        case 200: o += 1; mine.append(ms)
                        case 503:
                            r += 1
                            mineRejects.append(ms)
                            if honorRetryAfter, let wait = answer?.headers["retry-after"].flatMap(Double.init) {
                                Thread.sleep(forTimeInterval: min(wait, max(0, end.timeIntervalSinceNow)))
                            }
                        case 504: x += 1
                        default: e += 1
                        }
                    }
                    tally.lock.lock()
                    tally.latencies += mine
                    tally.rejectLatencies += mineRejects
                    tally.ok += o; tally.rejected += r; tally.expired += x; tally.errors += e
                    tally.lock.unlock()
                    group.leave()
                }
                t.start()
            }
            group.wait()
            let (latencies, rejectLatencies, ok, rejected, expired, errors) =
                (tally.latencies, tally.rejectLatencies, tally.ok, tally.rejected, tally.expired, tally.errors)
            func pct(_ v: [Double], _ p: Double) -> Double {
                guard !v.isEmpty else { return 0 }
                let s = v.sorted()
                return s[min(s.count - 1, Int(Double(s.count - 1) * p + 0.5))]
            }
            let result = Result(clients: clients, seconds: seconds, rows: rows, format: binary ? "f32" : "json",
                                connections: newConnections ? "per-request" : "keep-alive", answered: ok + rejected + expired + errors, ok: ok, rejected: rejected,
                                expired: expired, errors: errors, requestsPerS: Double(ok) / seconds,
                                samplesPerS: Double(ok * rows) / seconds, p50Ms: pct(latencies, 0.5), p99Ms: pct(latencies, 0.99),
                                rejectP50Ms: rejectLatencies.isEmpty ? nil : pct(rejectLatencies, 0.5),
                                rejectP99Ms: rejectLatencies.isEmpty ? nil : pct(rejectLatencies, 0.99),
                                feedbackOk: feedbackRate > 0 ? feedbackTally.ok : nil, feedbackErrors: feedbackRate > 0 ? feedbackTally.errors : nil,
                                feedbackPerS: feedbackRate > 0 ? Double(feedbackTally.ok) / seconds : nil,
                                feedbackP99Ms: feedbackRate > 0 ? pct(feedbackTally.latencies, 0.99) : nil)
            if json { printJSON(result); return }
            print("\(model.name) v\(model.version) (\(model.precision)), \(clients) clients, \(seconds) s, \(rows) row(s) per request as \(result.format), \(result.connections) connections")
            print(String(format: "%.0f requests/s (%.0f samples/s), p50 %.2f ms, p99 %.2f ms", result.requestsPerS, result.samplesPerS, result.p50Ms, result.p99Ms))
            print("ok \(ok), queue full \(rejected)" + (result.rejectP99Ms.map { String(format: " (answered in %.3f ms at p50, %.3f ms at p99)", result.rejectP50Ms ?? 0, $0) } ?? "") +
                  ", deadline \(expired), other errors \(errors)")
            if let stored = result.feedbackOk {
                print(String(format: "feedback alongside: %d stored (%.0f/s, p99 %.2f ms), %d refused", stored, result.feedbackPerS ?? 0,
                             result.feedbackP99Ms ?? 0, result.feedbackErrors ?? 0))
            }
        }
    }
}
