import NIOCore
import NIOHTTP1

/// Bounds what an HTTP connection may make the node wait for, from the accept until it is a
/// WebSocket (then pings take over) or for as long as it speaks HTTP:
///
/// - a new connection has `handshakeTimeout` to send its first request head and, for an
///   upgrade, to finish the handshake (silent sockets, slowloris);
/// - a request's body must arrive within `requestTimeout` of its head (slow uploads), and a
///   response the peer stops reading may wait that long for room (a client that never reads);
/// - a kept-alive connection may wait `idleTimeout` for its next request;
/// - at most `maxHandshakes` connections of the node may be in their handshake at once;
/// - a request the decoder cannot parse gets 400 (431 when its head is too large) and the
///   connection closes, when no response is under way (otherwise Hummingbird answers).
///
/// It sits between the HTTP decoder and the upgrade handler, sees request and response
/// parts, and leaves the pipeline just before an upgrade completes.
final class HTTPConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    static let name = "switchboard.http-guard"

    enum State {
        /// Accepted; waiting for the first request head (counted in `maxHandshakes`).
        case handshake
        /// The first request asks for an upgrade; the node is deciding (still counted).
        case upgrading
        /// A request's body is arriving.
        case receiving
        /// A request arrived whole; the application (or a refusal) is answering it.
        case answering
        /// Between requests on a kept-alive connection.
        case idle
        case closed
    }

    /// What a timer ran out on, for the log and `switchboard_connections_timed_out_total`.
    enum Phase: String, CaseIterable {
        case handshake, request, response, idle
    }

    private let core: GatewayCore
    private var state = State.handshake
    private var timer: Scheduled<Void>?
    private var counted = false

    init(core: GatewayCore) {
        self.core = core
    }

    private var configuration: GatewayConfiguration { self.core.configuration }

    func handlerAdded(context: ChannelHandlerContext) {
        guard self.core.beginHandshake() else {
            // Too many connections are still in their handshake: refuse this one at once.
            self.core.metrics.handshakeRefused.increment()
            self.state = .closed
            context.close(promise: nil)
            return
        }
        self.counted = true
        self.arm(.handshake, after: self.configuration.handshakeTimeout, context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.finish()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.finish()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var data = data
        switch Self.unwrapInboundIn(data) {
        case .head(var head):
            if !Self.asksForWebSocket(head), head.headers.contains(name: "upgrade") {
                // An upgrade to anything else (`Upgrade: h2c`, what `curl --http2` sends) is
                // served as the plain request it also is. Passed on as an upgrade request,
                // NIO's upgrade handler finds no upgrader and drops the request head.
                head.headers.remove(name: "upgrade")
                data = Self.wrapInboundOut(.head(head))
            }
            switch self.state {
            case .handshake where Self.asksForWebSocket(head):
                // The handshake timer keeps running while the node decides.
                self.state = .upgrading
            case .handshake:
                self.endHandshake()
                self.state = .receiving
                self.arm(.request, after: self.configuration.requestTimeout, context: context)
            case .idle, .answering:
                self.state = .receiving
                self.arm(.request, after: self.configuration.requestTimeout, context: context)
            case .upgrading, .receiving, .closed:
                break
            }
        case .body:
            break
        case .end:
            if case .receiving = self.state {
                self.disarm()
                self.state = .answering
            }
        }
        context.fireChannelRead(data)
    }

    /// A response the peer does not read fills the socket: it gets `requestTimeout` to make room,
    /// also once the whole response is queued (the idle wait starts when it has drained).
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        switch self.state {
        case .answering, .idle:
            if !context.channel.isWritable {
                self.arm(.response, after: self.configuration.requestTimeout, context: context)
            } else if case .idle = self.state {
                self.arm(.idle, after: self.configuration.idleTimeout, context: context)
            } else {
                self.disarm()
            }
        case .handshake, .upgrading, .receiving, .closed:
            break
        }
        context.fireChannelWritabilityChanged()
    }

    /// Only a WebSocket upgrade is one here (`Upgrade: h2c` and the like are plain requests).
    static func asksForWebSocket(_ head: HTTPRequestHead) -> Bool {
        head.headers[canonicalForm: "upgrade"].contains { $0.lowercased() == "websocket" }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = Self.unwrapOutboundIn(data) {
            switch self.state {
            case .answering:
                self.state = .idle
                // A response still stuck in an unwritable socket keeps its response timer.
                if context.channel.isWritable {
                    self.arm(.idle, after: self.configuration.idleTimeout, context: context)
                }
            case .upgrading:
                // Answered without an upgrade (refused, or not a WebSocket upgrade).
                self.endHandshake()
                self.state = .idle
                self.arm(.idle, after: self.configuration.idleTimeout, context: context)
            default:
                break
            }
        }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parserError = error as? HTTPParserError else { return context.fireErrorCaught(error) }
        switch self.state {
        case .handshake, .upgrading, .idle:
            // No response is under way: answer here, as nobody else will before the upgrade.
            let tooLarge = parserError == .headerOverflow
            self.state = .closed
            self.disarm()
            self.endHandshake()
            self.core.metrics.badRequests.increment()
            let reason = tooLarge ? "request head larger than 80 KB" : "malformed HTTP request (\(parserError))"
            let body = JSONBody.error(tooLarge ? "headers_too_large" : "bad_request", reason: reason)
            var headers = HTTPHeaders()
            headers.add(name: "Connection", value: "close")
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(body.readableBytes))
            let status: HTTPResponseStatus = tooLarge ? .requestHeaderFieldsTooLarge : .badRequest
            context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        case .receiving, .answering, .closed:
            // Hummingbird is handling a request on this connection: it answers 400 and closes.
            context.fireErrorCaught(error)
        }
    }

    /// The upgrade succeeded: from here the WebSocket handler bounds the connection.
    static func remove(from channel: any Channel) {
        guard let context = try? channel.pipeline.syncOperations.context(name: Self.name) else { return }
        channel.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func arm(_ phase: Phase, after seconds: Double, context: ChannelHandlerContext) {
        self.timer?.cancel()
        let channel = context.channel
        let metrics = self.core.metrics
        let logger = self.core.logger
        self.timer = context.eventLoop.scheduleTask(in: .seconds(clamping: seconds)) {
            logger.debug("closing a connection that stayed silent too long", metadata: ["phase": "\(phase.rawValue)"])
            metrics.timedOut(phase)
            channel.close(promise: nil)
        }
    }

    private func disarm() {
        self.timer?.cancel()
        self.timer = nil
    }

    private func endHandshake() {
        guard self.counted else { return }
        self.counted = false
        self.core.endHandshake()
    }

    private func finish() {
        self.disarm()
        self.endHandshake()
        self.state = .closed
    }
}
