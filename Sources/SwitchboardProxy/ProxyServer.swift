import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle

/// The reconnecting proxy as a service: WebSocket clients on one port, each conversation
/// relayed to the upstream with reconnects, queues and sessions (docs/proxy.md), plus
/// `/health`, `/health/ready` and `/metrics` over HTTP on the same port.
///
/// ```swift
/// var configuration = ProxyConfiguration(upstream: try UpstreamURL("ws://127.0.0.1:9000/socket"))
/// configuration.port = 8090
/// let proxy = try ProxyServer(configuration: configuration, logger: logger)
/// try await ServiceGroup(services: [proxy], logger: logger).run()
/// ```
public final class ProxyServer: Service, Sendable {
    let core: ProxyCore
    private let eventLoopGroup: any EventLoopGroup
    private let registry: PrometheusCollectorRegistry?
    private let boundPort = NIOLockedValueBox<Int?>(nil)

    /// `registry` is served at `/metrics` when given (bootstrap swift-metrics with it).
    public init(
        configuration: ProxyConfiguration, registry: PrometheusCollectorRegistry? = nil,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger = Logger(label: "switchboard.proxy")
    ) throws {
        try configuration.validate()
        self.core = try ProxyCore(configuration: configuration, group: eventLoopGroup, logger: logger)
        self.eventLoopGroup = eventLoopGroup
        self.registry = registry
    }

    /// The port the proxy listens on, once it does (useful with port 0).
    public func waitUntilListening() async -> Int {
        while true {
            if let port = self.boundPort.withLockedValue({ $0 }) { return port }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    public func run() async throws {
        let core = self.core
        let configuration = core.configuration
        if configuration.mode == .receiver { await core.startReceiver() }
        let router = Router(context: BasicRequestContext.self)
        self.addRoutes(to: router)
        let responder = router.buildResponder()
        let logger = core.logger
        let childChannel = ProxyChildChannel(core: core) { request, responseWriter, channel in
            let context = BasicRequestContext(source: ApplicationRequestContextSource(channel: channel, logger: logger))
            let response: Response
            do {
                response = try await responder.respond(to: request, context: context)
            } catch let error as any HTTPResponseError {
                response = (try? error.response(from: request, context: context)) ?? Response(status: error.status)
            }
            try await responseWriter.write(response: response.head, body: response.body)
        }
        let server = Server(
            childChannelSetup: childChannel,
            configuration: ServerConfiguration(address: .hostname(configuration.host, port: configuration.port)),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? configuration.port
                self.boundPort.withLockedValue { $0 = port }
                logger.info("switchboard proxy (\(configuration.mode.rawValue) mode) on \(configuration.host):\(port) → \(configuration.upstream)")
            },
            eventLoopGroup: self.eventLoopGroup,
            logger: logger
        )
        // On shutdown the sessions close first (clients and upstreams get 1001), so the
        // server's own graceful shutdown has no connection left to wait for.
        try await withGracefulShutdownHandler {
            try await server.run()
        } onGracefulShutdown: {
            Task { await core.shutdown() }
        }
        await core.shutdown()
    }

    private func addRoutes(to router: Router<BasicRequestContext>) {
        let core = self.core
        router.get("/health") { _, _ -> Health in
            Health(
                status: core.isDraining ? "draining" : "ok", mode: core.configuration.mode.rawValue,
                upstream: core.configuration.upstream.description, sessions: core.sessionCount
            )
        }
        router.get("/health/ready") { _, _ -> Response in
            var ready = !core.isDraining
            if core.configuration.mode == .receiver, let session = core.session(ProxyCore.receiverID), await session.unavailable {
                ready = false
            }
            return Response(status: ready ? .ok : .serviceUnavailable, body: .init(byteBuffer: ByteBuffer(string: ready ? "ready\n" : "not ready\n")))
        }
        if let registry = self.registry {
            router.get("/metrics") { _, _ -> Response in
                var bytes: [UInt8] = []
                bytes.reserveCapacity(8 * 1024)
                registry.emit(into: &bytes)
                return Response(
                    status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                    body: .init(byteBuffer: ByteBuffer(bytes: bytes))
                )
            }
        }
    }

    struct Health: ResponseEncodable {
        let status: String
        let mode: String
        let upstream: String
        let sessions: Int
    }
}
