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
        p.arguments =
            portArgs + [
                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--enable-debug-command", "yes", "--loglevel", "warning",
            ] + self.extraArgs
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        self.lock.withLock { self.process = p }
        // Up when it answers PING (any reply, NOAUTH included).
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let probe = RESPConfiguration(
                port: self.port, tls: self.tls, tlsServerName: "localhost", protocolVersion: 2,
                connectTimeout: .milliseconds(200))
            guard p.isRunning else { break }
            if let c = try? await RESPConnection.connect(configuration: probe) {
                // Any reply (NOAUTH included) means it is up.
                let answered: Bool
                do {
                    _ = try await c.send(RESPCommand("PING"), timeout: .seconds(1))
                    answered = true
                } catch RESPError.server {
                    answered = true
                } catch {
                    answered = false
                }
                await c.close()
                if answered { return }
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

/// A loopback port nobody listens on, for a server a test starts. It is taken below the
/// kernel's ephemeral range (`ip_local_port_range`): ports from there are also handed to
/// outgoing connections, and one could take the port between this check and the server's
/// bind. No two callers get the same port.
public func freePort() async throws -> Int {
    let lowestEphemeral =
        (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))
        .flatMap { $0.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } } ?? 32768
    let range = 10000..<max(10001, min(lowestEphemeral, 32768))
    for _ in 0..<200 {
        let port = Int.random(in: range)
        guard usedPorts.withLockedValue({ !$0.contains(port) }) else { continue }
        guard
            let channel = try? await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .bind(host: "127.0.0.1", port: port).get()
        else { continue }
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
