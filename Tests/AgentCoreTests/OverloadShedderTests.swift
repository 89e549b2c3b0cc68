import AgentCore
import HTTPTypes
import NIOCore
import NIOEmbedded
import NIOHTTPTypes
import Testing

@Suite struct OverloadShedderTests {
    final class Switch: @unchecked Sendable { var full = false }

    func channel(_ state: Switch) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(OverloadShedder(refuse: { state.full }, body: ByteBuffer(string: #"{"error":{}}"#)))
        return channel
    }

    func request(_ channel: EmbeddedChannel, path: String = "/v1/infer", method: HTTPRequest.Method = .post) throws {
        try channel.writeInbound(HTTPRequestPart.head(HTTPRequest(method: method, scheme: nil, authority: "agentd", path: path)))
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(string: #"{"inputs": [[1]]}"#)))
        try channel.writeInbound(HTTPRequestPart.end(nil))
    }

    func passedOn(_ channel: EmbeddedChannel) throws -> Int {
        var n = 0
        while let part = try channel.readInbound(as: HTTPRequestPart.self) { if case .end = part { n += 1 } }
        return n
    }

    @Test func aFullQueueIsAnsweredOnTheEventLoop() throws {
        let state = Switch()
        state.full = true
        let channel = try channel(state)
        try request(channel)
        #expect(try passedOn(channel) == 0, "a refused request reached the router")
        guard case .head(let head) = try channel.readOutbound(as: HTTPResponsePart.self) else { Issue.record("no answer head"); return }
        #expect(head.status == .serviceUnavailable)
        #expect(head.headerFields[.retryAfter] == "1")
        #expect(head.headerFields[.contentLength] == "12")
        guard case .body(let body) = try channel.readOutbound(as: HTTPResponsePart.self) else { Issue.record("no body"); return }
        #expect(String(buffer: body) == #"{"error":{}}"#)
        guard case .end = try channel.readOutbound(as: HTTPResponsePart.self) else { Issue.record("no end"); return }
        // Other paths and methods are never refused here.
        try request(channel, path: "/v1/status", method: .get)
        #expect(try passedOn(channel) == 1)
    }

    @Test func requestsPassWhileTheQueueHasRoom() throws {
        let channel = try channel(Switch())
        try request(channel)
        #expect(try passedOn(channel) == 1)
        #expect(try channel.readOutbound(as: HTTPResponsePart.self) == nil)
    }

    /// Answers leave in request order: while an earlier request of the connection is unanswered,
    /// a refusal is left to the router, which answers after it.
    @Test func aPipelinedRequestIsNotAnsweredAheadOfAnEarlierOne() throws {
        let state = Switch()
        let channel = try channel(state)
        try request(channel)
        state.full = true
        try request(channel)
        #expect(try passedOn(channel) == 2)
        #expect(try channel.readOutbound(as: HTTPResponsePart.self) == nil)
        // The router answers both; then the connection is idle and refusals come from the event loop again.
        for _ in 0..<2 {
            try channel.writeOutbound(HTTPResponsePart.head(HTTPResponse(status: .ok)))
            try channel.writeOutbound(HTTPResponsePart.end(nil))
        }
        while try channel.readOutbound(as: HTTPResponsePart.self) != nil {}
        try request(channel)
        #expect(try passedOn(channel) == 0)
        guard case .head(let head) = try channel.readOutbound(as: HTTPResponsePart.self) else { Issue.record("no answer head"); return }
        #expect(head.status == .serviceUnavailable)
    }
}
