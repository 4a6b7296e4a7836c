import Foundation
import NIOCore
import NIOPosix
import RESP
import Switchboard
import SwitchboardRedis

/// A real redis-server on a free loopback port; `stop()` kills it (also on deinit).
final class RedisServer: @unchecked Sendable {
    let port: Int
    private let lock = NSLock()
    private var process: Process?

    init() async throws {
        self.port = try await freePort()
        try await start()
    }

    func start() async throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.executable)
        p.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--daemonize", "no", "--loglevel", "warning"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        lock.withLock { process = p }
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let c = try? await RESPConnection.connect(configuration: .init(port: port, protocolVersion: 2, connectTimeout: .milliseconds(200))) {
                let ok = (try? await c.send(RESPCommand("PING"))) != nil
                await c.close()
                if ok { return }
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

    var url: String { "redis://127.0.0.1:\(port)" }

    static let executable: String = {
        for path in ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server"]
        where FileManager.default.isExecutableFile(atPath: path) { return path }
        return "/usr/bin/redis-server"
    }()
}

private let usedPorts = NIOLockedBox(Set<Int>())

final class NIOLockedBox<V>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: V
    init(_ v: V) { value = v }
    func withLock<R>(_ body: (inout V) throws -> R) rethrows -> R { lock.lock(); defer { lock.unlock() }; return try body(&value) }
}

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

/// Collects delivered messages.
final class Collector: EngineDelivery, @unchecked Sendable {
    private let lock = NSLock()
    private var _messages: [StreamMessage] = []
    func deliver(_ message: StreamMessage) { lock.withLock { _messages.append(message) } }
    var messages: [StreamMessage] { lock.withLock { _messages } }
}

func engineConfiguration(_ server: RedisServer, _ modify: (inout RedisEngineConfiguration) -> Void = { _ in }) throws -> RedisEngineConfiguration {
    var c = try RedisEngineConfiguration(url: server.url)
    c.redis.commandTimeout = .seconds(5)
    c.connectTimeout = .seconds(5)
    modify(&c)
    return c
}

/// A fresh server plus started engines; everything stopped afterwards, even on failure.
func withEngines<T>(count: Int = 1, _ modify: (inout RedisEngineConfiguration) -> Void = { _ in },
                    _ body: (RedisServer, [RedisEngine], [Collector]) async throws -> T) async throws -> T {
    let server = try await RedisServer()
    defer { server.stop() }
    var engines: [RedisEngine] = []
    var collectors: [Collector] = []
    do {
        for _ in 0..<count {
            let e = RedisEngine(configuration: try engineConfiguration(server, modify))
            let c = Collector()
            engines.append(e)
            collectors.append(c)
            try await e.start(delivery: c)
        }
        let result = try await body(server, engines, collectors)
        for e in engines { await e.shutdown() }
        return result
    } catch {
        for e in engines { await e.shutdown() }
        throw error
    }
}

/// Polls `condition` until true or `timeout` passes; returns the last value.
@discardableResult
func eventually(timeout: Duration = .seconds(5), _ condition: () async -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try await Task.sleep(for: .milliseconds(10))
    }
    return await condition()
}

extension ByteBuffer {
    init(text: String) { self = ByteBuffer(string: text) }
    var text: String { String(buffer: self) }
}
