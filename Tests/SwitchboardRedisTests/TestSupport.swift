import Foundation
import NIOCore
import NIOPosix
import RESP
import RedisTestSupport
import Switchboard
import SwitchboardRedis

/// Collects what an engine hands to the gateway.
final class Collector: EngineDelivery, @unchecked Sendable {
    private let lock = NSLock()
    private var _messages: [StreamMessage] = []
    private var _catchUps: [String: StreamPosition] = [:]
    private var _controls: [ControlMessage] = []
    func deliver(_ message: StreamMessage) { lock.withLock { _messages.append(message) } }
    func catchUp(_ stream: String, to position: StreamPosition) { lock.withLock { _catchUps[stream] = position } }
    func control(_ message: ControlMessage) { lock.withLock { _controls.append(message) } }
    var messages: [StreamMessage] { lock.withLock { _messages } }
    var catchUps: [String: StreamPosition] { lock.withLock { _catchUps } }
    var controls: [ControlMessage] { lock.withLock { _controls } }
}

func engineConfiguration(_ server: RedisServer, _ modify: (inout RedisEngineConfiguration) -> Void = { _ in }) throws -> RedisEngineConfiguration {
    var c = try RedisEngineConfiguration(url: server.url)
    c.redis.commandTimeout = .seconds(5)
    c.connectTimeout = .seconds(5)
    modify(&c)
    return c
}

/// A fresh server plus started engines; everything stopped afterwards, even on failure.
func withEngines<T>(
    count: Int = 1, redisArgs: [String] = [], _ modify: (inout RedisEngineConfiguration) -> Void = { _ in },
    _ body: (RedisServer, [RedisEngine], [Collector]) async throws -> T
) async throws -> T {
    let server = try await RedisServer(extraArgs: redisArgs)
    defer { server.stop() }
    var engines: [RedisEngine] = []
    var collectors: [Collector] = []
    do {
        for i in 0..<count {
            var configuration = try engineConfiguration(server, modify)
            configuration.redis.clientName = "node\(i)"
            let e = RedisEngine(configuration: configuration)
            let c = Collector()
            engines.append(e)
            collectors.append(c)
            try await e.start(node: "node\(i)", delivery: c)
        }
        let result = try await body(server, engines, collectors)
        for e in engines { await e.shutdown() }
        return result
    } catch {
        for e in engines { await e.shutdown() }
        throw error
    }
}

extension ByteBuffer {
    init(text: String) { self = ByteBuffer(string: text) }
    var text: String { String(buffer: self) }
}

/// redis-server arguments that keep every write across a SIGKILL and restart (AOF, fsync always)
/// in a fresh directory.
func durableRedisArgs() throws -> [String] {
    let dir = NSTemporaryDirectory() + "switchboard-redis-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return ["--appendonly", "yes", "--appendfsync", "always", "--dir", dir]
}

/// `body`, tried again (for up to 20 s) while it throws: an engine reconnecting after Redis
/// restarted answers `unavailable` for a moment.
func retrying<T>(_ body: () async throws -> T) async throws -> T {
    let deadline = ContinuousClock.now + .seconds(20)
    while true {
        do {
            return try await body()
        } catch  where ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}
