import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Why a call to agentd failed.
public enum AgentClientError: Error, CustomStringConvertible, Sendable {
    /// Nothing answers at the socket (agentd not running, wrong path, no permission).
    case unreachable(socket: String, reason: String)
    /// agentd answered with an error status.
    case http(status: Int, code: String, message: String)
    /// The answer could not be read.
    case protocolError(String)

    public var description: String {
        switch self {
        case .unreachable(let socket, let reason):
            "cannot reach agentd at \(socket) (\(reason)); is it running? try: systemctl status agentd"
        case .http(let status, let code, let message): "agentd answered \(status) \(code): \(message)"
        case .protocolError(let m): "unreadable answer from agentd: \(m)"
        }
    }
}

/// A small HTTP/1.1 client over agentd's Unix socket. Foundation's URLSession has no Unix-socket
/// transport on Linux, and a request is a few hundred bytes, so blocking sockets are the simplest
/// correct client. `send` opens a connection per call (`Connection: close`); a program that sends
/// many requests keeps one `Connection` per thread instead (`agentctl bench-load` does).
public struct AgentClient: Sendable {
    public let socketPath: String
    public var timeoutSeconds: Double

    public static let defaultSocket = "/run/agentd/agentd.sock"

    public init(socketPath: String = AgentClient.defaultSocket, timeoutSeconds: Double = 30) {
        self.socketPath = socketPath
        self.timeoutSeconds = timeoutSeconds
    }

    public struct Response: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: Data
    }

    public func send(_ method: String, _ path: String, body: Data? = nil, contentType: String = "application/json",
                     headers: [String: String] = [:]) throws -> Response {
        let connection = try connect(keepAlive: false)
        return try connection.send(method, path, body: body, contentType: contentType, headers: headers)
    }

    /// A connection that stays open between requests (HTTP/1.1 keep-alive). Not for sharing
    /// between threads. When agentd has closed it for idleness, the next request notices and goes
    /// on a fresh connection.
    public func connect(keepAlive: Bool = true) throws -> Connection {
        try Connection(socketPath: socketPath, timeoutSeconds: timeoutSeconds, keepAlive: keepAlive)
    }

    public final class Connection {
        public let socketPath: String
        let timeoutSeconds: Double
        let keepAlive: Bool
        private var fd: Int32 = -1
        /// Bytes received past the last response (there are none unless agentd misbehaves).
        private var pending: [UInt8] = []
        private var buffer = [UInt8](repeating: 0, count: 65536)

        init(socketPath: String, timeoutSeconds: Double, keepAlive: Bool) throws {
            self.socketPath = socketPath
            self.timeoutSeconds = timeoutSeconds
            self.keepAlive = keepAlive
            try open()
        }

        deinit { if fd >= 0 { close(fd) } }

        private func open() throws {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw AgentClientError.unreachable(socket: socketPath, reason: String(cString: strerror(errno))) }
            var tv = timeval(tv_sec: Int(timeoutSeconds), tv_usec: Int((timeoutSeconds - Double(Int(timeoutSeconds))) * 1e6))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let pathBytes = Array(socketPath.utf8)
            guard pathBytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
                close(fd)
                throw AgentClientError.unreachable(socket: socketPath, reason: "socket path too long")
            }
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in
                raw.copyBytes(from: pathBytes)
                raw[pathBytes.count] = 0
            }
            let connected = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard connected == 0 else {
                let reason = String(cString: strerror(errno))
                close(fd)
                throw AgentClientError.unreachable(socket: socketPath, reason: reason)
            }
            self.fd = fd
            pending.removeAll()
        }

        private func reopen() throws {
            if fd >= 0 { close(fd) }
            fd = -1
            try open()
        }

        public func send(_ method: String, _ path: String, body: Data? = nil, contentType: String = "application/json",
                         headers: [String: String] = [:]) throws -> Response {
            if fd < 0 || peerClosed() { try reopen() }
            var head = "\(method) \(path) HTTP/1.1\r\nHost: agentd\r\nConnection: \(keepAlive ? "keep-alive" : "close")\r\nUser-Agent: agentctl\r\n"
            if let body {
                head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
            } else if method == "POST" {
                head += "Content-Length: 0\r\n"
            }
            for (name, value) in headers { head += "\(name): \(value)\r\n" }
            head += "\r\n"
            var request = Data(head.utf8)
            if let body { request.append(body) }
            do {
                return try exchange(request)
            } catch Closed.beforeAnswer where keepAlive && (method == "GET" || path.hasPrefix("/v1/infer")) {
                // agentd closed the connection as the request went out (its idle timeout racing
                // our send): one fresh attempt, for requests that may safely run twice. A feedback
                // or rollback may have been applied, so those report the error instead.
                try reopen()
                return try exchange(request)
            } catch Closed.beforeAnswer {
                throw AgentClientError.protocolError("agentd closed the connection before answering \(method) \(path)")
            }
        }

        private enum Closed: Error { case beforeAnswer }

        /// Whether agentd has closed this connection while it sat idle (its FIN is waiting to
        /// be read), so the next request goes on a fresh connection rather than into the void.
        private func peerClosed() -> Bool {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 0) == 1 else { return false }
            var byte: UInt8 = 0
            return recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) <= 0
        }

        private func exchange(_ request: Data) throws -> Response {
            try request.withUnsafeBytes { raw in
                var sent = 0
                while sent < raw.count {
                    let n = Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                    if n < 0 {
                        if errno == EINTR { continue }
                        if errno == EPIPE || errno == ECONNRESET { throw Closed.beforeAnswer }
                        throw AgentClientError.protocolError("send failed: \(String(cString: strerror(errno)))")
                    }
                    sent += n
                }
            }
            let parser = ResponseParser()
            var input = pending
            pending.removeAll()
            while true {
                if let (response, used) = try parser.parse(input) {
                    pending = Array(input[used...])
                    if !keepAlive || response.headers["connection"]?.lowercased() == "close" {
                        close(fd)
                        fd = -1
                    }
                    return response
                }
                let n = recv(fd, &buffer, buffer.count, 0)
                if n < 0 {
                    if errno == EINTR { continue }
                    if errno == ECONNRESET && input.isEmpty { throw Closed.beforeAnswer }
                    throw AgentClientError.protocolError(errno == EAGAIN ? "timed out after \(timeoutSeconds) s" : String(cString: strerror(errno)))
                }
                if n == 0 {
                    if input.isEmpty { throw Closed.beforeAnswer }
                    throw AgentClientError.protocolError("agentd closed the connection in the middle of an answer")
                }
                input.append(contentsOf: buffer[0..<n])
            }
        }
    }

    /// Finds one whole response (framed by Content-Length or chunked encoding) at the start of a
    /// byte stream; nil while more bytes are needed.
    public struct ResponseParser {
        public init() {}

        public func parse(_ data: [UInt8]) throws -> (Response, Int)? {
            guard let split = Self.find([13, 10, 13, 10], in: data, from: 0) else { return nil }
            let head = String(decoding: data[..<split], as: UTF8.self).components(separatedBy: "\r\n")
            let statusParts = head.first?.split(separator: " ") ?? []
            guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw AgentClientError.protocolError("bad status line") }
            var headers: [String: String] = [:]
            for line in head.dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            let start = split + 4
            if headers["transfer-encoding"]?.lowercased() == "chunked" {
                guard let (body, end) = try Self.dechunk(data, from: start) else { return nil }
                return (Response(status: status, headers: headers, body: body), end)
            }
            guard let lengthText = headers["content-length"] else {
                // Neither framing: the body runs to the end of the stream, which HTTP/1.1 allows
                // only when the server closes; the caller sees it as a truncated answer.
                throw AgentClientError.protocolError("answer has neither Content-Length nor chunked encoding")
            }
            guard let length = Int(lengthText), length >= 0 else { throw AgentClientError.protocolError("bad Content-Length \(lengthText)") }
            guard data.count - start >= length else { return nil }
            return (Response(status: status, headers: headers, body: Data(data[start..<(start + length)])), start + length)
        }

        static func find(_ needle: [UInt8], in data: [UInt8], from: Int) -> Int? {
            guard data.count >= needle.count else { return nil }
            var i = from
            while i + needle.count <= data.count {
                var j = 0
                while j < needle.count && data[i + j] == needle[j] { j += 1 }
                if j == needle.count { return i }
                i += 1
            }
            return nil
        }

        /// The body of a chunked answer and where it ends, or nil while incomplete.
        static func dechunk(_ data: [UInt8], from: Int) throws -> (Data, Int)? {
            var out = Data(), i = from
            while true {
                guard let lineEnd = find([13, 10], in: data, from: i) else { return nil }
                let sizeText = String(decoding: data[i..<lineEnd], as: UTF8.self).split(separator: ";").first ?? ""
                guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16), size >= 0 else {
                    throw AgentClientError.protocolError("bad chunk size")
                }
                let start = lineEnd + 2
                if size == 0 {
                    // Trailers (none expected) end with an empty line.
                    guard let end = find([13, 10, 13, 10], in: data, from: lineEnd) else { return nil }
                    return (out, end + 4)
                }
                guard data.count >= start + size + 2 else { return nil }
                out.append(contentsOf: data[start..<(start + size)])
                i = start + size + 2
            }
        }
    }

    /// A call whose 2xx answer decodes as `T`; an error answer throws `.http`.
    public func call<T: Decodable>(_ method: String, _ path: String, body: (some Encodable)? = Optional<String>.none, as: T.Type) throws -> T {
        let data = try body.map { try JSONEncoder().encode($0) }
        let r = try send(method, path, body: data)
        try Self.check(r)
        do {
            // The API writes non-finite numbers as strings.
            let decoder = JSONDecoder()
            decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            return try decoder.decode(T.self, from: r.body)
        } catch {
            throw AgentClientError.protocolError("\(method) \(path): \(error)")
        }
    }

    static func check(_ r: Response) throws {
        guard (200..<300).contains(r.status) else {
            if let e = try? JSONDecoder().decode(ErrorResponse.self, from: r.body) {
                throw AgentClientError.http(status: r.status, code: e.error.code, message: e.error.message)
            }
            throw AgentClientError.http(status: r.status, code: "http_\(r.status)", message: String(decoding: r.body.prefix(200), as: UTF8.self))
        }
    }

    public func status() throws -> StatusResponse { try call("GET", "/v1/status", as: StatusResponse.self) }
    public func infer(_ request: InferRequest) throws -> InferResponse { try call("POST", "/v1/infer", body: request, as: InferResponse.self) }
    public func feedback(_ request: FeedbackRequest) throws -> FeedbackResponse { try call("POST", "/v1/feedback", body: request, as: FeedbackResponse.self) }
    public func models() throws -> ModelsResponse { try call("GET", "/v1/models", as: ModelsResponse.self) }
    public func rollback(to version: Int?) throws -> ModelsResponse {
        try call("POST", "/v1/models/rollback", body: RollbackRequest(version: version), as: ModelsResponse.self)
    }
    public func drift() throws -> DriftResponse { try call("GET", "/v1/drift", as: DriftResponse.self) }
    public func driftReset() throws -> DriftResponse { try call("POST", "/v1/drift/reset", body: [String: String](), as: DriftResponse.self) }
    public func learn(dryRun: Bool) throws -> LearnStarted {
        try call("POST", "/v1/learn", body: LearnRequest(dryRun: dryRun), as: LearnStarted.self)
    }
    /// The running or last job; nil before any job ran.
    public func learnJob() throws -> LearnJob? {
        let r = try send("GET", "/v1/learn")
        try Self.check(r)
        if let none = try? JSONDecoder().decode(LearnNone.self, from: r.body), none.state == "none" { return nil }
        do {
            return try JSONDecoder().decode(LearnJob.self, from: r.body)
        } catch {
            throw AgentClientError.protocolError("GET /v1/learn: \(error)")
        }
    }
    public func replay() throws -> ReplayResponse { try call("GET", "/v1/replay", as: ReplayResponse.self) }
    public func events(limit: Int = 50) throws -> EventsResponse { try call("GET", "/v1/events?limit=\(limit)", as: EventsResponse.self) }
    public func metrics() throws -> String {
        let r = try send("GET", "/metrics")
        try Self.check(r)
        return String(decoding: r.body, as: UTF8.self)
    }
}
