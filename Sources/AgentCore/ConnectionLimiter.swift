import Foundation
import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Open connections, shared by every connection's `ConnectionLimiter`.
final class ConnectionCount: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Counts a new connection; false when it is over the limit (then it is not counted).
    func admit() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard count < limit else { return false }
        count += 1
        return true
    }

    func release() {
        lock.lock()
        count -= 1
        lock.unlock()
    }

    var current: Int {
        lock.lock()
        defer { lock.unlock() }
        return count
    }
}

/// Caps open connections at `api.max_connections`: each one holds a descriptor and buffers, and
/// a local client could otherwise open them until agentd runs out. A connection over the cap has
/// its first request answered 503 `too_many_connections` and is closed — or is closed after
/// `refuseGrace` if it sends none; admitted idle ones close after `api.idle_timeout_s`.
///
/// It also holds back a close until the last answer has left (at most `closeGrace`): on shutdown
/// Hummingbird closes a connection right after writing its last response, and a close fails the
/// writes still queued behind a full socket buffer — a 1,024-row answer (~300 KB) arrived cut
/// short. A client that stops reading cannot hold it longer than that.
final class ConnectionLimiter: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private enum State {
        case unadmitted
        case admitted
        /// Over the cap: the first request is answered 503, then the connection closes.
        case refused
        /// The refusal is written; whatever else the client sends is dropped.
        case answered
        case released
    }

    private let connections: ConnectionCount
    private let body: ByteBuffer
    private var state = State.unadmitted
    /// Response ends written but not yet on the socket, and a close waiting for them.
    private var unwrittenEnds = 0
    private var heldClose: (mode: CloseMode, promise: EventLoopPromise<Void>?)?
    private var closeDeadline: Scheduled<Void>?
    static let refuseGrace = TimeAmount.seconds(1)
    static let closeGrace = TimeAmount.seconds(5)

    init(connections: ConnectionCount, body: ByteBuffer) {
        self.connections = connections
        self.body = body
    }

    func handlerAdded(context: ChannelHandlerContext) {
        precondition(state == .unadmitted, "ConnectionLimiter added twice")
        state = connections.admit() ? .admitted : .refused
        guard state == .refused else { return }
        // A refused connection that sends nothing would hold its descriptor until the idle timeout.
        context.eventLoop.assumeIsolated().scheduleTask(in: Self.refuseGrace) {
            if self.state == .refused { context.close(promise: nil) }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if state == .admitted { connections.release() }
        state = .released
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .admitted:
            context.fireChannelRead(data)
            return
        case .unadmitted, .answered, .released:
            return
        case .refused:
            break
        }
        guard case .head = unwrapInboundIn(data) else { return }
        var head = HTTPResponse(status: .serviceUnavailable)
        head.headerFields[.contentType] = "application/json"
        head.headerFields[.contentLength] = String(body.readableBytes)
        head.headerFields[.retryAfter] = "1"
        head.headerFields[.connection] = "close"
        head.headerFields[.server] = "agentd"
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
        state = .answered
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .end = unwrapOutboundIn(data) else {
            context.write(data, promise: promise)
            return
        }
        let written = promise ?? context.eventLoop.makePromise()
        unwrittenEnds += 1
        written.futureResult.hop(to: context.eventLoop).assumeIsolated().whenComplete { _ in
            self.unwrittenEnds -= 1
            if self.unwrittenEnds == 0 { self.closeHeld(context) }
        }
        context.write(data, promise: written)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all, unwrittenEnds > 0, heldClose == nil else {
            context.close(mode: mode, promise: promise)
            return
        }
        heldClose = (mode, promise)
        closeDeadline = context.eventLoop.assumeIsolated().scheduleTask(in: Self.closeGrace) { self.closeHeld(context) }
    }

    private func closeHeld(_ context: ChannelHandlerContext) {
        guard let held = heldClose else { return }
        heldClose = nil
        closeDeadline?.cancel()
        closeDeadline = nil
        context.close(mode: held.mode, promise: held.promise)
    }
}

@available(*, unavailable)
extension ConnectionLimiter: Sendable {}
