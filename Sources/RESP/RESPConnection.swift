import Logging
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

    public init(host: String = "127.0.0.1", port: Int = 6379, tls: TLSConfiguration? = nil,
                tlsServerName: String? = nil, username: String? = nil, password: String? = nil,
                clientName: String? = nil, database: Int = 0, protocolVersion: Int = 3,
                connectTimeout: Duration = .seconds(5), commandTimeout: Duration? = .seconds(30),
                maxNestingDepth: Int = 64, maxBlobSize: Int = 512 * 1024 * 1024) {
        self.host = host; self.port = port; self.tls = tls; self.tlsServerName = tlsServerName
        self.username = username; self.password = password; self.clientName = clientName
        self.database = database; self.protocolVersion = protocolVersion
        self.connectTimeout = connectTimeout; self.commandTimeout = commandTimeout
        self.maxNestingDepth = maxNestingDepth; self.maxBlobSize = maxBlobSize
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
    private let closeReason: LockedBox<RESPError?>

    private init(channel: any Channel, protocolVersion: Int, configuration: RESPConfiguration, logger: Logger,
                 closeReason: LockedBox<RESPError?>) {
        self.channel = channel
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
        let closeReason = LockedBox<RESPError?>(nil)
        let parser = RESPParser(maxDepth: configuration.maxNestingDepth, maxBlobSize: configuration.maxBlobSize)
        let bootstrap = ClientBootstrap(group: eventLoopGroup)
            .connectTimeout(TimeAmount(configuration.connectTimeout))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    if let sslContext {
                        try ops.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: serverName))
                    }
                    try ops.addHandler(ByteToMessageHandler(RESPDecoder(parser: parser)))
                    try ops.addHandler(RESPChannelHandler(onPush: onPush, closeReason: closeReason, logger: logger))
                }
            }
        let channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        do {
            let version = try await handshake(channel: channel, configuration: configuration, closeReason: closeReason)
            logger.debug("RESP connected to \(configuration.host):\(configuration.port) (RESP\(version))")
            return RESPConnection(channel: channel, protocolVersion: version, configuration: configuration, logger: logger,
                                  closeReason: closeReason)
        } catch {
            try? await channel.close()
            throw error
        }
    }

    private static func handshake(channel: any Channel, configuration c: RESPConfiguration,
                                  closeReason: LockedBox<RESPError?>) async throws -> Int {
        let t = c.commandTimeout ?? c.connectTimeout
        var version = 2
        if c.protocolVersion >= 3 {
            var hello = RESPCommand("HELLO", 3)
            if let pw = c.password {
                hello.append(contentsOf: ["AUTH", .string(c.username ?? "default"), .string(pw)])
            }
            if let name = c.clientName { hello.append("SETNAME", .string(name)) }
            do {
                _ = try await send(on: channel, hello, timeout: t, closeReason: closeReason)
                version = 3
            } catch RESPError.server(let code, let message) where !["WRONGPASS", "NOAUTH", "NOPERM"].contains(code) {
                _ = message // HELLO unsupported (old server / NOPROTO): fall back to RESP2 below.
            }
        }
        if version == 2 {
            if let pw = c.password {
                if let user = c.username {
                    _ = try await send(on: channel, RESPCommand("AUTH", .string(user), .string(pw)), timeout: t, closeReason: closeReason)
                } else {
                    _ = try await send(on: channel, RESPCommand("AUTH", .string(pw)), timeout: t, closeReason: closeReason)
                }
            }
            if let name = c.clientName {
                _ = try await send(on: channel, RESPCommand("CLIENT", "SETNAME", .string(name)), timeout: t, closeReason: closeReason)
            }
        }
        if c.database != 0 {
            _ = try await send(on: channel, RESPCommand("SELECT", .int(c.database)), timeout: t, closeReason: closeReason)
        }
        return version
    }

    public func send(_ command: RESPCommand, timeout: Duration?) async throws -> RESPValue {
        try await Self.send(on: channel, command, timeout: timeout ?? configuration.commandTimeout, closeReason: closeReason)
    }

    /// Enqueues without awaiting (used to keep wire order under a lock).
    func enqueue(_ command: RESPCommand, expectedPushes: Int = 0, pushKind: String? = nil) -> EventLoopPromise<RESPValue> {
        Self.enqueue(on: channel, command, expectedPushes: expectedPushes, pushKind: pushKind, closeReason: closeReason)
    }

    static func enqueue(on channel: any Channel, _ command: RESPCommand, expectedPushes: Int = 0,
                        pushKind: String? = nil, closeReason: LockedBox<RESPError?>) -> EventLoopPromise<RESPValue> {
        let promise = channel.eventLoop.makePromise(of: RESPValue.self)
        let request = RESPRequest(command: command, promise: promise, expectedPushes: expectedPushes, pushKind: pushKind)
        channel.write(RESPOutbound.single(request)).whenFailure { _ in
            promise.fail(closeReason.withLock { $0 } ?? RESPError.connectionClosed)
        }
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

    static func send(on channel: any Channel, _ command: RESPCommand, timeout: Duration?,
                     closeReason: LockedBox<RESPError?>) async throws -> RESPValue {
        if Task.isCancelled { throw CancellationError() }
        return try await wait(enqueue(on: channel, command, closeReason: closeReason), timeout: timeout)
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
        let closeReason = self.closeReason
        channel.write(RESPOutbound.batch(commands, batch)).whenFailure { _ in
            batch.failRemaining(closeReason.withLock { $0 } ?? RESPError.connectionClosed)
        }
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
    public var closeError: RESPError? { closeReason.withLock { $0 } }

    /// Completes when the connection is closed (by either side).
    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }

    public func close() async {
        try? await channel.close()
    }

    private static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }
}
