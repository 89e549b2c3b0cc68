import AgentAPI
import AgentConfig
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Serving
import Tensor

/// The local API: HTTP/1.1 + JSON over the Unix socket (README, "Local API").
enum APIServer {
    typealias Context = BasicRequestContext

    /// The API's JSON: sorted keys, non-finite numbers as "inf", "-inf", "nan".
    static func encode<T: Encodable>(_ value: T) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return (try? encoder.encode(value)) ?? Data("{}".utf8)
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: encode(value))))
    }

    static func error(_ status: HTTPResponse.Status, _ code: String, _ message: String, retryAfter: Int? = nil) -> Response {
        var r = json(ErrorResponse(code: code, message: message), status: status)
        if let retryAfter { r.headers[.retryAfter] = String(retryAfter) }
        return r
    }

    /// The body, or nil when it is over `limit` bytes (declared or actual).
    static func body(_ request: inout Request, limit: Int) async throws -> Data? {
        if let declared = request.headers[.contentLength].flatMap(Int.init), declared > limit { return nil }
        do {
            let buffer = try await request.collectBody(upTo: limit)
            return Data(buffer.readableBytesView)
        } catch {
            // collectBody fails only when the body outgrows the limit.
            return nil
        }
    }

    static let queueFullMessage = "the request queue is full (serving.queue_capacity)"
    /// The 503 body the event loop sends when it refuses a request (OverloadShedder).
    static let queueFullBody = ByteBuffer(bytes: encode(ErrorResponse(code: "queue_full", message: queueFullMessage)))

    static func router(_ agent: Agent) -> Router<Context> {
        let router = Router(context: Context.self)
        router.add(middleware: JSONErrorMiddleware())
        router.get("/healthz") { _, _ in json(["status": "ok"]) }
        router.get("/readyz") { _, _ in
            agent.isReady ? json(["status": "ready"]) : error(.serviceUnavailable, "not_ready", "no model is loaded or agentd is stopping")
        }
        router.post("/v1/infer") { request, _ in await infer(agent, request) }
        router.post("/v1/feedback") { request, _ in await feedback(agent, request) }
        router.get("/v1/status") { _, _ in json(agent.status()) }
        router.get("/v1/models") { _, _ in
            do { return json(try agent.modelsResponse()) } catch { return Self.error(.internalServerError, "registry", "\(error)") }
        }
        router.post("/v1/models/rollback") { request, _ in
            var request = request
            guard let data = try await body(&request, limit: 4096) else { return error(.contentTooLarge, "too_large", "body over 4096 bytes") }
            let version: Int?
            if data.isEmpty {
                version = nil
            } else {
                guard let r = try? JSONDecoder().decode(RollbackRequest.self, from: data) else {
                    return error(.badRequest, "malformed", "expected {\"version\": N} or an empty body")
                }
                version = r.version
            }
            do {
                _ = try agent.models.rollback(to: version, adaptive: agent.config.model.adaptive)
                return json(try agent.modelsResponse())
            } catch let e as ModelError {
                return error(.unprocessableContent, "rollback_refused", e.message)
            } catch {
                return Self.error(.unprocessableContent, "rollback_refused", "\(error)")
            }
        }
        router.get("/v1/events") { request, _ in
            let limit = request.uri.queryParameters.get("limit", as: Int.self).map { min(max($0, 1), 1000) } ?? 50
            do { return json(EventsResponse(events: try agent.events(limit: limit))) } catch {
                return Self.error(.internalServerError, "events", "\(error)")
            }
        }
        router.get("/metrics") { _, _ in
            agent.refreshGauges()
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                            body: .init(byteBuffer: ByteBuffer(string: agent.metrics.render())))
        }
        return router
    }

    static func infer(_ agent: Agent, _ request: Request) async -> Response {
        var request = request
        let config = agent.config  // one locked read per request (SIGHUP may replace it)
        let limits = config.api
        guard let model = agent.models.slot.current else { return error(.serviceUnavailable, "no_model", "no model is loaded") }
        let data: Data
        do {
            guard let d = try await body(&request, limit: limits.maxBodyBytes) else {
                agent.metrics.requestsInvalid.increment()
                return error(.contentTooLarge, "too_large", "request body over \(limits.maxBodyBytes) bytes (api.max_body_bytes)")
            }
            data = d
        } catch {
            return Self.error(.badRequest, "malformed", "could not read the body: \(error)")
        }
        let n = model.inputCount
        var rows: [Float] = []
        var count = 0
        var priority = Priority.latency
        var deadline = config.serving.deadlineMs / 1000
        if request.headers[.contentType]?.hasPrefix("application/octet-stream") == true {
            guard data.count % (4 * n) == 0 else {
                agent.metrics.requestsInvalid.increment()
                return error(.unprocessableContent, "wrong_shape", "\(data.count) bytes are not whole rows of \(n) little-endian F32 values")
            }
            count = data.count / (4 * n)
            rows = data.withUnsafeBytes { raw in (0..<(count * n)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) } }
            if let p = request.headers[HTTPField.Name("X-Priority")!] { priority = Priority(rawValue: p) ?? .latency }
            if let d = request.headers[HTTPField.Name("X-Deadline-Ms")!].flatMap(Double.init), d > 0 { deadline = d / 1000 }
        } else {
            let decoded: InferCodec.Decoded
            if let fast = InferCodec.decode(data, rowLength: n) {
                decoded = fast
            } else {
                // Not the plain form: Foundation's decoder accepts the rest and words the errors.
                let slow: InferRequest
                do {
                    slow = try JSONDecoder().decode(InferRequest.self, from: data)
                } catch {
                    agent.metrics.requestsInvalid.increment()
                    return Self.error(.badRequest, "malformed", "expected JSON {\"inputs\": [[...], ...]}: \(describe(error))")
                }
                for (i, row) in slow.inputs.enumerated() where row.count != n {
                    agent.metrics.requestsInvalid.increment()
                    return error(.unprocessableContent, "wrong_shape", "inputs[\(i)] has \(row.count) values; the model takes \(n)")
                }
                decoded = InferCodec.Decoded(rows: slow.inputs.flatMap { $0 }, count: slow.inputs.count,
                                             priority: slow.priority, deadlineMs: slow.deadlineMs)
            }
            (rows, count) = (decoded.rows, decoded.count)
            if let p = decoded.priority {
                guard let parsed = Priority(rawValue: p) else {
                    return error(.badRequest, "malformed", "priority '\(p)' is not latency or throughput")
                }
                priority = parsed
            }
            if let d = decoded.deadlineMs {
                guard d > 0, d.isFinite else { return error(.badRequest, "malformed", "deadline_ms must be a positive number") }
                deadline = d / 1000
            }
        }
        guard count > 0 else {
            agent.metrics.requestsInvalid.increment()
            return error(.badRequest, "empty", "no input rows")
        }
        guard count <= limits.maxRowsPerRequest else {
            agent.metrics.requestsInvalid.increment()
            return error(.contentTooLarge, "too_many_rows", "\(count) rows; at most \(limits.maxRowsPerRequest) per request (api.max_rows_per_request)")
        }
        if let bad = rows.firstIndex(where: { !$0.isFinite }) {
            agent.metrics.requestsInvalid.increment()
            return error(.unprocessableContent, "not_finite", "row \(bad / n) value \(bad % n) is \(rows[bad]), not a finite number")
        }
        let started = DispatchTime.now().uptimeNanoseconds
        switch await agent.scheduler.infer(rows: rows, count: count, priority: priority, deadline: deadline) {
        case .failure(.queueFull(let retry)):
            agent.metrics.requestsRejected.increment()
            return error(.serviceUnavailable, "queue_full", queueFullMessage, retryAfter: retry)
        case .failure(.deadlineExceeded):
            agent.metrics.requestsExpired.increment()
            return error(.gatewayTimeout, "deadline", "the deadline of \(Int(deadline * 1000)) ms passed before the request was computed")
        case .failure(.shuttingDown):
            return error(.serviceUnavailable, "stopping", "agentd is stopping", retryAfter: 5)
        case .failure(.noModel):
            return error(.serviceUnavailable, "no_model", "no model is loaded")
        case .failure(.wrongShape(let e, let g)):
            return error(.unprocessableContent, "wrong_shape", "rows have \(g) values; the model takes \(e)")
        case .success(let out):
            agent.metrics.requestsOK.increment()
            agent.metrics.latency.record(Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9)
            let used = out.model
            let k = used.outputCount
            let ids = agent.recent.record(rows: rows, count: count, rowLength: n, modelVersion: used.version)
            var results: [InferResult] = []
            results.reserveCapacity(count)
            for r in 0..<count {
                let scores = Array(out.scores[(r * k)..<((r + 1) * k)])
                let c = scores.argmax()
                results.append(InferResult(id: ids[r], class: c, label: used.labels[c], scores: scores, precision: out.precision))
            }
            let answer = InferCodec.encode(InferResponse(model: ModelRef(name: used.name, version: used.version, precision: used.precision), results: results))
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: answer)))
        }
    }

    static func feedback(_ agent: Agent, _ request: Request) async -> Response {
        var request = request
        guard let model = agent.models.slot.current else { return error(.serviceUnavailable, "no_model", "no model is loaded") }
        let data: Data
        do {
            let limit = agent.config.api.maxBodyBytes
            guard let d = try await body(&request, limit: limit) else {
                return error(.contentTooLarge, "too_large", "request body over \(limit) bytes")
            }
            data = d
        } catch {
            return Self.error(.badRequest, "malformed", "could not read the body")
        }
        guard let f = try? JSONDecoder().decode(FeedbackRequest.self, from: data) else {
            return error(.badRequest, "malformed", "expected {\"id\": \"...\", \"label\": \"...\"} or {\"input\": [...], \"label\": \"...\"}")
        }
        guard model.labels.contains(f.label) else {
            return error(.unprocessableContent, "unknown_label", "label '\(f.label)' is not one of the model's labels (\(model.labels.prefix(12).joined(separator: ", ")))")
        }
        let input: [Float]
        var version: Int? = model.version
        if let id = f.id {
            guard let entry = agent.recent.lookup(id) else {
                return error(.notFound, "unknown_id", "inference '\(id)' is unknown or too old to remember; send its input instead")
            }
            input = entry.input
            version = entry.modelVersion
        } else if let given = f.input {
            guard given.count == model.inputCount else {
                return error(.unprocessableContent, "wrong_shape", "input has \(given.count) values; the model takes \(model.inputCount)")
            }
            guard given.allSatisfy({ $0.isFinite }) else { return error(.unprocessableContent, "not_finite", "input holds a value that is not finite") }
            input = given
        } else {
            return error(.badRequest, "malformed", "give 'id' or 'input'")
        }
        do {
            let stored = try agent.database.storeFeedback(inferenceId: f.id, label: f.label, input: input, modelVersion: version)
            agent.metrics.feedback.increment()
            return json(FeedbackResponse(stored: true, sampleId: stored.id, samples: stored.count))
        } catch {
            return Self.error(.internalServerError, "store", "\(error)")
        }
    }

    static func describe(_ error: Error) -> String {
        guard let e = error as? DecodingError else { return "\(error)" }
        switch e {
        case .keyNotFound(let k, _): return "missing '\(k.stringValue)'"
        case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx):
            return "wrong type at \(ctx.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined())"
        case .dataCorrupted: return "not valid JSON"
        @unknown default: return "cannot be decoded"
        }
    }
}

/// Errors thrown by routing (unknown path, wrong method) answered in the API's JSON error shape.
struct JSONErrorMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as HTTPError {
            let code = e.status == .notFound ? "not_found" : e.status == .methodNotAllowed ? "method_not_allowed" : "http_\(e.status.code)"
            return APIServer.error(e.status, code, e.body ?? "\(request.method) \(request.uri.path): \(e.status.reasonPhrase)")
        }
    }
}
