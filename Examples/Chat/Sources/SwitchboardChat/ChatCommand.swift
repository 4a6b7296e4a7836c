import ArgumentParser
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import Switchboard
import SwitchboardRedis

/// `switchboard-chat`: the chat example on the Switchboard library. One node with the
/// in-memory engine by default; several nodes share rooms, history and presence with
/// `--redis-url`. Serves the page (`Examples/Chat/Public`) and the browser client
/// (`Clients/js/switchboard.js` and its sibling modules) from disk.
@main
struct ChatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard-chat",
        abstract: "The Switchboard chat example: rooms, history, presence, typing; one node or many over Redis."
    )

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port (0 picks a free one).") var port = 8080
    @Option(
        name: [.customLong("redis-url"), .customLong("redis")],
        help: "Redis URL (redis://host:port) to run as one of several nodes; in-memory engine without it.")
    var redisURL: String?
    @Option(
        name: .customLong("jwt-secret"),
        help:
            "HS256 secret (at least 32 bytes) for the tokens sign-in issues; every node needs the same one (env CHAT_JWT_SECRET; random per process if unset)."
    )
    var jwtSecret: String?
    @Option(name: .customLong("api-key"), help: "Key for the gateway's server API under /api (X-API-Key); repeatable; the API is off without one.")
    var apiKeys: [String] = []
    @Option(name: .customLong("node-id"), help: "Node id (random by default).") var nodeID: String?
    @Option(name: .customLong("history-size"), help: "Messages kept per room.") var historySize = 1000
    @Option(name: .customLong("history-age"), help: "Seconds a message is kept (default 7 days).") var historyAge: Double = 7 * 86400
    @Option(name: .customLong("message-rate"), help: "Chat messages per second per user, over all their tabs and nodes.") var messageRate: Double = 1
    @Option(name: .customLong("message-burst"), help: "Chat messages a user may send at once before the rate applies.") var messageBurst: Double = 5
    @Option(
        name: .customLong("public-dir"),
        help: "Directory with index.html, app.js, style.css (default: Examples/Chat/Public, found from the working directory or the source tree).")
    var publicDir: String?
    @Option(
        name: .customLong("client-js"),
        help:
            "Path of the browser client served as /js/switchboard.js, with the other .js modules of its directory under /js/ (default: Clients/js/switchboard.js, found likewise)."
    )
    var clientJS: String?
    @Option(name: .customLong("drain-window"), help: "Seconds over which a stopping node closes its clients.") var drainWindow: Double = 1
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.") var logLevel = "info"

    func validate() throws {
        guard (0...65535).contains(self.port) else { throw ValidationError("--port must be 0-65535") }
        guard self.historySize > 0, self.historyAge > 0 else { throw ValidationError("--history-size and --history-age must be positive") }
        guard self.messageRate > 0, self.messageBurst >= 1 else {
            throw ValidationError("--message-rate must be positive and --message-burst at least 1")
        }
        guard Logger.Level(rawValue: self.logLevel) != nil else { throw ValidationError("--log-level: unknown level '\(self.logLevel)'") }
        if let secret = self.jwtSecret ?? ProcessInfo.processInfo.environment["CHAT_JWT_SECRET"], secret.utf8.count < 32 {
            throw ValidationError("--jwt-secret must be at least 32 bytes")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: self.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "switchboard-chat")

        let files = try StaticFiles.locate(publicDir: self.publicDir, clientJS: self.clientJS)
        let secret: String
        if let given = self.jwtSecret ?? ProcessInfo.processInfo.environment["CHAT_JWT_SECRET"] {
            secret = given
        } else {
            secret = (0..<48).map { _ in String("abcdefghijklmnopqrstuvwxyz0123456789".randomElement()!) }.joined()
            logger.notice("no --jwt-secret: using a random one, so tokens are valid on this process only")
        }
        let tokens = try await SignIn(secret: secret)

        let history = MemoryEngine.Configuration(historySize: self.historySize, historyAge: self.historyAge)
        let engine: any SwitchboardEngine
        if let url = self.redisURL {
            do {
                engine = RedisEngine(
                    configuration: try RedisEngineConfiguration(
                        url: url, historySize: history.historySize, historyAge: history.historyAge,
                        sessionTTL: history.sessionTTL, idempotencyTTL: history.idempotencyTTL),
                    logger: logger)
            } catch {
                throw ValidationError("--redis-url \(url): \(error)")
            }
        } else {
            engine = MemoryEngine(configuration: history)
        }

        let router = Router(context: SwitchboardRequestContext.self)
        router.add(middleware: IdentityMiddleware(verifier: tokens.verifier))
        // Health (/health/ready for balancers) and, with --api-key, the server API under /api.
        StandardRoutes.add(to: router, options: .init(apiKeys: Set(self.apiKeys), openStreams: false))
        files.addRoutes(to: router)
        let chat = ChatRoutes(
            engine: engine, tokens: tokens,
            limits: .init(messageRate: self.messageRate, messageBurst: self.messageBurst, historySize: self.historySize))
        chat.add(to: router)

        var configuration = GatewayConfiguration()
        configuration.host = self.host
        configuration.port = self.port
        configuration.nodeID = self.nodeID
        let gateway = Gateway(
            router: router, configuration: configuration, engine: engine, verifier: tokens.verifier,
            drainWindow: self.drainWindow, logger: logger)
        let services = ServiceGroup(
            configuration: .init(services: [gateway], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        let mode = self.redisURL == nil ? "in-memory engine" : "Redis engine"
        let host = self.host
        Task {
            let port = await gateway.waitUntilListening()
            logger.notice("chat on http://\(host):\(port)/ (\(mode), node \(gateway.nodeID))")
        }
        try await services.run()
    }
}
