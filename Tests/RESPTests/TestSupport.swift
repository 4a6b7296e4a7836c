import Foundation
import NIOCore
import NIOPosix
import NIOSSL
@testable import RESP

/// Starts a real redis-server on a free loopback port; `stop()` kills it.
final class RedisServer: @unchecked Sendable {
    let port: Int
    let extraArgs: [String]
    /// When set, the server listens with TLS only (plain port disabled).
    let tls: TLSConfiguration?
    private let lock = NSLock()
    private var process: Process?

    init(extraArgs: [String] = [], tls: TLSConfiguration? = nil) async throws {
        self.port = try await freePort()
        self.extraArgs = extraArgs
        self.tls = tls
        try await start()
    }

    func start() async throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.executable)
        let portArgs = tls == nil ? ["--port", String(port)] : ["--port", "0", "--tls-port", String(port)]
        p.arguments = portArgs + ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--daemonize", "no", "--enable-debug-command", "yes", "--loglevel", "warning"] + extraArgs
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        lock.withLock { process = p }
        // Wait until it answers PING (any reply, NOAUTH included, means it is up).
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let c = try? await RESPConnection.connect(configuration: .init(port: port, tls: tls, tlsServerName: "localhost", protocolVersion: 2, connectTimeout: .milliseconds(200))) {
                _ = try? await c.send(RESPCommand("PING"))
                await c.close()
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        stop()
        throw RESPError.timeout
    }

    func stop() {
        let p = lock.withLock { () -> Process? in let p = process; process = nil; return p }
        guard let p, p.isRunning else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    deinit { stop() }

    var configuration: RESPConfiguration {
        RESPConfiguration(port: port, tls: tls, tlsServerName: tls == nil ? nil : "localhost", commandTimeout: .seconds(10))
    }

    static let executable: String = {
        for path in ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server"]
        where FileManager.default.isExecutableFile(atPath: path) { return path }
        return "/usr/bin/redis-server"
    }()
}

/// Runs `body` with a fresh server and always kills it afterwards.
func withRedis<T>(_ extraArgs: [String] = [], tls: TLSConfiguration? = nil, _ body: (RedisServer) async throws -> T) async throws -> T {
    let server = try await RedisServer(extraArgs: extraArgs, tls: tls)
    defer { server.stop() }
    return try await body(server)
}

private let usedPorts = LockedBox(Set<Int>())

/// Binds port 0 on loopback to let the kernel choose, then releases it.
func freePort() async throws -> Int {
    for _ in 0..<20 {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress!.port!
        try await channel.close()
        if usedPorts.withLock({ $0.insert(port).inserted }) { return port }
    }
    throw RESPError.notConnected
}

extension ByteBuffer {
    var text: String { String(buffer: self) }
}

/// Polls `condition` until true or 5 s pass.
func eventually(_ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(5)
    while !condition() && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(5))
    }
}

/// Self-signed certificate for localhost/127.0.0.1 generated with the openssl CLI.
func makeTestCertificate() throws -> (dir: String, cert: String, key: String) {
    let dir = NSTemporaryDirectory() + "resp-tls-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
    p.arguments = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", dir + "/key.pem", "-out", dir + "/cert.pem",
                   "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw RESPError.unexpectedReply("openssl failed") }
    return (dir, dir + "/cert.pem", dir + "/key.pem")
}
