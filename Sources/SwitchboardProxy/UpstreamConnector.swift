import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket

/// Opens WebSocket connections to the upstream: TCP (and TLS for wss), the RFC 6455 client
/// handshake, frames joined into whole messages. It also serves the tests as a client.
struct UpstreamConnector: Sendable {
    /// How one attempt ended.
    enum Outcome: Sendable {
        case connected(WebSocketConnection)
        /// The server answered the handshake with this status instead of 101.
        case refused(HTTPResponseStatus)
        /// No answer: unreachable, reset, timed out, not a WebSocket server.
        case failed(any Error)
    }

    /// An upgraded connection and the server's handshake response.
    struct WebSocketConnection: Sendable {
        let channel: NIOAsyncChannel<WebSocketFrame, WebSocketFrame>
        let response: HTTPResponseHead
    }

    struct Timeout: Error {}

    let url: UpstreamURL
    let maxMessageSize: Int
    let connectTimeout: TimeAmount
    let group: any EventLoopGroup
    private let tls: NIOSSLContext?

    init(url: UpstreamURL, maxMessageSize: Int, connectTimeout: Double, group: any EventLoopGroup) throws {
        self.url = url
        self.maxMessageSize = maxMessageSize
        self.connectTimeout = .nanoseconds(Int64(connectTimeout * 1e9))
        self.group = group
        self.tls = url.tls ? try NIOSSLContext(configuration: .makeClientConfiguration()) : nil
    }

    private enum Upgrade: Sendable {
        case webSocket(NIOAsyncChannel<WebSocketFrame, WebSocketFrame>, HTTPResponseHead)
        case notUpgraded(NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>)
    }

    private struct Pending: Sendable {
        let channel: any Channel
        let upgrade: EventLoopFuture<Upgrade>
    }

    /// One attempt with `headers` on the handshake (Host, Upgrade and key are added).
    func connect(headers: HTTPHeaders) async -> Outcome {
        let url = self.url
        let maxMessageSize = self.maxMessageSize
        let tls = self.tls
        do {
            let pending = try await ClientBootstrap(group: self.group)
                .connectTimeout(self.connectTimeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: url.host, port: url.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let tls {
                            let handler = try NIOSSLClientHandler(context: tls, serverHostname: url.host.isIPAddress ? nil : url.host)
                            try channel.pipeline.syncOperations.addHandler(handler)
                        }
                        let upgrader = NIOTypedWebSocketClientUpgrader<Upgrade>(
                            maxFrameSize: maxMessageSize,
                            // Protocol errors reach the proxy's reader, which closes with the right code.
                            enableAutomaticErrorHandling: false,
                            upgradePipelineHandler: { channel, response in
                                channel.eventLoop.makeCompletedFuture {
                                    try channel.pipeline.syncOperations.addHandler(Self.aggregator(maxMessageSize))
                                    return .webSocket(try NIOAsyncChannel(wrappingChannelSynchronously: channel), response)
                                }
                            }
                        )
                        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: url.target, headers: headers)
                        head.headers.replaceOrAdd(name: "Host", value: url.hostHeader)
                        let configuration = NIOTypedHTTPClientUpgradeConfiguration<Upgrade>(
                            upgradeRequestHead: head, upgraders: [upgrader],
                            notUpgradingCompletionHandler: { channel in
                                channel.eventLoop.makeCompletedFuture { .notUpgraded(try NIOAsyncChannel(wrappingChannelSynchronously: channel)) }
                            }
                        )
                        var pipeline = NIOUpgradableHTTPClientPipelineConfiguration(upgradeConfiguration: configuration)
                        // A server may send its first frames in the same packet as the 101 (a resume
                        // id, a greeting): they must reach the WebSocket decoder, not be dropped.
                        pipeline.leftOverBytesStrategy = .forwardBytes
                        let upgrade = try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: pipeline)
                        return Pending(channel: channel, upgrade: upgrade)
                    }
                }
            // A server that accepts TCP but never answers the handshake counts as unreachable.
            let timeout = pending.channel.eventLoop.scheduleTask(in: self.connectTimeout) {
                pending.channel.close(promise: nil)
            }
            defer { timeout.cancel() }
            switch try await pending.upgrade.get() {
            case .webSocket(let channel, let response):
                return .connected(WebSocketConnection(channel: channel, response: response))
            case .notUpgraded(let channel):
                return try await channel.executeThenClose { inbound, _ in
                    for try await part in inbound {
                        if case .head(let response) = part { return .refused(response.status) }
                    }
                    return .failed(Timeout())
                }
            }
        } catch {
            return .failed(error)
        }
    }

    /// Joins fragments into whole messages of at most `maxMessageSize` bytes.
    static func aggregator(_ maxMessageSize: Int) -> NIOWebSocketFrameAggregator {
        NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 1 << 16, maxAccumulatedFrameSize: maxMessageSize)
    }
}

extension String {
    /// An IPv4 or IPv6 literal (TLS sends no server name for those).
    fileprivate var isIPAddress: Bool {
        (try? SocketAddress(ipAddress: self, port: 0)) != nil
    }
}
