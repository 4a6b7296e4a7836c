import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// Connection settings shared by `RESPConnection`, `RESPSubscriber` and `RESPClient`.
public struct RESPConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// When set, the connection uses TLS (NIOSSL).
    public var tls: TLSConfiguration?
    /// SNI / certificate host name; defaults to `host`.
    public var tlsServerName: String?
    public var username: String?
    public var password: String?
    public var clientName: String?
    public var database: Int
    /// 3 tries `HELLO 3` and falls back to RESP2 on error; 2 skips HELLO.
    public var protocolVersion: Int
    public var connectTimeout: Duration
    /// Default per-command timeout (nil = wait forever).
    public var commandTimeout: Duration?
    public var maxNestingDepth: Int
    public var maxBlobSize: Int

    public init(
        host: String = "127.0.0.1", port: Int = 6379, tls: TLSConfiguration? = nil,
        tlsServerName: String? = nil, username: String? = nil, password: String? = nil,
        clientName: String? = nil, database: Int = 0, protocolVersion: Int = 3,
        connectTimeout: Duration = .seconds(5), commandTimeout: Duration? = .seconds(30),
        maxNestingDepth: Int = 64, maxBlobSize: Int = 512 * 1024 * 1024
    ) {
        self.host = host
        self.port = port
        self.tls = tls
        self.tlsServerName = tlsServerName
        self.username = username
        self.password = password
        self.clientName = clientName
        self.database = database
        self.protocolVersion = protocolVersion
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.maxNestingDepth = maxNestingDepth
        self.maxBlobSize = maxBlobSize
    }
}

/// Anything that can execute a command (typed command helpers are defined on this protocol).
public protocol RESPCommandExecutor: Sendable {
    /// Sends `command` and returns its reply. Redis error replies throw `RESPError.server`.
    /// `timeout` overrides the configured default.
    func send(_ command: RESPCommand, timeout: Duration?) async throws -> RESPValue

    /// `SCRIPT LOAD` (the cluster client routes it to the node owning `keys.first`).
    func scriptLoad(_ source: String, keys: [String], timeout: Duration?) async throws -> RESPValue
}

extension RESPCommandExecutor {
    public func scriptLoad(_ source: String, keys: [String], timeout: Duration?) async throws -> RESPValue {
        try await send(RESPCommand("SCRIPT", "LOAD", .string(source)), timeout: timeout)
    }

    public func send(_ command: RESPCommand) async throws -> RESPValue {
        try await send(command, timeout: nil)
    }

    public func send(_ name: String, _ args: RESPArgument...) async throws -> RESPValue {
        try await send(RESPCommand(name, arguments: args), timeout: nil)
    }
}

/// One TCP (optionally TLS) connection to Redis with pipelining. Safe to use from many tasks
/// concurrently; requests are written without waiting for earlier replies.
public final class RESPConnection: RESPCommandExecutor, Sendable {
    public let channel: any Channel
    /// 3 if `HELLO 3` succeeded, else 2.
    public let protocolVersion: Int
    public let configuration: RESPConfiguration
    let logger: Logger
    private let handler: RESPChannelHandler
    private let closeReason: NIOLockedValueBox<RESPError?>

    private init(
        channel: any Channel, handler: RESPChannelHandler, protocolVersion: Int, configuration: RESPConfiguration,
        logger: Logger, closeReason: NIOLockedValueBox<RESPError?>
    ) {
        self.channel = channel
        self.handler = handler
        self.closeReason = closeReason
        self.protocolVersion = protocolVersion
        self.configuration = configuration
        self.logger = logger
    }

    /// Connects, performs HELLO/AUTH/SETNAME/SELECT. `onPush` receives RESP3 push frames that are
    /// not (un)subscribe confirmations (pub/sub messages, invalidations); it runs on the event loop.
    public static func connect(
        configuration: RESPConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "resp"),
        onPush: (@Sendable (RESPValue) -> Void)? = nil
    ) async throws -> RESPConnection {
        let sslContext = try configuration.tls.map { try NIOSSLContext(configuration: $0) }
        let serverName = configuration.tlsServerName ?? (isIPAddress(configuration.host) ? nil : configuration.host)
        let closeReason = NIOLockedValueBox<RESPError?>(nil)
        let parser = RESPParser(maxDepth: configuration.maxNestingDepth, maxBlobSize: configuration.maxBlobSize)
        let installed = NIOLockedValueBox<RESPChannelHandler?>(nil)
        let bootstrap = ClientBootstrap(group: eventLoopGroup)
            .connectTimeout(TimeAmount(configuration.connectTimeout))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    if let sslContext {
                        try ops.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: serverName))
                    }
                    let handler = RESPChannelHandler(
                        loop: channel.eventLoop, parser: parser, onPush: onPush, closeReason: closeReason, logger: logger)
                    try ops.addHandler(handler)
                    installed.withLockedValue { $0 = handler }
                }
            }
        let channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        guard let handler = installed.withLockedValue({ $0 }) else {
            try? await channel.close()
            throw RESPError.connectionClosed
        }
        let connection = RESPConnection(
            channel: channel, handler: handler, protocolVersion: 2, configuration: configuration,
            logger: logger, closeReason: closeReason)
        do {
            let version = try await connection.handshake()
            logger.debug("RESP connected to \(configuration.host):\(configuration.port) (RESP\(version))")
            return RESPConnection(
                channel: channel, handler: handler, protocolVersion: version, configuration: configuration,
                logger: logger, closeReason: closeReason)
        } catch {
            try? await channel.close()
            throw error
        }
    }

    /// HELLO 3 (with AUTH and SETNAME), falling back to RESP2 commands; then SELECT.
    private func handshake() async throws -> Int {
        let c = self.configuration
        let t = c.commandTimeout ?? c.connectTimeout
        var version = 2
        if c.protocolVersion >= 3 {
            var hello = RESPCommand("HELLO", 3)
            if let pw = c.password {
                hello.append(contentsOf: ["AUTH", .string(c.username ?? "default"), .string(pw)])
            }
            if let name = c.clientName { hello.append("SETNAME", .string(name)) }
            do {
                _ = try await self.send(hello, timeout: t)
                version = 3
            } catch RESPError.server(let code, let message) where !["WRONGPASS", "NOAUTH", "NOPERM"].contains(code) {
                _ = message  // HELLO unsupported (old server / NOPROTO): fall back to RESP2 below.
            }
        }
        if version == 2 {
            if let pw = c.password {
                if let user = c.username {
                    _ = try await self.send(RESPCommand("AUTH", .string(user), .string(pw)), timeout: t)
                } else {
                    _ = try await self.send(RESPCommand("AUTH", .string(pw)), timeout: t)
                }
            }
            if let name = c.clientName {
                _ = try await self.send(RESPCommand("CLIENT", "SETNAME", .string(name)), timeout: t)
            }
        }
        if c.database != 0 {
            _ = try await self.send(RESPCommand("SELECT", .int(c.database)), timeout: t)
        }
        return version
    }

    public func send(_ command: RESPCommand, timeout: Duration?) async throws -> RESPValue {
        if Task.isCancelled { throw CancellationError() }
        return try await Self.wait(self.enqueue(command), timeout: timeout ?? self.configuration.commandTimeout)
    }

    /// Submits without awaiting (callers that need wire order submit under their own lock).
    func enqueue(_ command: RESPCommand, expectedPushes: Int = 0, pushKind: String? = nil) -> EventLoopPromise<RESPValue> {
        let promise = self.channel.eventLoop.makePromise(of: RESPValue.self)
        self.handler.submit(.single(command, promise, expectedPushes: expectedPushes, pushKind: pushKind))
        return promise
    }

    /// Waits for `promise` with timeout and cancellation. On timeout/cancel the promise is failed;
    /// its FIFO slot stays in place, so the late reply is discarded and pairing stays correct.
    static func wait(_ promise: EventLoopPromise<RESPValue>, timeout: Duration?) async throws -> RESPValue {
        var scheduled: Scheduled<Void>?
        if let timeout {
            scheduled = promise.futureResult.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
                promise.fail(RESPError.timeout)
            }
        }
        defer { scheduled?.cancel() }
        return try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            promise.fail(CancellationError())
        }
    }

    /// Sends `commands` back to back in one write and returns their replies in order, each as a
    /// `Result` (a Redis error reply fails only its own command). One suspension for the batch,
    /// where `send` costs one per command: this is `redis-benchmark -P` for callers that have
    /// several commands at hand.
    public func pipeline(_ commands: [RESPCommand], timeout: Duration? = nil) async throws -> [Result<RESPValue, RESPError>] {
        if Task.isCancelled { throw CancellationError() }
        guard !commands.isEmpty else { return [] }
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: [Result<RESPValue, RESPError>].self)
        let batch = RESPBatch(expected: commands.count, promise: promise)
        self.handler.submit(.batch(commands, batch))
        var scheduled: Scheduled<Void>?
        if let timeout = timeout ?? configuration.commandTimeout {
            // Late replies then complete nothing: the batch keeps its FIFO slots, so pairing holds.
            scheduled = loop.scheduleTask(in: TimeAmount(timeout)) { batch.failRemaining(.timeout) }
        }
        defer { scheduled?.cancel() }
        return try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            loop.execute { batch.failRemaining(.cancelled) }
        }
    }

    public var isActive: Bool { channel.isActive }

    /// Why the connection closed, if it closed because of an error (e.g. `.protocolError`).
    public var closeError: RESPError? { closeReason.withLockedValue { $0 } }

    /// Completes when the connection is closed (by either side).
    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }

    public func close() async {
        try? await channel.close()
    }

    private static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }
}
