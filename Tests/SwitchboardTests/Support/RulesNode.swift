import Foundation
import Hummingbird
import RedisTestSupport
import Switchboard
import SwitchboardRedis
import SwitchboardTesting
import Testing

/// The engines every stream rule must be honoured by.
enum EngineKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory, redis
    var testDescription: String { self.rawValue }
}

/// A node whose streams are governed by `rules` (through `StreamRulesMiddleware`, as `serve`
/// runs it), on a fresh engine of `kind` (a real redis-server for `.redis`), with `backend`
/// answering what no route does.
func withRulesNode<R: Sendable>(
    _ kind: EngineKind, rules: [StreamRule], anonymous: Bool = true, backend: (any SwitchboardBackend)? = nil,
    routes: (Router<SwitchboardRequestContext>) -> Void = { _ in },
    _ body: @Sendable (TestNode) async throws -> R
) async throws -> R {
    var configuration = GatewayConfiguration()
    configuration.pingInterval = 3600
    configuration.allowAnonymous = anonymous
    configuration.streamRules = try StreamRules(rules)
    let router = Router(context: SwitchboardRequestContext.self)
    router.add(middleware: StreamRulesMiddleware())
    router.add(middleware: BackendFallbackMiddleware())
    routes(router)
    switch kind {
    case .memory:
        return try await TestNode.with(router: router, configuration: configuration, engine: MemoryEngine(), backend: backend, body)
    case .redis:
        let server = try await RedisServer()
        defer { server.stop() }
        var redis = try RedisEngineConfiguration(url: server.url)
        redis.redis.commandTimeout = .seconds(5)
        let engine = RedisEngine(configuration: redis)
        return try await TestNode.with(router: router, configuration: configuration, engine: engine, backend: backend, body)
    }
}

extension StreamRule {
    /// A rule for tests: the pattern is a literal that must parse.
    static func test(
        _ pattern: String, storage: StreamStorage = .standard, presence: Bool = true, subscribe: Subscribe = .authenticated,
        publish: Publish = .none
    ) throws -> StreamRule {
        try StreamRule(StreamPattern(pattern), storage: storage, presence: presence, subscribe: subscribe, publish: publish)
    }
}
