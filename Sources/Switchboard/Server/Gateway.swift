import Hummingbird
import HummingbirdCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// A Switchboard node: HTTP and WebSocket on one port, the same router for both,
/// streams in `engine`. Run it as a service (it drains on graceful shutdown).
///
/// ```swift
/// let router = Router(context: SwitchboardRequestContext.self)
/// router.post("/rooms/:id/messages") { request, context in … }
/// let gateway = Gateway(router: router, configuration: .init(), verifier: verifier, logger: logger)
/// try await gateway.run()
/// ```
public final class Gateway: Service, Sendable {
    let core: GatewayCore
    let eventLoopGroup: any EventLoopGroup
    private let listener = NIOLockedValueBox(Listener.starting(waiters: []))
    /// Seconds over which a draining node spreads its 4503 closes.
    public let drainWindow: Double

    /// Whether the node listens yet: callers of `waitUntilListening()` wait until it does.
    private enum Listener {
        case starting(waiters: [CheckedContinuation<Int, Never>])
        case listening(port: Int)
    }

    public init<Context: SwitchboardRequestContextProtocol>(
        router: Router<Context>,
        configuration: GatewayConfiguration = .init(),
        engine: any SwitchboardEngine = MemoryEngine(),
        verifier: TokenVerifier? = nil,
        backend: (any SwitchboardBackend)? = nil,
        drainWindow: Double = 5,
        eventLoopGroup: any EventLoopGroup = Gateway.defaultEventLoopGroup,
        logger: Logger = Logger(label: "switchboard")
    ) {
        self.eventLoopGroup = eventLoopGroup
        self.drainWindow = drainWindow
        var configuration = configuration
        configuration.nodeID = configuration.nodeID ?? GatewayCore.randomID(length: 10)
        let metrics = GatewayMetrics(node: configuration.nodeID!)
        if let rules = configuration.streamRules { engine.useStorage(rules.storagePolicy) }
        self.core = GatewayCore(
            configuration: configuration,
            engine: engine,
            hub: Hub(group: eventLoopGroup, metrics: metrics),
            metrics: metrics,
            responder: ErasedResponder(router.buildResponder()),
            verifier: verifier,
            backend: backend,
            logger: logger
        )
    }

    /// NIO's shared group, or on a machine with more than 64 cores a shared group of 64 threads:
    /// a stream's interest in loops is a 64-bit mask (see `Hub`).
    public static var defaultEventLoopGroup: any EventLoopGroup {
        System.coreCount <= Hub.maxLoops ? MultiThreadedEventLoopGroup.singleton : cappedGroup
    }

    private static let cappedGroup = MultiThreadedEventLoopGroup(numberOfThreads: Hub.maxLoops)

    /// Histogram buckets for the gateway's duration metrics whose range the usual defaults do
    /// not resolve (fan-out time is sub-millisecond), by metric name: give them to the metrics
    /// factory, e.g. `PrometheusMetricsFactory.durationHistogramBuckets`.
    public static let durationHistogramBuckets: [String: [Duration]] = [
        GatewayMetrics.fanoutDurationLabel: GatewayMetrics.fanoutDurationBuckets
    ]

    /// Publish, send and disconnect from application code.
    public var publisher: SwitchboardPublisher { SwitchboardPublisher(core: self.core) }

    public var nodeID: String { self.core.nodeID }

    /// The port the node listens on, once it does (useful with port 0).
    public func waitUntilListening() async -> Int {
        await withCheckedContinuation { continuation in
            let port: Int? = self.listener.withLockedValue { listener in
                switch listener {
                case .listening(let port):
                    return port
                case .starting(var waiters):
                    waiters.append(continuation)
                    listener = .starting(waiters: waiters)
                    return nil
                }
            }
            if let port { continuation.resume(returning: port) }
        }
    }

    public func run() async throws {
        let core = self.core
        try await core.engine.start(node: core.nodeID, delivery: core.hub)
        let interval = TimeAmount.seconds(clamping: core.configuration.pingInterval)
        for hub in core.hub.loops {
            hub.loop.execute { hub.startPinging(every: interval) }
        }
        let server = Server(
            childChannelSetup: GatewayChildChannel(core: core),
            configuration: ServerConfiguration(address: .hostname(core.configuration.host, port: core.configuration.port)),
            onServerRunning: { channel in self.listening(on: channel.localAddress?.port ?? core.configuration.port) },
            eventLoopGroup: self.eventLoopGroup,
            logger: core.logger
        )
        // The server runs outside this service's graceful shutdown, so the listener stays open
        // while the node drains: load balancers see `/health/ready` answer 503, new upgrades
        // get 503, in-flight requests finish; only then does the listener close.
        let serving = Task.detached { try await server.run() }
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                do {
                    try await serving.value
                } catch  where core.isDraining {
                    // Shut down before it was listening: nothing to serve, nothing lost.
                    core.logger.debug("server stopped while draining: \(error)")
                }
            } onGracefulShutdown: {
                core.startDraining()
                Task {
                    await self.drainConnections()
                    try? await server.shutdownGracefully()
                }
            }
        } onCancel: {
            serving.cancel()
        }
        // Let the engine hear about every connection that closed before this node leaves the cluster.
        await self.drainConnections()
        await core.finishBookkeeping(timeout: .seconds(5))
        for hub in core.hub.loops {
            hub.loop.execute { hub.stopPinging() }
        }
        await core.engine.shutdown()
    }

    private func listening(on port: Int) {
        let engine = self.core.nodeRegistry
        let address = "\(self.core.configuration.host):\(port)"
        Task { await engine.announce(address: address) }
        let waiters = self.listener.withLockedValue { listener in
            defer { listener = .listening(port: port) }
            if case .starting(let waiters) = listener { return waiters }
            return []
        }
        for w in waiters { w.resume(returning: port) }
        self.core.logger.info("switchboard node \(self.core.nodeID) listening on \(self.core.configuration.host):\(port)")
    }

    /// Close every connection with 4503 ("reconnect elsewhere"), spread over the
    /// drain window so clients do not all reconnect at the same instant.
    private func drainConnections() async {
        self.core.startDraining()
        let connections = self.core.hub.allConnections()
        guard !connections.isEmpty else { return }
        self.core.logger.info("draining \(connections.count) connections over \(self.drainWindow)s")
        let step = connections.count > 1 ? self.drainWindow / Double(connections.count) : 0
        for (i, connection) in connections.enumerated() {
            let delay = TimeAmount.nanoseconds(Int64(Double(i) * step * 1e9))
            connection.loop.scheduleTask(in: delay) {
                connection.handler?.close(code: .reconnectElsewhere, reason: "node draining; reconnect")
            }
        }
        // Wait (bounded) until they are gone.
        let deadline = ContinuousClock.now + .seconds(self.drainWindow + self.core.configuration.closeTimeout + 1)
        while self.core.hub.connectionCount > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
    }
}
