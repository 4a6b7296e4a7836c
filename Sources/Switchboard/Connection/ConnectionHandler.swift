import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SwitchboardWire

/// One WebSocket connection, living as a channel handler on its event loop: no task
/// and no actor per connection, so an idle connection costs only this object and
/// its channel. All state is touched on the channel's loop only; work that has to
/// await (router, engine) runs in a task and hops back with `loop.execute`.
final class ConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State {
        case open
        /// We sent a close frame and wait for the peer's.
        case closing
        case closed
    }

    /// A message split over several frames, while it is being reassembled.
    struct Fragments {
        var opcode: WebSocketOpcode
        var data: ByteBuffer
    }

    let core: GatewayCore
    let loopHub: LoopHub
    let handle: ConnectionHandle
    /// An echo connection (conformance testing) answers every message with itself.
    let echo: Bool
    /// The close code this connection ends with: ours, the peer's, or 1006 when it just went away.
    var closeCode: UInt16 = CloseCode.abnormal.rawValue
    var identity: Identity?
    var state: State = .open
    var context: ChannelHandlerContext?
    private var reader: WebSocketFrameReader
    var fragments: Fragments?
    /// Subscribed streams and where this connection stands in each.
    var streams = StreamCursors()
    var needsFlush = false
    /// The channel's writability, kept from its events so the delivery path needs no lookup.
    var isWritable = true
    var pingOutstanding = false
    private var strikes = 0
    var inFlight = 0
    private var bucket: TokenBucket
    /// Tasks waiting for the socket to drain (history replay pacing); nil when none.
    var writabilityWaiters: [EventLoopPromise<Void>]?
    /// Acked offsets of a resumed session, used once by `start()`.
    var resumedCursors: [String: Int64]?
    /// Streams the backend's connect hook subscribed the connection to, at its start.
    var serverStreams: [String] = []
    /// Node of the resumed session's previous connection, used once by `start()`.
    var previousNode: String?
    /// Position in the loop hub's connection list (kept by the hub).
    var slot = -1
    /// The last subscription generation handed out (one counter per connection, so a SUB after
    /// an UNSUB is never taken for an older one).
    var lastGeneration: UInt32 = 0
    /// Where the session's "connected" mark in the engine stands: the connection that set it
    /// clears it, after it was set, never before (or the session would never expire).
    var sessionMark = SessionMark.none

    enum SessionMark {
        /// Never set (closed before it started).
        case none
        /// Being set by the start task, which clears it itself if the connection closed meanwhile.
        case setting
        /// Set: cleared when the connection closes.
        case set
    }

    init(
        core: GatewayCore, loopHub: LoopHub, session: String, identity: Identity?, resumedCursors: [String: Int64]?,
        previousNode: String? = nil, echo: Bool = false
    ) {
        self.core = core
        self.echo = echo
        self.loopHub = loopHub
        self.handle = ConnectionHandle(
            id: core.makeConnectionID(), session: session, user: identity?.user, node: core.nodeID, loop: loopHub.loop
        )
        self.identity = identity
        self.resumedCursors = resumedCursors
        self.previousNode = previousNode
        self.reader = WebSocketFrameReader(maxFrameSize: core.configuration.maxMessageSize)
        self.bucket = TokenBucket(burst: core.configuration.requestBurst)
    }

    var session: String { self.handle.session }
    var logger: Logger { self.core.logger }
    var configuration: GatewayConfiguration { self.core.configuration }

    // MARK: lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.handle.handler = self
        self.loopHub.register(self)
        self.core.metrics.connectionsOpened.increment()
        self.core.metrics.connectionsOpen.increment()
        if let user = self.handle.user, !self.echo, let max = self.configuration.maxConnectionsPerUser,
            self.core.countConnection(of: user) > max
        {
            // Upgrades that raced past the check at the handshake end here.
            return self.close(code: .policyViolation, reason: "user already holds \(max) connections")
        }
        if let identity = self.identity, !self.echo {
            self.loopHub.watchExpiry(identity.expiresAt)
        }
        if context.channel.isActive, !self.echo {
            self.start()
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.teardown()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.teardown()
        self.context = nil
    }

    /// Runs once, when the channel goes inactive or the handler is removed.
    private func teardown() {
        if case .closed = self.state { return }
        self.state = .closed
        self.loopHub.unregister(self)
        // Counted in at the accept (GatewayChildChannel.setup), out here for every WebSocket.
        self.core.connectionLimit.ended()
        self.core.metrics.connectionsOpen.decrement()
        self.core.metrics.connectionClosed(code: self.closeCode)
        if self.echo {
            self.handle.handler = nil
            self.fragments = nil
            return
        }
        if let user = self.handle.user, self.configuration.maxConnectionsPerUser != nil {
            self.core.uncountConnection(of: user)
        }
        let streams = self.streams.names
        // Shares still being taken are given back by whoever takes them, seeing the connection closed.
        let held = self.streams.names(where: { if case .held = $0.engine { true } else { false } })
        for stream in streams {
            self.loopHub.removeSubscriber(stream, self)
        }
        self.streams.removeAll()
        self.fragments = nil
        self.failWritabilityWaiters()
        // The handle may outlive the connection (routes, the server API): it must not keep it.
        self.handle.handler = nil
        // A mark still being set is cleared by the start task, once set (see `start`).
        let clearMark: Bool
        if case .set = self.sessionMark { clearMark = true } else { clearMark = false }
        self.core.connectionClosed(self.handle, streams: streams, held: held, clearSessionMark: clearMark)
    }

    // MARK: inbound WebSocket frames

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .closed = self.state { return }
        do throws(WebSocketFrameReader.Failure) {
            try self.reader.read(self.unwrapInboundIn(data), allocator: context.channel.allocator) { frame in
                self.frameReceived(frame, context: context)
                if case .closed = self.state { return false }
                return true
            }
        } catch {
            // The byte stream can no longer be framed: fail the connection (RFC 6455 §7.1.7).
            switch error {
            case .tooBig: self.fail(code: .messageTooBig, reason: "frame larger than \(self.configuration.maxMessageSize) bytes")
            case .protocolError(let reason): self.fail(code: .protocolError, reason: reason)
            }
        }
    }

    private func frameReceived(_ frame: WebSocketFrameReader.Frame, context: ChannelHandlerContext) {
        guard case .open = self.state else {
            // Closing: only the peer's close frame matters now.
            if frame.opcode == .connectionClose { context.close(promise: nil) }
            return
        }
        switch frame.opcode {
        case .text, .binary:
            guard self.fragments == nil else {
                return self.close(code: .protocolError, reason: "new message before the previous one finished")
            }
            if frame.fin {
                self.message(opcode: frame.opcode, data: frame.payload)
            } else {
                self.fragments = Fragments(opcode: frame.opcode, data: frame.payload)
            }
        case .continuation:
            guard var fragments = self.fragments else {
                return self.close(code: .protocolError, reason: "continuation frame without a message")
            }
            self.fragments = nil
            var data = frame.payload
            guard fragments.data.readableBytes + data.readableBytes <= self.configuration.maxMessageSize else {
                return self.close(code: .messageTooBig, reason: "message larger than \(self.configuration.maxMessageSize) bytes")
            }
            fragments.data.writeBuffer(&data)
            if frame.fin {
                self.message(opcode: fragments.opcode, data: fragments.data)
            } else {
                self.fragments = fragments
            }
        case .ping:
            self.writeRaw(WebSocketFraming.control(opcode: .pong, payload: frame.payload, allocator: context.channel.allocator))
        case .pong:
            self.pingOutstanding = false
        default:  // close; the reader lets no other opcode through
            self.receivedClose(frame.payload)
        }
    }

    /// The server accepts half-closed HTTP connections, so the peer's FIN arrives as an event,
    /// not as a close. A WebSocket peer that stops sending without a close frame is gone.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// The peer's close frame: answer it (same code) and close the socket.
    private func receivedClose(_ payload: ByteBuffer) {
        var payload = payload
        var code: UInt16 = CloseCode.normal.rawValue
        switch payload.readableBytes {
        case 0:
            break
        // The peer already closed its side: answer with the error and drop the socket.
        case 1:
            return self.fail(code: .protocolError, reason: "close payload of one byte")
        default:
            let received = payload.readInteger(as: UInt16.self)!
            guard Self.isValidPeerCloseCode(received) else {
                return self.fail(code: .protocolError, reason: "invalid close code")
            }
            guard UTF8Validation.isValid(payload) else {
                return self.fail(code: .invalidPayload, reason: "close reason is not UTF-8")
            }
            code = received
        }
        self.closeCode = code
        guard let context = self.context else { return }
        var echo = context.channel.allocator.buffer(capacity: 2)
        echo.writeInteger(code)
        self.state = .closing
        context.writeAndFlush(
            self.wrapOutboundOut(WebSocketFraming.control(opcode: .connectionClose, payload: echo, allocator: context.channel.allocator)),
            promise: nil
        )
        context.close(promise: nil)
    }

    static func isValidPeerCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1011, 3000...4999: return true
        default: return false
        }
    }

    /// A whole message arrived.
    private func message(opcode: WebSocketOpcode, data: ByteBuffer) {
        if self.echo { return self.echoMessage(opcode: opcode, data: data) }
        guard opcode == .text else {
            return self.close(code: .unsupportedData, reason: "binary messages are not supported; send text frames")
        }
        guard UTF8Validation.isValid(data) else {
            return self.close(code: .invalidPayload, reason: "text message is not valid UTF-8")
        }
        guard self.bucket.take(rate: self.configuration.requestRate, burst: self.configuration.requestBurst) else {
            self.strikes += 1
            if self.strikes > self.configuration.rateLimitStrikes {
                return self.close(code: .rateLimited, reason: "rate limit exceeded repeatedly")
            }
            let requestID = (try? Frame(parsing: data))?.meta[MetaKey.requestID]
            return self.replyError(
                status: 429, method: .error, target: "/", requestID: requestID, error: "rate_limited",
                reason: "over \(self.configuration.requestRate) requests per second")
        }
        self.strikes = 0
        // A token that expired since the last timer pass is enforced before anything it asks.
        if let identity = self.identity, identity.isExpired(at: Date()) {
            return self.closeExpired()
        }
        let frame: Frame
        do {
            frame = try Frame(parsing: data)
        } catch {
            self.core.metrics.messageIn(.invalid)
            return self.replyError(
                status: 400, method: .error, target: "/", requestID: error.requestID, error: "bad_frame", reason: error.description)
        }
        self.dispatch(frame)
    }

    private func echoMessage(opcode: WebSocketOpcode, data: ByteBuffer) {
        if opcode == .text, !UTF8Validation.isValid(data) {
            return self.close(code: .invalidPayload, reason: "text message is not valid UTF-8")
        }
        self.core.metrics.messageIn(.echo)
        guard let context = self.context else { return }
        self.writeRaw(WebSocketFraming.message(opcode: opcode, payload: data, allocator: context.channel.allocator))
    }
}
