import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import RedisTestSupport

@testable import SwitchboardProxy

/// A WebSocket backend on a loopback port that a test starts, kills (connections dropped
/// without a close frame, like a crashed process) and restarts on the same port. What
/// happens on each connection is the test's `handler`; the upstream records handshakes and
/// close codes.
final class TestUpstream: Sendable {
    private let boundPort = NIOLockedValueBox(0)
    var port: Int { self.boundPort.withLockedValue { $0 } }
    private let handler: @Sendable (UpstreamPeer) async throws -> Void
    private let server = NIOLockedValueBox<(any Channel)?>(nil)
    private let children = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
    /// Request headers of every accepted handshake, in order.
    let handshakes = Shared<[HTTPHeaders]>([])
    /// Close codes received from the proxy (nil: a close frame without a code).
    let closes = Shared<[UInt16?]>([])
    /// Answer handshakes with this status instead of 101.
    let refuseWith = Shared<HTTPResponseStatus?>(nil)
    /// Headers added to the 101 response for a request, for `--resume-from response-header`.
    let responseHeaders = Shared<@Sendable (HTTPRequestHead) -> HTTPHeaders>({ _ in [:] })

    var url: String { "ws://127.0.0.1:\(self.port)/socket?v=1" }
    var openConnections: Int { self.children.withLockedValue { $0.count } }

    init(handler: @escaping @Sendable (UpstreamPeer) async throws -> Void) async throws {
        self.handler = handler
        // A port found free can be taken before the bind (another process on this machine):
        // try a few.
        var attempt = 0
        while true {
            let port = try await freePort()
            self.boundPort.withLockedValue { $0 = port }
            do {
                try await self.start()
                return
            } catch let error as IOError where error.errnoCode == EADDRINUSE && attempt < 5 {
                attempt += 1
            }
        }
    }

    private enum Upgrade: Sendable {
        case webSocket(NIOAsyncChannel<WebSocketFrame, WebSocketFrame>, HTTPRequestHead)
        case notUpgraded(NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>)
    }

    func start() async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: self.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let upgrader = NIOTypedWebSocketServerUpgrader<Upgrade>(
                        maxFrameSize: 1 << 20,
                        shouldUpgrade: { channel, head in
                            if self.refuseWith.value != nil { return channel.eventLoop.makeSucceededFuture(nil) }
                            self.handshakes.update { $0.append(head.headers) }
                            return channel.eventLoop.makeSucceededFuture(self.responseHeaders.value(head))
                        },
                        upgradePipelineHandler: { channel, head in
                            channel.eventLoop.makeCompletedFuture {
                                try channel.pipeline.syncOperations.addHandler(
                                    NIOWebSocketFrameAggregator(
                                        minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 1000, maxAccumulatedFrameSize: 1 << 20)
                                )
                                return .webSocket(try NIOAsyncChannel(wrappingChannelSynchronously: channel), head)
                            }
                        }
                    )
                    let configuration = NIOTypedHTTPServerUpgradeConfiguration<Upgrade>(
                        upgraders: [upgrader],
                        notUpgradingCompletionHandler: { channel in
                            channel.eventLoop.makeCompletedFuture { .notUpgraded(try NIOAsyncChannel(wrappingChannelSynchronously: channel)) }
                        }
                    )
                    return try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(
                        configuration: .init(upgradeConfiguration: configuration)
                    )
                }
            }
        self.server.withLockedValue { $0 = server.channel }
        Task {
            try? await server.executeThenClose { inbound in
                for try await upgrade in inbound {
                    Task { await self.serve(upgrade) }
                }
            }
        }
    }

    private func serve(_ upgrade: EventLoopFuture<Upgrade>) async {
        guard let result = try? await upgrade.get() else { return }
        switch result {
        case .notUpgraded(let channel):
            let status = self.refuseWith.value ?? .notFound
            try? await channel.executeThenClose { _, outbound in
                try await outbound.write(
                    .head(HTTPResponseHead(version: .http1_1, status: status, headers: ["content-length": "0", "connection": "close"])))
                try await outbound.write(.end(nil))
            }
        case .webSocket(let channel, let head):
            let id = ObjectIdentifier(channel.channel)
            self.children.withLockedValue { $0[id] = channel.channel }
            defer { self.children.withLockedValue { $0[id] = nil } }
            try? await channel.executeThenClose { inbound, outbound in
                let peer = UpstreamPeer(head: head, inbound: inbound, outbound: outbound, upstream: self)
                try await self.handler(peer)
            }
        }
    }

    /// Stops listening and drops every connection without a close frame.
    func kill() async {
        let server = self.server.withLockedValue { $0 }
        try? await server?.close()
        for child in self.children.withLockedValue({ Array($0.values) }) {
            try? await child.close()
        }
    }

    func recordClose(_ code: UInt16?) {
        self.closes.update { $0.append(code) }
    }
}

/// One connection to the test upstream, from its side.
/// Read by one task at a time (the iterator is not Sendable).
final class UpstreamPeer: @unchecked Sendable {
    let head: HTTPRequestHead
    let outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>
    let upstream: TestUpstream
    /// Text messages, read in the background so pings are answered at once (as a WebSocket
    /// server's library does) even while the handler is busy.
    private let iterator: NIOLockedValueBox<AsyncThrowingStream<ProxyMessage, any Error>.AsyncIterator>
    private let reader: Task<Void, Never>

    init(
        head: HTTPRequestHead, inbound: NIOAsyncChannelInboundStream<WebSocketFrame>, outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>,
        upstream: TestUpstream
    ) {
        self.head = head
        self.outbound = outbound
        self.upstream = upstream
        let (messages, continuation) = AsyncThrowingStream.makeStream(of: ProxyMessage.self)
        self.iterator = NIOLockedValueBox(messages.makeAsyncIterator())
        self.reader = Task {
            do {
                for try await frame in inbound {
                    switch frame.opcode {
                    case .text, .binary:
                        continuation.yield(ProxyMessage(opcode: frame.opcode, data: frame.unmaskedData))
                    case .ping:
                        try await outbound.write(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData))
                    case .connectionClose:
                        var data = frame.unmaskedData
                        upstream.recordClose(data.readInteger(as: UInt16.self))
                        try? await outbound.write(WebSocketFrame(fin: true, opcode: .connectionClose, data: frame.unmaskedData))
                        continuation.finish()
                        return
                    default:
                        continue
                    }
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
    }

    deinit { self.reader.cancel() }

    func send(_ text: String) async throws {
        try await self.outbound.write(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text)))
    }

    func close(code: UInt16, reason: String = "") async throws {
        var payload = ByteBuffer()
        payload.writeInteger(code)
        payload.writeString(reason)
        try await self.outbound.write(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload))
    }

    /// The next message as text; nil when the connection ended.
    func next() async throws -> String? {
        try await self.nextMessage().map { String(buffer: $0.data) }
    }

    /// The next message with its opcode (text or binary); nil when the connection ended.
    func nextMessage() async throws -> ProxyMessage? {
        var iterator = self.iterator.withLockedValue { $0 }
        let message = try await iterator.next()
        self.iterator.withLockedValue { $0 = iterator }
        return message
    }

    func send(_ message: ProxyMessage) async throws {
        try await self.outbound.write(WebSocketFrame(fin: true, opcode: message.opcode, data: message.data))
    }
}
