import AgentAPI
import AgentConfig
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Serving
import Store
import Tensor

/// Every refusal the API gives, rendered in one place (`response`): status, code, message.
struct APIError: Error, Sendable {
    var status: HTTPResponse.Status
    var code: String
    var message: String
    var retryAfter: Int?

    static func malformed(_ message: String) -> APIError { APIError(status: .badRequest, code: "malformed", message: message) }
    static func tooLarge(_ message: String) -> APIError { APIError(status: .contentTooLarge, code: "too_large", message: message) }
    static func wrongShape(_ message: String) -> APIError { APIError(status: .unprocessableContent, code: "wrong_shape", message: message) }
    static let noModel = APIError(status: .serviceUnavailable, code: "no_model", message: "no model is loaded", retryAfter: 5)

    /// A database failure: what it was, never SQL text. A full disk is 507, a busy writer 503.
    static func store(_ e: StoreError, _ what: String) -> APIError {
        switch e {
        case .full: APIError(status: HTTPResponse.Status(code: 507, reasonPhrase: "Insufficient Storage"), code: "storage_full", message: "\(what): \(e)")
        case .queueFull: APIError(status: .serviceUnavailable, code: "store_busy", message: "\(what): \(e)", retryAfter: 1)
        case .closed: APIError(status: .serviceUnavailable, code: "stopping", message: "\(what): \(e)", retryAfter: 5)
        case .busy: APIError(status: .serviceUnavailable, code: "store_busy", message: "\(what): \(e)", retryAfter: 1)
        default: APIError(status: .internalServerError, code: "storage", message: "\(what): \(e)")
        }
    }

    var response: Response {
        var r = APIServer.json(ErrorResponse(code: code, message: message), status: status)
        if let retryAfter { r.headers[.retryAfter] = String(retryAfter) }
        return r
    }
}

/// The local API: HTTP/1.1 + JSON over the Unix socket (README, "Local API").
enum APIServer {
    typealias Context = AgentRequestContext

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

    /// The body, or 413 when it is over `limit` bytes (declared or actual).
    static func body(_ request: Request, limit: Int, limitName: String = "api.max_body_bytes") async throws -> Data {
        var request = request
        if let declared = request.headers[.contentLength].flatMap(Int.init), declared > limit {
            throw APIError.tooLarge("request body over \(limit) bytes (\(limitName))")
        }
        do {
            let buffer = try await request.collectBody(upTo: limit)
            return Data(buffer.readableBytesView)
        } catch is NIOTooManyBytesError {
            throw APIError.tooLarge("request body over \(limit) bytes (\(limitName))")
        } catch {
            throw APIError.malformed("the body could not be read: it ended early or the connection failed")
        }
    }

    static let queueFullMessage = "the request queue is full (serving.queue_capacity, serving.queue_bytes)"
    /// The 503 body the event loop sends when it refuses a request (OverloadShedder).
    static let queueFullBody = ByteBuffer(bytes: encode(ErrorResponse(code: "queue_full", message: queueFullMessage)))
    static let tooManyConnectionsBody = ByteBuffer(bytes: encode(ErrorResponse(
        code: "too_many_connections", message: "agentd has api.max_connections connections open; this one is closed")))

    static func router(_ agent: Agent) -> Router<Context> {
        let router = Router(context: Context.self)
        router.add(middleware: JSONErrorMiddleware())
        router.get("/healthz") { _, _ in json(["status": "ok"]) }
        router.get("/readyz") { _, _ in
            guard agent.isReady else {
                throw APIError(status: .serviceUnavailable, code: "not_ready", message: "no model is loaded or agentd is stopping")
            }
            return json(["status": "ready"])
        }
        router.post("/v1/infer") { request, _ in try await infer(agent, request) }
        router.post("/v1/feedback") { request, _ in try await feedback(agent, request) }
        router.get("/v1/status") { _, _ in json(agent.status()) }
        router.get("/v1/models") { _, _ in
            do {
                return json(try await Blocking.run(on: Blocking.reads) { try agent.modelsResponse() })
            } catch {
                throw APIError.store(StoreError(error), "the model registry could not be read")
            }
        }
        router.post("/v1/models/rollback") { request, context in try await rollback(agent, request, context) }
        router.get("/v1/drift") { _, _ in json(await Blocking.run(on: Blocking.reads) { agent.driftResponse() }) }
        router.post("/v1/drift/reset") { request, context in
            try await requireAdmin(agent, context, to: "reset drift monitoring")
            // The body means nothing here, but it is read (and bounded) like any other.
            _ = try await body(request, limit: 4096, limitName: "4096 bytes for a drift reset")
            do {
                return json(try await Blocking.run(on: Blocking.control) { try agent.resetDrift() })
            } catch {
                throw APIError(status: .internalServerError, code: "drift_not_saved", message: "drift state not saved: \(error)")
            }
        }
        router.post("/v1/learn") { request, context in
            try await requireAdmin(agent, context, to: "starting an update")
            let data = try await body(request, limit: 4096, limitName: "4096 bytes for a learn request")
            var dryRun = false
            if !data.isEmpty {
                guard let r = try? JSONDecoder().decode(LearnRequest.self, from: data) else {
                    throw APIError.malformed("the body must be a JSON object like {\"dry_run\": true}, or empty")
                }
                dryRun = r.dryRun ?? false
            }
            do {
                let asked = dryRun
                let id = try await Blocking.run(on: Blocking.learner) { try agent.learner.startJob(trigger: "api", dryRun: asked) }
                return json(LearnStarted(job: id), status: .accepted)
            } catch let e as LearnRefusal {
                switch e {
                case .busy: throw APIError(status: .conflict, code: "busy", message: e.description)
                case .noModel: throw APIError.noModel
                case .notReady: throw APIError(status: .serviceUnavailable, code: "not_ready", message: e.description, retryAfter: 1)
                case .store(let s): throw APIError.store(s, "the update was not started")
                }
            }
        }
        router.get("/v1/learn") { _, _ in
            guard let job = agent.learner.currentJob else { return json(LearnNone()) }
            return json(job)
        }
        router.get("/v1/replay") { _, _ in json(await Blocking.run(on: Blocking.reads) { agent.learner.replayResponse() }) }
        router.get("/v1/events") { request, _ in
            let text = request.uri.queryParameters.get("limit")
            guard let limit = text.map({ Int($0) }) ?? 50, (1...1000).contains(limit) else {
                throw APIError.malformed("limit must be an integer from 1 to 1000")
            }
            do {
                return json(EventsResponse(events: try await Blocking.run(on: Blocking.reads) { try agent.events(limit: limit) }))
            } catch {
                throw APIError.store(StoreError(error), "the event log could not be read")
            }
        }
        router.get("/metrics") { _, _ in
            agent.refreshGauges()
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                            body: .init(byteBuffer: ByteBuffer(string: agent.metrics.render())))
        }
        return router
    }

    /// Control endpoints answer only root, agentd's user and `api.admin_group` (SO_PEERCRED).
    static func requireAdmin(_ agent: Agent, _ context: Context, to action: String) async throws {
        let peer = await PeerCredentials.of(context.channel)
        let policy = AdminPolicy(adminGroup: agent.config.api.adminGroup)
        // The group database is a file read: off the pool.
        if case .refused(let why) = await Blocking.run(on: Blocking.reads, { policy.decide(peer) }) {
            throw APIError(status: .forbidden, code: "forbidden", message: "\(action) is a control operation: \(why)")
        }
    }

    static func rollback(_ agent: Agent, _ request: Request, _ context: Context) async throws -> Response {
        try await requireAdmin(agent, context, to: "rolling back")
        let data = try await body(request, limit: 4096, limitName: "4096 bytes for a rollback")
        let version: Int?
        if data.isEmpty {
            version = nil
        } else {
            guard let r = try? JSONDecoder().decode(RollbackRequest.self, from: data) else {
                throw APIError.malformed("expected {\"version\": N} (an integer) or an empty body")
            }
            version = r.version
        }
        let adaptive = agent.config.model.adaptive
        do {
            _ = try await Blocking.run(on: Blocking.control) { try agent.models.rollback(to: version, adaptive: adaptive) }
        } catch let e as ModelError {
            throw APIError(status: .unprocessableContent, code: "rollback_refused", message: e.message)
        } catch {
            if let e = StoreError.from(error) { throw APIError.store(e, "the rollback was not made") }
            // The target's file no longer loads: refused, the serving model unchanged.
            throw APIError(status: .unprocessableContent, code: "rollback_refused", message: "\(error)")
        }
        // The rollback took effect; a failure to list the registry now must not say otherwise.
        guard let listed = try? await Blocking.run(on: Blocking.reads, { try agent.modelsResponse() }) else {
            return json(["status": "rolled back; the registry could not be listed"])
        }
        return json(listed)
    }

    /// What a request asked for besides its rows.
    struct Options {
        var priority = Priority.latency
        var deadline: Double
    }

    /// A deadline in milliseconds from a request: finite and positive, clamped to
    /// `serving.max_deadline_ms`; in seconds.
    static func deadline(_ ms: Double, from source: String, serving: AgentConfig.Serving) throws -> Double {
        guard ms.isFinite, ms > 0 else { throw APIError.malformed("\(source) must be a positive number of milliseconds, not \(ms)") }
        return min(ms, serving.maxDeadlineMs) / 1000
    }

    static func priority(_ text: String, from source: String) throws -> Priority {
        guard let p = Priority(rawValue: text) else { throw APIError.malformed("\(source) '\(text.prefix(64))' is not latency or throughput") }
        return p
    }

    static func decodeOctetStream(_ request: Request, _ data: Data, rowLength n: Int, serving: AgentConfig.Serving) throws -> (rows: [Float], count: Int, Options) {
        guard data.count % (4 * n) == 0 else {
            throw APIError.wrongShape("\(data.count) bytes are not whole rows of \(n) little-endian F32 values")
        }
        let count = data.count / (4 * n)
        let rows = data.withUnsafeBytes { raw in (0..<(count * n)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) } }
        var options = Options(deadline: serving.deadlineMs / 1000)
        if let p = request.headers[HTTPField.Name("X-Priority")!] { options.priority = try priority(p, from: "X-Priority") }
        if let text = request.headers[HTTPField.Name("X-Deadline-Ms")!] {
            guard let ms = Double(text.trimmingCharacters(in: .whitespaces)) else {
                throw APIError.malformed("X-Deadline-Ms '\(text.prefix(64))' is not a number of milliseconds")
            }
            options.deadline = try deadline(ms, from: "X-Deadline-Ms", serving: serving)
        }
        return (rows, count, options)
    }

    static func decodeJSON(_ data: Data, rowLength n: Int, serving: AgentConfig.Serving) throws -> (rows: [Float], count: Int, Options) {
        let decoded: InferCodec.Decoded
        if let fast = InferCodec.decode(data, rowLength: n) {
            decoded = fast
        } else {
            // Not the plain form: Foundation's decoder accepts the rest and words the errors.
            let slow: InferRequest
            do {
                slow = try JSONDecoder().decode(InferRequest.self, from: data)
            } catch {
                throw APIError.malformed("expected JSON {\"inputs\": [[...], ...]}: \(describe(error))")
            }
            for (i, row) in slow.inputs.enumerated() where row.count != n {
                throw APIError.wrongShape("inputs[\(i)] has \(row.count) values; the model takes \(n)")
            }
            decoded = InferCodec.Decoded(rows: slow.inputs.flatMap { $0 }, count: slow.inputs.count,
                                         priority: slow.priority, deadlineMs: slow.deadlineMs)
        }
        var options = Options(deadline: serving.deadlineMs / 1000)
        if let p = decoded.priority { options.priority = try priority(p, from: "priority") }
        if let d = decoded.deadlineMs { options.deadline = try deadline(d, from: "deadline_ms", serving: serving) }
        return (decoded.rows, decoded.count, options)
    }

    static func infer(_ agent: Agent, _ request: Request) async throws -> Response {
        let config = agent.config  // one locked read per request (SIGHUP may replace it)
        let limits = config.api
        guard let model = agent.models.slot.current else { throw APIError.noModel }
        let n = model.inputCount
        let rows: [Float], count: Int, options: Options
        do {
            let data = try await body(request, limit: limits.maxBodyBytes)
            if request.headers[.contentType]?.hasPrefix("application/octet-stream") == true {
                (rows, count, options) = try decodeOctetStream(request, data, rowLength: n, serving: config.serving)
            } else {
                (rows, count, options) = try decodeJSON(data, rowLength: n, serving: config.serving)
            }
            guard count > 0 else { throw APIError(status: .badRequest, code: "empty", message: "no input rows") }
            guard count <= limits.maxRowsPerRequest else {
                throw APIError(status: .contentTooLarge, code: "too_many_rows",
                               message: "\(count) rows; at most \(limits.maxRowsPerRequest) per request (api.max_rows_per_request)")
            }
            if let bad = rows.firstIndex(where: { !$0.isFinite }) {
                throw APIError(status: .unprocessableContent, code: "not_finite",
                               message: "row \(bad / n) value \(bad % n) is \(rows[bad]), not a finite number")
            }
        } catch let e as APIError {
            agent.metrics.requestsInvalid.increment()
            throw e
        }
        let started = DispatchTime.now().uptimeNanoseconds
        switch await agent.scheduler.infer(rows: rows, count: count, priority: options.priority, deadline: options.deadline) {
        case .failure(.queueFull(let retry)):
            agent.metrics.requestsRejected.increment()
            throw APIError(status: .serviceUnavailable, code: "queue_full", message: queueFullMessage, retryAfter: retry)
        case .failure(.deadlineExceeded):
            agent.metrics.requestsExpired.increment()
            throw APIError(status: .gatewayTimeout, code: "deadline",
                           message: "the deadline of \(Int(options.deadline * 1000)) ms passed before the request was computed")
        case .failure(.shuttingDown):
            throw APIError(status: .serviceUnavailable, code: "stopping", message: "agentd is stopping", retryAfter: 5)
        case .failure(.noModel):
            throw APIError.noModel
        case .failure(.wrongShape(let e, let g)):
            throw APIError.wrongShape("rows have \(g) values; the model takes \(e)")
        case .success(let out):
            agent.metrics.requestsOK.increment()
            agent.metrics.latency.record(Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9)
            return answer(agent, out, rows: rows, count: count, rowLength: n)
        }
    }

    static func answer(_ agent: Agent, _ out: InferenceOutput, rows: [Float], count: Int, rowLength n: Int) -> Response {
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

    static func feedback(_ agent: Agent, _ request: Request) async throws -> Response {
        guard let model = agent.models.slot.current else { throw APIError.noModel }
        let data = try await body(request, limit: agent.config.api.maxBodyBytes)
        guard let f = try? JSONDecoder().decode(FeedbackRequest.self, from: data) else {
            throw APIError.malformed("expected {\"id\": \"...\", \"label\": \"...\"} or {\"input\": [...], \"label\": \"...\"}")
        }
        let sample = try feedbackSample(agent, f, model: model)
        switch await agent.writer.storeFeedback(sample) {
        case .success(let stored):
            agent.metrics.feedback.increment()
            return json(FeedbackResponse(stored: true, sampleId: stored.id, samples: stored.count))
        case .failure(let e):
            throw APIError.store(e, "the feedback was not stored")
        }
    }

    /// A labelled sample from a feedback request (the local API's and the MQTT `feedback` command's):
    /// a known label, and the input by inference id or given, of the model's shape and finite.
    static func feedbackSample(_ agent: Agent, _ f: FeedbackRequest, model: ServingModel) throws(APIError) -> AgentDatabase.Feedback {
        guard model.labels.contains(f.label) else {
            throw APIError(status: .unprocessableContent, code: "unknown_label",
                           message: "label '\(f.label.prefix(64))' is not one of the model's labels (\(model.labels.prefix(12).joined(separator: ", ")))")
        }
        let input: [Float]
        var version: Int? = model.version
        if let id = f.id {
            guard let entry = agent.recent.lookup(id) else {
                throw APIError(status: .notFound, code: "unknown_id",
                               message: "inference '\(id.prefix(64))' is unknown or too old to remember; send its input instead")
            }
            input = entry.input
            version = entry.modelVersion
        } else if let given = f.input {
            guard given.count == model.inputCount else {
                throw APIError.wrongShape("input has \(given.count) values; the model takes \(model.inputCount)")
            }
            guard given.allSatisfy({ $0.isFinite }) else {
                throw APIError(status: .unprocessableContent, code: "not_finite", message: "input holds a value that is not finite")
            }
            input = given
        } else {
            throw APIError.malformed("give 'id' or 'input'")
        }
        return AgentDatabase.Feedback(inferenceId: f.id, label: f.label, input: input, modelVersion: version)
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

/// Refusals (`APIError`) and routing errors (unknown path, wrong method) answered in the API's
/// JSON error shape.
struct JSONErrorMiddleware: RouterMiddleware {
    typealias Context = AgentRequestContext
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as APIError {
            return e.response
        } catch let e as HTTPError {
            let code = e.status == .notFound ? "not_found" : e.status == .methodNotAllowed ? "method_not_allowed" : "http_\(e.status.code)"
            return APIError(status: e.status, code: code, message: e.body ?? "\(request.method) \(request.uri.path): \(e.status.reasonPhrase)").response
        }
    }
}
