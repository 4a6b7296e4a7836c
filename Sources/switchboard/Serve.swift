import ArgumentParser
import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import Switchboard

/// `switchboard serve`: one node. Every option can also come from the environment
/// (`SWITCHBOARD_<NAME>`, e.g. `SWITCHBOARD_MAX_QUEUE_BYTES`) and from a JSON file given with
/// `--config` (key = the option's long name, e.g. `"max-queue-bytes"`). A flag wins over
/// the environment, which wins over the file, which wins over the default.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a gateway node (in-memory engine unless --redis is given).")

    @Option(help: "JSON configuration file (env SWITCHBOARD_CONFIG); see docs/operations.md.") var config: String?
    @Option(help: "Address to listen on (env SWITCHBOARD_HOST).") var host: String?
    @Option(help: "Port (env SWITCHBOARD_PORT; 0 picks a free one).") var port: Int?
    @Option(name: .customLong("ws-path"), help: "WebSocket path (env SWITCHBOARD_WS_PATH).") var wsPath: String?
    @Option(name: .customLong("jwt-secret"), help: "HS256 secret for tokens (env SWITCHBOARD_JWT_SECRET).") var jwtSecret: String?
    @Option(name: .customLong("jwt-jwks"), help: "JSON Web Key Set file: RS256/ES256/EdDSA/HS256 keys with kid (env SWITCHBOARD_JWT_JWKS).") var jwtJWKS: String?
    @Flag(name: .customLong("allow-anonymous"), help: "Accept connections without a token (env SWITCHBOARD_ALLOW_ANONYMOUS=1).") var allowAnonymous = false
    @Option(name: .customLong("api-key"), help: "Key for the server API (X-API-Key); repeatable (env SWITCHBOARD_API_KEYS, comma-separated; file \"api-keys\").") var apiKeys: [String] = []
    @Option(name: .customLong("allowed-origin"), help: "Origin browsers may connect from, e.g. https://app.example.com; repeatable; none allows any (env SWITCHBOARD_ALLOWED_ORIGINS, comma-separated; file \"allowed-origins\").") var allowedOrigins: [String] = []
    @Option(name: .customLong("redis"), help: "Redis URL for the cluster engine, e.g. redis://127.0.0.1:6379; with --redis-cluster, redis://host:port,host:port,… (env SWITCHBOARD_REDIS).") var redis: String?
    @Flag(name: .customLong("redis-cluster"), help: "The --redis URL names Redis Cluster nodes: hash-tagged keys, sharded pub/sub (env SWITCHBOARD_REDIS_CLUSTER=1).") var redisCluster = false
    @Option(name: .customLong("node-id"), help: "Node id (env SWITCHBOARD_NODE_ID; random by default).") var nodeID: String?
    @Option(name: .customLong("history-size"), help: "Messages kept per stream (env SWITCHBOARD_HISTORY_SIZE).") var historySize: Int?
    @Option(name: .customLong("history-age"), help: "Seconds a message is kept (env SWITCHBOARD_HISTORY_AGE).") var historyAge: Double?
    @Option(name: .customLong("session-ttl"), help: "Seconds a session survives its last connection (env SWITCHBOARD_SESSION_TTL).") var sessionTTL: Double?
    @Option(name: .customLong("max-queue-bytes"), help: "Outbound bytes per connection before a slow-consumer close (env SWITCHBOARD_MAX_QUEUE_BYTES).") var maxQueueBytes: Int?
    @Option(name: .customLong("max-message-size"), help: "Largest inbound frame and message in bytes (env SWITCHBOARD_MAX_MESSAGE_SIZE).") var maxMessageSize: Int?
    @Option(name: .customLong("ping-interval"), help: "Seconds between pings (env SWITCHBOARD_PING_INTERVAL).") var pingInterval: Double?
    @Option(name: .customLong("request-rate"), help: "Messages per second per connection, token-bucket rate (env SWITCHBOARD_REQUEST_RATE).") var requestRate: Double?
    @Option(name: .customLong("request-burst"), help: "Token-bucket burst per connection (env SWITCHBOARD_REQUEST_BURST).") var requestBurst: Double?
    @Option(name: .customLong("user-request-rate"), help: "Routed requests per second per user, over all their connections and nodes (env SWITCHBOARD_USER_REQUEST_RATE; off by default).") var userRequestRate: Double?
    @Option(name: .customLong("user-request-burst"), help: "Burst of the per-user limit (env SWITCHBOARD_USER_REQUEST_BURST; default 2 × rate).") var userRequestBurst: Double?
    @Option(name: .customLong("connection-rate"), help: "New WebSocket connections per second on this node (env SWITCHBOARD_CONNECTION_RATE; off by default).") var connectionRate: Double?
    @Option(name: .customLong("connection-burst"), help: "Burst of the connection-rate limit (env SWITCHBOARD_CONNECTION_BURST; default = rate).") var connectionBurst: Double?
    @Option(name: .customLong("max-connections-per-user"), help: "WebSocket connections one user may hold on this node (env SWITCHBOARD_MAX_CONNECTIONS_PER_USER; off by default).") var maxConnectionsPerUser: Int?
    @Option(name: .customLong("max-subscriptions"), help: "Subscriptions per connection (env SWITCHBOARD_MAX_SUBSCRIPTIONS).") var maxSubscriptions: Int?
    @Option(name: .customLong("max-in-flight"), help: "Requests in flight per connection (env SWITCHBOARD_MAX_IN_FLIGHT).") var maxInFlight: Int?
    @Option(name: .customLong("drain-window"), help: "Seconds over which a draining node closes its clients (env SWITCHBOARD_DRAIN_WINDOW).") var drainWindow: Double?
    @Option(name: .customLong("echo-path"), help: "Serve a WebSocket echo endpoint here, for conformance tests (env SWITCHBOARD_ECHO_PATH; off by default; never in production).") var echoPath: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical (env SWITCHBOARD_LOG_LEVEL).") var logLevel: String?

    /// Keys a configuration file may hold, with their types.
    static let fileKeys: [String: ConfigFile.Kind] = [
        "host": .string, "port": .integer, "ws-path": .string, "jwt-secret": .string, "jwt-jwks": .string,
        "allow-anonymous": .boolean, "api-keys": .strings, "allowed-origins": .strings, "redis": .string,
        "redis-cluster": .boolean, "node-id": .string, "history-size": .integer, "history-age": .number,
        "session-ttl": .number, "max-queue-bytes": .integer, "max-message-size": .integer, "ping-interval": .number,
        "request-rate": .number, "request-burst": .number, "user-request-rate": .number, "user-request-burst": .number,
        "connection-rate": .number, "connection-burst": .number, "max-connections-per-user": .integer,
        "max-subscriptions": .integer, "max-in-flight": .integer, "drain-window": .number, "echo-path": .string,
        "log-level": .string,
    ]

    /// Everything a node is started with, resolved from flags, environment, file and defaults.
    struct Settings {
        var gateway = GatewayConfiguration()
        var memory = MemoryEngine.Configuration()
        var jwtSecret: String?
        var jwtJWKS: String?
        var apiKeys: Set<String> = []
        var redis: String?
        var redisCluster = false
        var userRequestRate: Double?
        var userRequestBurst: Double?
        var drainWindow: Double = 5
        var logLevel: Logger.Level = .info
    }

    /// Resolves and validates every option; each error names the option and the bad value.
    func settings(environment: Environment = Environment()) throws -> Settings {
        let env = environment
        let path = self.config ?? env["CONFIG"]
        let file = try path.map { try ConfigFile(path: $0, keys: Self.fileKeys) } ?? .empty
        var s = Settings()
        var g = s.gateway
        g.host = self.host ?? env["HOST"] ?? file.string("host") ?? g.host
        g.port = try self.port ?? env.int("PORT") ?? file.int("port") ?? g.port
        g.webSocketPath = self.wsPath ?? env["WS_PATH"] ?? file.string("ws-path") ?? g.webSocketPath
        let anonymous = try env.bool("ALLOW_ANONYMOUS") ?? file.bool("allow-anonymous") ?? false
        g.allowAnonymous = self.allowAnonymous || anonymous
        g.nodeID = self.nodeID ?? env["NODE_ID"] ?? file.string("node-id")
        g.maxQueueBytes = try self.maxQueueBytes ?? env.int("MAX_QUEUE_BYTES") ?? file.int("max-queue-bytes") ?? g.maxQueueBytes
        g.maxMessageSize = try self.maxMessageSize ?? env.int("MAX_MESSAGE_SIZE") ?? file.int("max-message-size") ?? g.maxMessageSize
        g.pingInterval = try self.pingInterval ?? env.double("PING_INTERVAL") ?? file.double("ping-interval") ?? g.pingInterval
        g.requestRate = try self.requestRate ?? env.double("REQUEST_RATE") ?? file.double("request-rate") ?? g.requestRate
        g.requestBurst = try self.requestBurst ?? env.double("REQUEST_BURST") ?? file.double("request-burst") ?? g.requestBurst
        g.maxSubscriptions = try self.maxSubscriptions ?? env.int("MAX_SUBSCRIPTIONS") ?? file.int("max-subscriptions") ?? g.maxSubscriptions
        g.maxInFlightRequests = try self.maxInFlight ?? env.int("MAX_IN_FLIGHT") ?? file.int("max-in-flight") ?? g.maxInFlightRequests
        g.connectionRate = try self.connectionRate ?? env.double("CONNECTION_RATE") ?? file.double("connection-rate")
        g.connectionBurst = try self.connectionBurst ?? env.double("CONNECTION_BURST") ?? file.double("connection-burst")
        g.maxConnectionsPerUser = try self.maxConnectionsPerUser ?? env.int("MAX_CONNECTIONS_PER_USER") ?? file.int("max-connections-per-user")
        g.echoPath = self.echoPath ?? env["ECHO_PATH"] ?? file.string("echo-path")
        g.allowedOrigins = Self.list(self.allowedOrigins, env["ALLOWED_ORIGINS"], file.strings("allowed-origins"))

        guard (0...65535).contains(g.port) else { throw ConfigError("--port must be 0-65535, got \(g.port)") }
        guard g.webSocketPath.hasPrefix("/") else { throw ConfigError("--ws-path must start with '/', got '\(g.webSocketPath)'") }
        if let echo = g.echoPath, !echo.hasPrefix("/") || echo == g.webSocketPath {
            throw ConfigError("--echo-path must start with '/' and differ from --ws-path, got '\(echo)'")
        }
        guard g.maxMessageSize >= 128 else { throw ConfigError("--max-message-size must be at least 128, got \(g.maxMessageSize)") }
        guard g.maxQueueBytes >= g.maxMessageSize else {
            throw ConfigError("--max-queue-bytes (\(g.maxQueueBytes)) must be at least --max-message-size (\(g.maxMessageSize))")
        }
        guard g.requestRate > 0, g.requestBurst >= 1 else {
            throw ConfigError("--request-rate must be positive and --request-burst at least 1")
        }
        guard g.maxSubscriptions > 0, g.maxInFlightRequests > 0, g.pingInterval > 0 else {
            throw ConfigError("--max-subscriptions, --max-in-flight and --ping-interval must be positive")
        }
        if let rate = g.connectionRate, rate <= 0 { throw ConfigError("--connection-rate must be positive, got \(rate)") }
        if let burst = g.connectionBurst, burst < 1 { throw ConfigError("--connection-burst must be at least 1, got \(burst)") }
        if let max = g.maxConnectionsPerUser, max < 1 { throw ConfigError("--max-connections-per-user must be at least 1, got \(max)") }
        for origin in g.allowedOrigins where !(origin.hasPrefix("http://") || origin.hasPrefix("https://")) || origin.hasSuffix("/") {
            throw ConfigError("--allowed-origin must look like https://host[:port] (no path, no trailing '/'), got '\(origin)'")
        }
        s.gateway = g

        var m = s.memory
        m.historySize = try self.historySize ?? env.int("HISTORY_SIZE") ?? file.int("history-size") ?? m.historySize
        m.historyAge = try self.historyAge ?? env.double("HISTORY_AGE") ?? file.double("history-age") ?? m.historyAge
        m.sessionTTL = try self.sessionTTL ?? env.double("SESSION_TTL") ?? file.double("session-ttl") ?? m.sessionTTL
        guard m.historySize > 0, m.historyAge > 0, m.sessionTTL > 0 else {
            throw ConfigError("--history-size, --history-age and --session-ttl must be positive")
        }
        s.memory = m

        s.jwtJWKS = self.jwtJWKS ?? env["JWT_JWKS"] ?? file.string("jwt-jwks")
        s.jwtSecret = self.jwtSecret ?? env["JWT_SECRET"] ?? file.string("jwt-secret")
        s.apiKeys = Set(Self.list(self.apiKeys, env["API_KEYS"], file.strings("api-keys")))
        guard !s.apiKeys.contains("") else { throw ConfigError("--api-key must not be empty") }
        s.redis = self.redis ?? env["REDIS"] ?? file.string("redis")
        let cluster = try env.bool("REDIS_CLUSTER") ?? file.bool("redis-cluster") ?? false
        s.redisCluster = self.redisCluster || cluster
        s.userRequestRate = try self.userRequestRate ?? env.double("USER_REQUEST_RATE") ?? file.double("user-request-rate")
        s.userRequestBurst = try self.userRequestBurst ?? env.double("USER_REQUEST_BURST") ?? file.double("user-request-burst")
        if let rate = s.userRequestRate, rate <= 0 { throw ConfigError("--user-request-rate must be positive, got \(rate)") }
        if let burst = s.userRequestBurst, burst < 1 { throw ConfigError("--user-request-burst must be at least 1, got \(burst)") }
        s.drainWindow = try self.drainWindow ?? env.double("DRAIN_WINDOW") ?? file.double("drain-window") ?? s.drainWindow
        guard s.drainWindow >= 0 else { throw ConfigError("--drain-window must not be negative") }
        let level = self.logLevel ?? env["LOG_LEVEL"] ?? file.string("log-level") ?? "info"
        guard let parsed = Logger.Level(rawValue: level) else {
            throw ConfigError("--log-level must be one of trace, debug, info, notice, warning, error, critical; got '\(level)'")
        }
        s.logLevel = parsed
        return s
    }

    /// A repeatable option: flags if given, else the comma-separated variable, else the file.
    private static func list(_ flags: [String], _ env: String?, _ file: [String]?) -> [String] {
        if !flags.isEmpty { return flags }
        if let env { return env.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
        return file ?? []
    }

    func run() async throws {
        let settings = try self.settings()
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = settings.logLevel
            return handler
        }
        let logger = Logger(label: "switchboard")
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))

        let verifier: TokenVerifier?
        if let path = settings.jwtJWKS {
            let json: String
            do { json = try String(contentsOfFile: path, encoding: .utf8) } catch { throw ConfigError("--jwt-jwks \(path): \(error.localizedDescription)") }
            verifier = try await TokenVerifier.jwks(json: json)
        } else if let secret = settings.jwtSecret {
            do {
                verifier = try await TokenVerifier.hs256(secret: secret)
            } catch {
                throw ConfigError("--jwt-secret: \(error)")
            }
        } else {
            verifier = nil
        }
        if verifier == nil && !settings.gateway.allowAnonymous {
            logger.warning("no --jwt-secret or --jwt-jwks and no --allow-anonymous: every connection will be refused")
        }
        if settings.gateway.echoPath != nil {
            logger.warning("echo endpoint on \(settings.gateway.echoPath!): for conformance tests only")
        }

        let engine: any SwitchboardEngine
        if let url = settings.redis {
            engine = try RedisEngineFactory.make(url: url, cluster: settings.redisCluster, history: settings.memory, logger: logger)
        } else {
            engine = MemoryEngine(configuration: settings.memory)
        }

        let router = Router(context: SwitchboardRequestContext.self)
        router.add(middleware: RouteMetricsMiddleware())
        if let verifier { router.add(middleware: IdentityMiddleware(verifier: verifier)) }
        if let rate = settings.userRequestRate {
            router.add(middleware: UserRateLimitMiddleware(rate: rate, burst: settings.userRequestBurst ?? max(1, 2 * rate)))
        }
        MetricsRoutes.add(to: router, registry: registry)
        StandardRoutes.add(to: router, options: .init(apiKeys: settings.apiKeys, openStreams: true))

        let gateway = Gateway(
            router: router, configuration: settings.gateway, engine: engine, verifier: verifier,
            drainWindow: settings.drainWindow, logger: logger
        )
        let services = ServiceGroup(
            configuration: .init(services: [gateway], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await services.run()
    }
}

/// `SWITCHBOARD_*` environment variables.
struct Environment {
    var values = ProcessInfo.processInfo.environment

    subscript(name: String) -> String? { self.values["SWITCHBOARD_" + name] }

    func int(_ name: String) throws -> Int? {
        guard let raw = self[name] else { return nil }
        guard let value = Int(raw) else { throw ConfigError("SWITCHBOARD_\(name) must be an integer, got '\(raw)'") }
        return value
    }

    func double(_ name: String) throws -> Double? {
        guard let raw = self[name] else { return nil }
        guard let value = Double(raw) else { throw ConfigError("SWITCHBOARD_\(name) must be a number, got '\(raw)'") }
        return value
    }

    func bool(_ name: String) throws -> Bool? {
        guard let raw = self[name] else { return nil }
        switch raw.lowercased() {
        case "1", "true", "yes": return true
        case "0", "false", "no", "": return false
        default: throw ConfigError("SWITCHBOARD_\(name) must be 1 or 0, got '\(raw)'")
        }
    }
}
