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

/// A small HTTP/1.1 client over agentd's Unix socket: one connection per call, `Connection: close`.
/// Foundation's URLSession has no Unix-socket transport on Linux, and a request is a few hundred
/// bytes, so a blocking socket is the simplest correct client.
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

    public func send(_ method: String, _ path: String, body: Data? = nil, contentType: String = "application/json") throws -> Response {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw AgentClientError.unreachable(socket: socketPath, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var tv = timeval(tv_sec: Int(timeoutSeconds), tv_usec: Int((timeoutSeconds - Double(Int(timeoutSeconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw AgentClientError.unreachable(socket: socketPath, reason: "socket path too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw AgentClientError.unreachable(socket: socketPath, reason: String(cString: strerror(errno))) }

        var head = "\(method) \(path) HTTP/1.1\r\nHost: agentd\r\nConnection: close\r\nUser-Agent: agentctl\r\n"
        if let body {
            head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        } else if method == "POST" {
            head += "Content-Length: 0\r\n"
        }
        head += "\r\n"
        var request = Data(head.utf8)
        if let body { request.append(body) }
        try request.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let n = Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw AgentClientError.protocolError("send failed: \(String(cString: strerror(errno)))")
                }
                sent += n
            }
        }
        var received = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 {
                if errno == EINTR { continue }
                throw AgentClientError.protocolError(errno == EAGAIN ? "timed out after \(timeoutSeconds) s" : String(cString: strerror(errno)))
            }
            if n == 0 { break }
            received.append(buffer, count: n)
        }
        return try Self.parse(received)
    }

    static func parse(_ data: Data) throws -> Response {
        guard let split = data.range(of: Data("\r\n\r\n".utf8)) else { throw AgentClientError.protocolError("no header terminator") }
        let head = String(decoding: data[..<split.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = head.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw AgentClientError.protocolError("bad status line") }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = Data(data[split.upperBound...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" { body = try dechunk(body) }
        return Response(status: status, headers: headers, body: body)
    }

    static func dechunk(_ data: Data) throws -> Data {
        var out = Data(), i = data.startIndex
        while i < data.endIndex {
            guard let lineEnd = data[i...].range(of: Data("\r\n".utf8)) else { throw AgentClientError.protocolError("bad chunk") }
            let sizeText = String(decoding: data[i..<lineEnd.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else { throw AgentClientError.protocolError("bad chunk size") }
            if size == 0 { break }
            let start = lineEnd.upperBound
            guard data.distance(from: start, to: data.endIndex) >= size else { throw AgentClientError.protocolError("short chunk") }
            out.append(data[start..<data.index(start, offsetBy: size)])
            i = data.index(start, offsetBy: size + 2)
        }
        return out
    }

    /// A call whose 2xx answer decodes as `T`; an error answer throws `.http`.
    public func call<T: Decodable>(_ method: String, _ path: String, body: (some Encodable)? = Optional<String>.none, as: T.Type) throws -> T {
        let data = try body.map { try JSONEncoder().encode($0) }
        let r = try send(method, path, body: data)
        try Self.check(r)
        do {
            return try JSONDecoder().decode(T.self, from: r.body)
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
    public func events(limit: Int = 50) throws -> EventsResponse { try call("GET", "/v1/events?limit=\(limit)", as: EventsResponse.self) }
    public func metrics() throws -> String {
        let r = try send("GET", "/metrics")
        try Self.check(r)
        return String(decoding: r.body, as: UTF8.self)
    }
}
