import Foundation
import Hummingbird
import JWTKit
import Logging
import NIOCore
import ServiceLifecycle
import Switchboard
import SwitchboardClient

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// An in-process Switchboard node on a free loopback port, for testing an
/// application's routes over real sockets:
///
/// ```swift
/// try await TestNode.with(router: router) { node in
///     let client = try await node.connect(user: "ann")
///     let reply = try await client.request("GET", "/hello")
/// }
/// ```
public struct TestNode: Sendable {
    public let gateway: Gateway
    public let port: Int
    public let secret: String
    public var publisher: SwitchboardPublisher { self.gateway.publisher }
    public var webSocketURL: String { "ws://127.0.0.1:\(self.port)/ws" }
    public var httpURL: String { "http://127.0.0.1:\(self.port)" }

    /// Start a node serving `router`, run `body`, then shut the node down.
    public static func with<Context: SwitchboardRequestContextProtocol, Result: Sendable>(
        router: Router<Context>,
        configuration: GatewayConfiguration = .init(),
        engine: any SwitchboardEngine = MemoryEngine(),
        secret: String = TestNode.defaultSecret,
        backend: (any SwitchboardBackend)? = nil,
        logLevel: Logger.Level = .warning,
        _ body: @Sendable (TestNode) async throws -> Result
    ) async throws -> Result {
        var configuration = configuration
        configuration.host = "127.0.0.1"
        configuration.port = 0
        var logger = Logger(label: "switchboard.test")
        logger.logLevel = logLevel
        let verifier = try await TokenVerifier.hs256(secret: secret)
        let gateway = Gateway(
            router: router, configuration: configuration, engine: engine, verifier: verifier, backend: backend, drainWindow: 0.2, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [gateway], logger: logger))
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let port = await gateway.waitUntilListening()
            let node = TestNode(gateway: gateway, port: port, secret: secret)
            do {
                let result = try await body(node)
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
                return result
            } catch {
                await group.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
        }
    }

    /// The HS256 secret a node signs its test tokens with (`token(user:)`, `connect(user:)`)
    /// unless `with(secret:)` names another: an application's `IdentityMiddleware` verifier must
    /// use the same one, e.g. `TokenVerifier.hs256(secret: TestNode.defaultSecret)`.
    public static let defaultSecret = "switchboard-test-secret-of-32-bytes!"

    /// An HTTP request to the node (`Authorization: Bearer <token>` when given).
    public func http(_ method: String, _ path: String, body: String = "", token: String? = nil) async throws -> (status: Int, body: String) {
        var request = URLRequest(url: URL(string: self.httpURL + path)!, timeoutInterval: 10)
        request.httpMethod = method
        if !body.isEmpty { request.httpBody = Data(body.utf8) }
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    /// A signed HS256 token for `user`.
    public func token(user: String, roles: [String] = [], expiresIn: TimeInterval = 3600) async throws -> String {
        try await TestTokens.make(user: user, roles: roles, expiresIn: expiresIn, secret: self.secret)
    }

    /// A connected client for `user`.
    public func connect(user: String, roles: [String] = [], configuration: SwitchboardClientConfiguration = .init()) async throws -> SwitchboardClient
    {
        let token = try await self.token(user: user, roles: roles)
        let client = SwitchboardClient(url: self.webSocketURL, token: { token }, configuration: configuration)
        try await client.connect()
        return client
    }
}

/// Signed tokens for tests.
public enum TestTokens {
    public static func make(
        user: String, roles: [String] = [], expiresIn: TimeInterval = 3600, secret: String, kid: String? = nil
    ) async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256, kid: kid.map { JWKIdentifier(string: $0) })
        return try await keys.sign(SwitchboardClaims(sub: user, exp: Date(timeIntervalSinceNow: expiresIn), roles: roles.isEmpty ? nil : roles))
    }
}
