import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

public enum RESPClientEvent: Sendable, Equatable {
    /// First successful connection.
    case connected
    /// Connection (command or pub/sub) lost; commands now fail fast with `.notConnected`.
    case disconnected
    /// Connected again after a loss; subscriptions have already been restored.
    case reconnected
}

public struct RESPReconnectPolicy: Sendable {
    public var initialDelay: Duration
    public var maxDelay: Duration
    public init(initialDelay: Duration = .milliseconds(100), maxDelay: Duration = .seconds(10)) {
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
    }

    /// Exponential backoff with full jitter: uniform in [0, min(max, initial * 2^attempt)].
    public func delay(attempt: Int) -> Duration {
        let initial = Double(initialDelay.components.seconds) + Double(initialDelay.components.attoseconds) / 1e18
        let maximum = Double(maxDelay.components.seconds) + Double(maxDelay.components.attoseconds) / 1e18
        let cap = min(maximum, initial * pow2(min(attempt, 40)))
        return .nanoseconds(Int64(Double.random(in: 0...max(cap, 0)) * 1e9))
    }

    private func pow2(_ n: Int) -> Double {
        var r = 1.0
        for _ in 0..<n { r *= 2 }
        return r
    }
}

/// Resilient client: a command connection plus a pub/sub subscriber, reconnected with
/// exponential backoff + full jitter. Subscriptions are restored after reconnect. Commands issued
/// while disconnected fail fast with `RESPError.notConnected` (nothing is buffered).
public final class RESPClient: RESPCommandExecutor, Sendable {
    struct State {
        var connection: RESPConnection?
        var task: Task<Void, Never>?
        var shutdown = false
    }

    public let configuration: RESPConfiguration
    public let reconnectPolicy: RESPReconnectPolicy
    /// Pub/sub; subscribing while disconnected registers locally and is sent on (re)connect.
    public let subscriber: RESPSubscriber
    /// Connection state events (single consumer).
    public let events: AsyncStream<RESPClientEvent>
    private let eventsContinuation: AsyncStream<RESPClientEvent>.Continuation
    private let state = NIOLockedValueBox(State())
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger

    public init(
        configuration: RESPConfiguration,
        reconnectPolicy: RESPReconnectPolicy = RESPReconnectPolicy(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "resp.client")
    ) {
        self.configuration = configuration
        self.reconnectPolicy = reconnectPolicy
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.subscriber = RESPSubscriber(
            configuration: configuration, eventLoopGroup: eventLoopGroup,
            logger: logger, managed: true)
        (events, eventsContinuation) = AsyncStream<RESPClientEvent>.makeStream(bufferingPolicy: .bufferingNewest(256))
    }

    /// Starts the background connect/reconnect loop (idempotent). Returns immediately.
    public func start() {
        state.withLockedValue { s in
            guard s.task == nil, !s.shutdown else { return }
            s.task = Task { [self] in await self.run() }
        }
    }

    /// Starts if needed and waits until the first connection is established (or timeout).
    public func connect(timeout: Duration = .seconds(10)) async throws {
        start()
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if isConnected { return }
            if state.withLockedValue({ $0.shutdown }) { throw RESPError.shutdown }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw RESPError.timeout
    }

    public var isConnected: Bool { state.withLockedValue { $0.connection != nil } }

    /// The current command connection (nil while disconnected).
    public var connection: RESPConnection? { state.withLockedValue { $0.connection } }

    public func send(_ command: RESPCommand, timeout: Duration?) async throws -> RESPValue {
        guard let conn = state.withLockedValue({ $0.connection }), conn.isActive else {
            throw state.withLockedValue({ $0.shutdown }) ? RESPError.shutdown : RESPError.notConnected
        }
        return try await conn.send(command, timeout: timeout)
    }

    /// Several commands in one write (see `RESPConnection.pipeline`).
    public func pipeline(_ commands: [RESPCommand], timeout: Duration? = nil) async throws -> [Result<RESPValue, RESPError>] {
        guard let conn = state.withLockedValue({ $0.connection }), conn.isActive else {
            throw state.withLockedValue({ $0.shutdown }) ? RESPError.shutdown : RESPError.notConnected
        }
        return try await conn.pipeline(commands, timeout: timeout)
    }

    /// Stream-based subscription (see `RESPSubscriber`).
    public func subscribe(_ channels: [String], kind: RESPSubscriptionKind = .channel) async throws -> RESPSubscription {
        try await subscriber.subscribe(channels, kind: kind)
    }

    /// Handler-based subscription (see `RESPSubscriber`).
    public func subscribe(
        _ channels: [String], kind: RESPSubscriptionKind = .channel,
        handler: @escaping @Sendable (_ channel: String, _ payload: ByteBuffer) -> Void
    ) async throws -> RESPSubscription {
        try await subscriber.subscribe(channels, kind: kind, handler: handler)
    }

    /// Stops reconnecting, closes connections, finishes `events` and subscription streams.
    public func shutdown() async {
        let (task, conn) = state.withLockedValue { s -> (Task<Void, Never>?, RESPConnection?) in
            s.shutdown = true
            let c = s.connection
            s.connection = nil
            return (s.task, c)
        }
        task?.cancel()
        await conn?.close()
        await subscriber.close()
        await task?.value
        eventsContinuation.finish()
    }

    private func run() async {
        var attempt = 0
        var everConnected = false
        while !Task.isCancelled && !state.withLockedValue({ $0.shutdown }) {
            var conn: RESPConnection?
            do {
                let c = try await RESPConnection.connect(configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger)
                conn = c
                let sub = try await subscriber.connectAndResubscribe()
                let installed = state.withLockedValue { s -> Bool in
                    if s.shutdown { return false }
                    s.connection = c
                    return true
                }
                guard installed else {
                    await c.close()
                    await sub.close()
                    return
                }
                attempt = 0
                eventsContinuation.yield(everConnected ? .reconnected : .connected)
                everConnected = true
                logger.info("RESP client connected to \(configuration.host):\(configuration.port)")

                // Wait until either connection closes (or shutdown closes them).
                let closed = c.channel.eventLoop.makePromise(of: Void.self)
                c.closeFuture.whenComplete { _ in closed.succeed(()) }
                sub.closeFuture.whenComplete { _ in closed.succeed(()) }
                try? await closed.futureResult.get()

                state.withLockedValue { s in if s.connection === c { s.connection = nil } }
                subscriber.detach(sub)
                await c.close()
                await sub.close()
                if state.withLockedValue({ $0.shutdown }) { return }
                eventsContinuation.yield(.disconnected)
                logger.warning("RESP client disconnected from \(configuration.host):\(configuration.port)")
                conn = nil
            } catch {
                if let conn { await conn.close() }
                if Task.isCancelled || state.withLockedValue({ $0.shutdown }) { return }
                logger.debug("RESP connect attempt \(attempt) failed: \(error)")
            }
            let delay = reconnectPolicy.delay(attempt: attempt)
            attempt += 1
            do { try await Task.sleep(for: delay) } catch { return }
        }
    }
}
