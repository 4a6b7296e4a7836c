import Foundation
import NIOCore
import NIOPosix
import RESP
import Switchboard
import SwitchboardRedis
import RedisTestSupport

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

extension ByteBuffer {
    init(text: String) { self = ByteBuffer(string: text) }
    var text: String { String(buffer: self) }
}
