import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import RESP

/// A real redis-server on a free loopback port, for tests. `stop()` kills it (also on deinit);
/// `start()` starts it again on the same port with the same arguments (and data directory).
public final class RedisServer: @unchecked Sendable {
    public let port: Int
    public let extraArgs: [String]
    /// When set, the server listens with TLS only (plain port disabled).
    public let tls: TLSConfiguration?
    private let lock = NSLock()
    private var process: Process?

    public init(port: Int? = nil, extraArgs: [String] = [], tls: TLSConfiguration? = nil) async throws {
        if let port { self.port = port } else { self.port = try await freePort() }
        self.extraArgs = extraArgs
        self.tls = tls
        try await self.start()
    }

    public func start() async throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.executable)
        let portArgs = self.tls == nil ? ["--port", String(self.port)] : ["--port", "0", "--tls-port", String(self.port)]
        p.arguments = portArgs + ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                  "--daemonize", "no", "--enable-debug-command", "yes", "--loglevel", "warning"] + self.extraArgs
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        self.lock.withLock { self.process = p }
        // Up when it answers PING (any reply, NOAUTH included).
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let probe = RESPConfiguration(port: self.port, tls: self.tls, tlsServerName: "localhost", protocolVersion: 2,
                                          connectTimeout: .milliseconds(200))
            if let c = try? await RESPConnection.connect(configuration: probe) {
                _ = try? await c.send(RESPCommand("PING"))
                await c.close()
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        self.stop()
        throw RESPError.timeout
    }

    /// SIGKILL, as a crash would.
    public func stop() {
        let p = self.lock.withLock { () -> Process? in
            let p = self.process
            self.process = nil
            return p
        }
        guard let p, p.isRunning else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    public var isRunning: Bool { self.lock.withLock { self.process?.isRunning ?? false } }

    deinit { self.stop() }

    public var configuration: RESPConfiguration {
        RESPConfiguration(port: self.port, tls: self.tls, tlsServerName: self.tls == nil ? nil : "localhost", commandTimeout: .seconds(10))
    }

    public var url: String { "redis://127.0.0.1:\(self.port)" }

    public static let executable: String = {
        for path in ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server"]
        where FileManager.default.isExecutableFile(atPath: path) { return path }
        return "/usr/bin/redis-server"
    }()
}

/// Runs `body` with a fresh server and always kills it afterwards.
public func withRedis<T>(_ extraArgs: [String] = [], tls: TLSConfiguration? = nil, _ body: (RedisServer) async throws -> T) async throws -> T {
    let server = try await RedisServer(extraArgs: extraArgs, tls: tls)
    defer { server.stop() }
    return try await body(server)
}

private let usedPorts = NIOLockedValueBox(Set<Int>())

/// A loopback port nobody listens on: the kernel picks it, and no two callers get the same one.
public func freePort() async throws -> Int {
    for _ in 0..<20 {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress!.port!
        try await channel.close()
        if usedPorts.withLockedValue({ $0.insert(port).inserted }) { return port }
    }
    throw RESPError.notConnected
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
@discardableResult
public func eventually(timeout: Duration = .seconds(10), _ condition: () async -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return await condition()
}
