import Foundation
import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Refuses `/v1/infer` on the event loop when the request queue is full.
///
/// A refusal should cost less than the work it sheds. Through the router, a request that will be
/// refused still crosses from the event loop to a Swift concurrency task, has its JSON read, and
/// crosses back — under the very overload that filled the queue, behind every other request
/// doing the same. This handler sits in each connection's pipeline right after HTTP decoding and
/// answers 503 + `Retry-After` from the event loop as soon as the request has arrived, without
/// reading its body into the API.
///
/// HTTP/1.1 answers must leave in request order, so it only answers itself when no earlier
/// request of the connection is still being answered (a client that pipelines gets its refusal
/// from the router instead).
public final class OverloadShedder: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTPRequestPart
    public typealias InboundOut = HTTPRequestPart
    public typealias OutboundIn = HTTPResponsePart
    public typealias OutboundOut = HTTPResponsePart

    private let refuse: @Sendable () -> Bool
    private let body: ByteBuffer
    /// Requests passed on to the router whose answers have not ended.
    private var passedOn = 0
    /// The rest of a refused request (its body and end) is read and dropped.
    private var refusing = false

    public init(refuse: @escaping @Sendable () -> Bool, body: ByteBuffer) {
        self.refuse = refuse
        self.body = body
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            if passedOn == 0, head.method == .post, head.path?.hasPrefix("/v1/infer") == true, refuse() {
                refusing = true
                return
            }
            passedOn += 1
            context.fireChannelRead(data)
        case .body:
            if !refusing { context.fireChannelRead(data) }
        case .end:
            guard refusing else {
                context.fireChannelRead(data)
                return
            }
            refusing = false
            var head = HTTPResponse(status: .serviceUnavailable)
            head.headerFields[.contentType] = "application/json"
            head.headerFields[.contentLength] = String(body.readableBytes)
            head.headerFields[.retryAfter] = "1"
            head.headerFields[.server] = "agentd"
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(body)), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { passedOn = max(0, passedOn - 1) }
        context.write(data, promise: promise)
    }
}
