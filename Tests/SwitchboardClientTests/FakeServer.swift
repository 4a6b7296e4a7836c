import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import SwitchboardWire

extension NIOLockedValueBox {
    /// A copy of the value, for test bookkeeping shared with event loops.
    var current: Value { self.withLockedValue { $0 } }
}

/// One accepted WebSocket of the fake server.
final class FakeConnection: Sendable {
    let index: Int
    let uri: String
    let headers: HTTPHeaders
    let channel: any Channel

    init(index: Int, uri: String, headers: HTTPHeaders, channel: any Channel) {
        self.index = index
        self.uri = uri
        self.headers = headers
        self.channel = channel
    }

    func send(_ text: String) {
        let frame = WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text))
        self.channel.writeAndFlush(frame, promise: nil)
    }

    /// Drop the TCP connection without a close handshake.
    func drop() { self.channel.close(promise: nil) }

    /// Close with a WebSocket close code.
    func close(code: Int, reason: String = "") {
        var data = ByteBuffer()
        data.write(webSocketErrorCode: WebSocketErrorCode(codeNumber: code))
        data.writeString(reason)
        let channel = self.channel
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}

/// A tiny scripted Switchboard server: HELLO on connect, then `onFrame` for every frame received.
final class FakeServer: Sendable {
    struct Received: Sendable {
        let connection: Int
        let frame: Frame
        var text: String { String(buffer: self.frame.encoded()) }
    }

    let session: String
    let connections = NIOLockedValueBox<[FakeConnection]>([])
    let received = NIOLockedValueBox<[Received]>([])
    let closeCodes = NIOLockedValueBox<[UInt16]>([])
    /// Status answered to upgrade requests instead of upgrading (nil: upgrade).
    let refuseStatus = NIOLockedValueBox<HTTPResponseStatus?>(nil)
    let onFrame: @Sendable (FakeConnection, Frame) -> Void
    let onConnect: @Sendable (FakeServer, FakeConnection) -> Void
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)

    init(
        session: String = "S1",
        onConnect: (@Sendable (FakeServer, FakeConnection) -> Void)? = nil,
        onFrame: @escaping @Sendable (FakeConnection, Frame) -> Void
    ) {
        self.session = session
        self.onFrame = onFrame
        self.onConnect = onConnect ?? { server, connection in server.sendHello(connection) }
    }

    func sendHello(_ connection: FakeConnection) {
        let resumed = connection.uri.contains("sid=\(self.session)")
        connection.send("HELLO200|/|s=\(self.session);resumed=\(resumed ? 1 : 0);node=n1|{\"session\":\"\(self.session)\"}")
    }

    var port: Int { self.channel.current?.localAddress?.port ?? 0 }
    var url: String { "ws://127.0.0.1:\(self.port)/ws" }

    func start() async throws {
        let server = self
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let upgrader = NIOWebSocketServerUpgrader(
                    shouldUpgrade: { channel, _ in
                        return channel.eventLoop.makeSucceededFuture(server.refuseStatus.current == nil ? HTTPHeaders() : nil)
                    },
                    upgradePipelineHandler: { channel, head in
                        let connection = server.connections.withLockedValue { list in
                            let c = FakeConnection(index: list.count, uri: head.uri, headers: head.headers, channel: channel)
                            list.append(c)
                            return c
                        }
                        return channel.pipeline.removeHandler(name: "refuse").flatMapThrowing {
                            try channel.pipeline.syncOperations.addHandler(FrameHandler(server: server, connection: connection))
                            server.onConnect(server, connection)
                        }
                    }
                )
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in })
                    )
                    try channel.pipeline.syncOperations.addHandler(RefuseHandler(status: server.refuseStatus.current ?? .notFound), name: "refuse")
                }
            }
        let channel = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        self.channel.withLockedValue { $0 = channel }
    }

    func stop() async {
        for connection in self.connections.current { try? await connection.channel.close() }
        try? await self.channel.current?.close()
    }

    func frames(_ method: Method) -> [Received] {
        self.received.current.filter { $0.frame.method == method && $0.frame.status == nil }
    }

    /// Handles the frames of one upgraded connection.
    final class FrameHandler: ChannelInboundHandler {
        typealias InboundIn = WebSocketFrame
        typealias OutboundOut = WebSocketFrame
        let server: FakeServer
        let connection: FakeConnection

        init(server: FakeServer, connection: FakeConnection) {
            self.server = server
            self.connection = connection
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = self.unwrapInboundIn(data)
            switch frame.opcode {
            case .text:
                guard let parsed = try? Frame(parsing: frame.unmaskedData) else { return }
                self.server.received.withLockedValue { $0.append(Received(connection: self.connection.index, frame: parsed)) }
                self.server.onFrame(self.connection, parsed)
            case .connectionClose:
                var data = frame.unmaskedData
                let code = data.readInteger(as: UInt16.self) ?? 0
                self.server.closeCodes.withLockedValue { $0.append(code) }
                var reply = ByteBuffer()
                reply.writeInteger(code)
                let channel = context.channel
                context.writeAndFlush(self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: reply))).whenComplete { _ in
                    channel.close(promise: nil)
                }
            case .ping:
                context.writeAndFlush(self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
            default:
                break
            }
        }
    }

    /// Answers HTTP requests that were not upgraded (refused upgrades).
    final class RefuseHandler: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let status: HTTPResponseStatus
        init(status: HTTPResponseStatus) { self.status = status }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .end = self.unwrapInboundIn(data) else { return }
            let body = ByteBuffer(string: #"{"error":"unauthorized","reason":"token missing"}"#)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: String(body.readableBytes))
            headers.add(name: "Connection", value: "close")
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: self.status, headers: headers))), promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            let channel = context.channel
            context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
