import ArgumentParser
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import Switchboard

/// `switchboard serve`: one node. Every option also reads an environment variable
/// (`SWITCHBOARD_<NAME>`); a flag wins over the environment, which wins over the default.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a gateway node (in-memory engine unless --redis is given).")

    @Option(help: "Address to listen on (env SWITCHBOARD_HOST).") var host: String?
    @Option(help: "Port (env SWITCHBOARD_PORT; 0 picks a free one).") var port: Int?
    @Option(name: .customLong("ws-path"), help: "WebSocket path (env SWITCHBOARD_WS_PATH).") var wsPath: String?
    @Option(name: .customLong("jwt-secret"), help: "HS256 secret for tokens (env SWITCHBOARD_JWT_SECRET).") var jwtSecret: String?
    @Option(name: .customLong("jwt-jwks"), help: "JSON Web Key Set file: RS256/ES256/EdDSA/HS256 keys with kid (env SWITCHBOARD_JWT_JWKS).") var jwtJWKS: String?
    @Flag(name: .customLong("allow-anonymous"), help: "Accept connections without a token (env SWITCHBOARD_ALLOW_ANONYMOUS=1).") var allowAnonymous = false
    @Option(name: .customLong("api-key"), help: "Key for the server API (X-API-Key); repeatable (env SWITCHBOARD_API_KEYS, comma-separated).") var apiKeys: [String] = []
    @Option(name: .customLong("redis"), help: "Redis URL for the cluster engine, e.g. redis://127.0.0.1:6379; with --redis-cluster, redis://host:port,host:port,… (env SWITCHBOARD_REDIS).") var redis: String?
    @Flag(name: .customLong("redis-cluster"), help: "The --redis URL names Redis Cluster nodes: hash-tagged keys, sharded pub/sub (env SWITCHBOARD_REDIS_CLUSTER=1).") var redisCluster = false
    @Option(name: .customLong("node-id"), help: "Node id (env SWITCHBOARD_NODE_ID; random by default).") var nodeID: String?
    @Option(name: .customLong("history-size"), help: "Messages kept per stream (env SWITCHBOARD_HISTORY_SIZE).") var historySize: Int?
    @Option(name: .customLong("history-age"), help: "Seconds a message is kept (env SWITCHBOARD_HISTORY_AGE).") var historyAge: Double?
    @Option(name: .customLong("session-ttl"), help: "Seconds a session survives its last connection (env SWITCHBOARD_SESSION_TTL).") var sessionTTL: Double?
    @Option(name: .customLong("max-queue-bytes"), help: "Outbound bytes per connection before a slow-consumer close (env SWITCHBOARD_MAX_QUEUE_BYTES).") var maxQueueBytes: Int?
    @Option(name: .customLong("max-message-size"), help: "Largest inbound message in bytes (env SWITCHBOARD_MAX_MESSAGE_SIZE).") var maxMessageSize: Int?
    @Option(name: .customLong("ping-interval"), help: "Seconds between pings (env SWITCHBOARD_PING_INTERVAL).") var pingInterval: Double?
    @Option(name: .customLong("request-rate"), help: "Messages per second per connection, token-bucket rate (env SWITCHBOARD_REQUEST_RATE).") var requestRate: Double?
    @Option(name: .customLong("request-burst"), help: "Token-bucket burst per connection (env SWITCHBOARD_REQUEST_BURST).") var requestBurst: Double?
    @Option(name: .customLong("max-subscriptions"), help: "Subscriptions per connection (env SWITCHBOARD_MAX_SUBSCRIPTIONS).") var maxSubscriptions: Int?
    @Option(name: .customLong("max-in-flight"), help: "Requests in flight per connection (env SWITCHBOARD_MAX_IN_FLIGHT).") var maxInFlight: Int?
    @Option(name: .customLong("drain-window"), help: "Seconds over which a draining node closes its clients (env SWITCHBOARD_DRAIN_WINDOW).") var drainWindow: Double?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical (env SWITCHBOARD_LOG_LEVEL).") var logLevel: String?

    func run() async throws {
        let env = Environment()
        let level = Logger.Level(rawValue: self.logLevel ?? env["LOG_LEVEL"] ?? "info") ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "switchboard")

        var configuration = GatewayConfiguration()
        configuration.host = self.host ?? env["HOST"] ?? configuration.host
        configuration.port = try self.port ?? env.int("PORT") ?? configuration.port
        configuration.webSocketPath = self.wsPath ?? env["WS_PATH"] ?? configuration.webSocketPath
        configuration.allowAnonymous = self.allowAnonymous || env["ALLOW_ANONYMOUS"] == "1"
        configuration.nodeID = self.nodeID ?? env["NODE_ID"]
        configuration.maxQueueBytes = try self.maxQueueBytes ?? env.int("MAX_QUEUE_BYTES") ?? configuration.maxQueueBytes
        configuration.maxMessageSize = try self.maxMessageSize ?? env.int("MAX_MESSAGE_SIZE") ?? configuration.maxMessageSize
        configuration.pingInterval = try self.pingInterval ?? env.double("PING_INTERVAL") ?? configuration.pingInterval
        configuration.requestRate = try self.requestRate ?? env.double("REQUEST_RATE") ?? configuration.requestRate
        configuration.requestBurst = try self.requestBurst ?? env.double("REQUEST_BURST") ?? configuration.requestBurst
        configuration.maxSubscriptions = try self.maxSubscriptions ?? env.int("MAX_SUBSCRIPTIONS") ?? configuration.maxSubscriptions
        configuration.maxInFlightRequests = try self.maxInFlight ?? env.int("MAX_IN_FLIGHT") ?? configuration.maxInFlightRequests
        guard configuration.requestRate > 0, configuration.requestBurst >= 1 else {
            throw ValidationError("--request-rate must be positive and --request-burst at least 1")
        }
        guard configuration.maxSubscriptions > 0, configuration.maxInFlightRequests > 0, configuration.pingInterval > 0 else {
            throw ValidationError("--max-subscriptions, --max-in-flight and --ping-interval must be positive")
        }
        guard configuration.webSocketPath.hasPrefix("/") else { throw ValidationError("--ws-path must start with '/'") }
        guard (0...65535).contains(configuration.port) else { throw ValidationError("--port must be 0-65535") }

        var memory = MemoryEngine.Configuration()
        memory.historySize = try self.historySize ?? env.int("HISTORY_SIZE") ?? memory.historySize
        memory.historyAge = try self.historyAge ?? env.double("HISTORY_AGE") ?? memory.historyAge
        memory.sessionTTL = try self.sessionTTL ?? env.double("SESSION_TTL") ?? memory.sessionTTL
        guard memory.historySize > 0, memory.historyAge > 0, memory.sessionTTL > 0 else {
            throw ValidationError("history size, history age and session TTL must be positive")
        }

        let verifier: TokenVerifier?
        if let path = self.jwtJWKS ?? env["JWT_JWKS"] {
            let json = try String(contentsOfFile: path, encoding: .utf8)
            verifier = try await TokenVerifier.jwks(json: json)
        } else if let secret = self.jwtSecret ?? env["JWT_SECRET"] {
            do {
                verifier = try await TokenVerifier.hs256(secret: secret)
            } catch {
                throw ValidationError("--jwt-secret: \(error)")
            }
        } else {
            verifier = nil
        }
        if verifier == nil && !configuration.allowAnonymous {
            logger.warning("no --jwt-secret or --jwt-jwks and no --allow-anonymous: every connection will be refused")
        }

        let engine: any SwitchboardEngine
        if let url = self.redis ?? env["REDIS"] {
            engine = try RedisEngineFactory.make(url: url, cluster: self.redisCluster || env["REDIS_CLUSTER"] == "1", history: memory, logger: logger)
        } else {
            engine = MemoryEngine(configuration: memory)
        }

        let apiKeys = Set(self.apiKeys + (env["API_KEYS"]?.split(separator: ",").map(String.init) ?? []))
        let router = Router(context: SwitchboardRequestContext.self)
        if let verifier { router.add(middleware: IdentityMiddleware(verifier: verifier)) }
        StandardRoutes.add(to: router, options: .init(apiKeys: apiKeys, openStreams: true))

        let gateway = Gateway(
            router: router, configuration: configuration, engine: engine, verifier: verifier,
            drainWindow: try self.drainWindow ?? env.double("DRAIN_WINDOW") ?? 5, logger: logger
        )
        let services = ServiceGroup(
            configuration: .init(services: [gateway], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await services.run()
    }
}

/// `SWITCHBOARD_*` environment variables.
struct Environment {
    let values = ProcessInfo.processInfo.environment

    subscript(name: String) -> String? { self.values["SWITCHBOARD_" + name] }

    func int(_ name: String) throws -> Int? {
        guard let raw = self[name] else { return nil }
        guard let value = Int(raw) else { throw ValidationError("SWITCHBOARD_\(name) must be an integer, got '\(raw)'") }
        return value
    }

    func double(_ name: String) throws -> Double? {
        guard let raw = self[name] else { return nil }
        guard let value = Double(raw) else { throw ValidationError("SWITCHBOARD_\(name) must be a number, got '\(raw)'") }
        return value
    }
}
