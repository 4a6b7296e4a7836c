import ArgumentParser
import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import Switchboard
import SwitchboardBridge
import SwitchboardRedis

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
    @Option(name: .customLong("jwt-jwks"), help: "JSON Web Key Set file: RS256/ES256/EdDSA/HS256 keys with kid (env SWITCHBOARD_JWT_JWKS).")
    var jwtJWKS: String?
    @Flag(name: .customLong("allow-anonymous"), help: "Accept connections without a token (env SWITCHBOARD_ALLOW_ANONYMOUS=1).") var allowAnonymous =
        false
    @Option(
        name: .customLong("api-key"),
        help: "Key for the server API (X-API-Key); repeatable (env SWITCHBOARD_API_KEYS, comma-separated; file \"api-keys\").") var apiKeys:
        [String] = []
    @Option(
        name: .customLong("allowed-origin"),
        help:
            "Origin browsers may connect from, e.g. https://app.example.com; repeatable; none allows any (env SWITCHBOARD_ALLOWED_ORIGINS, comma-separated; file \"allowed-origins\")."
    ) var allowedOrigins: [String] = []
    @Option(
        name: .customLong("redis"),
        help:
            "Redis URL for the cluster engine, e.g. redis://127.0.0.1:6379; with --redis-cluster, redis://host:port,host:port,… (env SWITCHBOARD_REDIS)."
    ) var redis: String?
    @Flag(
        name: .customLong("redis-cluster"),
        help: "The --redis URL names Redis Cluster nodes: hash-tagged keys, sharded pub/sub (env SWITCHBOARD_REDIS_CLUSTER=1).") var redisCluster =
        false
    @Option(name: .customLong("node-id"), help: "Node id (env SWITCHBOARD_NODE_ID; random by default).") var nodeID: String?
    @Option(name: .customLong("history-size"), help: "Messages kept per stream (env SWITCHBOARD_HISTORY_SIZE).") var historySize: Int?
    @Option(name: .customLong("history-age"), help: "Seconds a message is kept (env SWITCHBOARD_HISTORY_AGE).") var historyAge: Double?
    @Option(name: .customLong("session-ttl"), help: "Seconds a session survives its last connection (env SWITCHBOARD_SESSION_TTL).") var sessionTTL:
        Double?
    @Option(
        name: .customLong("max-queue-bytes"), help: "Outbound bytes per connection before a slow-consumer close (env SWITCHBOARD_MAX_QUEUE_BYTES).")
    var maxQueueBytes: Int?
    @Option(name: .customLong("max-message-size"), help: "Largest inbound frame and message in bytes (env SWITCHBOARD_MAX_MESSAGE_SIZE).")
    var maxMessageSize: Int?
    @Option(name: .customLong("ping-interval"), help: "Seconds between pings (env SWITCHBOARD_PING_INTERVAL).") var pingInterval: Double?
    @Option(name: .customLong("request-rate"), help: "Messages per second per connection, token-bucket rate (env SWITCHBOARD_REQUEST_RATE).")
    var requestRate: Double?
    @Option(name: .customLong("request-burst"), help: "Token-bucket burst per connection (env SWITCHBOARD_REQUEST_BURST).") var requestBurst: Double?
    @Option(
        name: .customLong("user-request-rate"),
        help: "Routed requests per second per user, over all their connections and nodes (env SWITCHBOARD_USER_REQUEST_RATE; off by default).")
    var userRequestRate: Double?
    @Option(name: .customLong("user-request-burst"), help: "Burst of the per-user limit (env SWITCHBOARD_USER_REQUEST_BURST; default 2 × rate).")
    var userRequestBurst: Double?
    @Option(
        name: .customLong("connection-rate"),
        help: "New WebSocket connections per second on this node (env SWITCHBOARD_CONNECTION_RATE; off by default).") var connectionRate: Double?
    @Option(name: .customLong("connection-burst"), help: "Burst of the connection-rate limit (env SWITCHBOARD_CONNECTION_BURST; default = rate).")
    var connectionBurst: Double?
    @Option(
        name: .customLong("max-connections-per-user"),
        help: "WebSocket connections one user may hold on this node (env SWITCHBOARD_MAX_CONNECTIONS_PER_USER; off by default).")
    var maxConnectionsPerUser: Int?
    @Option(name: .customLong("max-subscriptions"), help: "Subscriptions per connection (env SWITCHBOARD_MAX_SUBSCRIPTIONS).") var maxSubscriptions:
        Int?
    @Option(name: .customLong("max-in-flight"), help: "Requests in flight per connection (env SWITCHBOARD_MAX_IN_FLIGHT).") var maxInFlight: Int?
    @Option(name: .customLong("drain-window"), help: "Seconds over which a draining node closes its clients (env SWITCHBOARD_DRAIN_WINDOW).")
    var drainWindow: Double?
    @Option(
        name: .customLong("handshake-timeout"),
        help: "Seconds a new connection has to send its first request and finish a WebSocket upgrade (env SWITCHBOARD_HANDSHAKE_TIMEOUT).")
    var handshakeTimeout: Double?
    @Option(name: .customLong("request-timeout"), help: "Seconds an HTTP request's body has to arrive (env SWITCHBOARD_REQUEST_TIMEOUT).")
    var requestTimeout: Double?
    @Option(
        name: .customLong("idle-timeout"), help: "Seconds a kept-alive HTTP connection may wait for its next request (env SWITCHBOARD_IDLE_TIMEOUT).")
    var idleTimeout: Double?
    @Option(
        name: .customLong("max-handshakes"),
        help: "Connections in their handshake at once; more are closed at accept (env SWITCHBOARD_MAX_HANDSHAKES).") var maxHandshakes: Int?
    @Option(
        name: .customLong("max-connections"),
        help:
            "Connections the node holds at most; past it new ones are closed as they arrive (env SWITCHBOARD_MAX_CONNECTIONS; default: the open-file limit less a reserve)."
    ) var maxConnections: Int?
    @Option(
        name: .customLong("echo-path"),
        help: "Serve a WebSocket echo endpoint here, for conformance tests (env SWITCHBOARD_ECHO_PATH; off by default; never in production).")
    var echoPath: String?
    @Option(
        name: .customLong("backend"),
        help:
            "HTTP backend for request frames no route answers and rules' backend hooks: URL or /prefix=URL; repeatable (env SWITCHBOARD_BACKENDS, comma-separated; file \"backends\"). See docs/backend.md."
    ) var backends: [String] = []
    @Option(
        name: .customLong("backend-secret"), help: "Key of the HMAC signature the backend verifies (env SWITCHBOARD_BACKEND_SECRET).")
    var backendSecret: String?
    @Option(name: .customLong("backend-timeout"), help: "Seconds the backend has to answer; then 504 (env SWITCHBOARD_BACKEND_TIMEOUT).")
    var backendTimeout: Double?
    @Option(
        name: .customLong("backend-max-in-flight"), help: "Backend requests in flight per node; then 503 (env SWITCHBOARD_BACKEND_MAX_IN_FLIGHT).")
    var backendMaxInFlight: Int?
    @Option(
        name: .customLong("backend-max-in-flight-per-connection"),
        help: "Backend requests in flight per connection; then 429 (env SWITCHBOARD_BACKEND_MAX_IN_FLIGHT_PER_CONNECTION).")
    var backendMaxInFlightPerConnection: Int?
    @Option(
        name: .customLong("backend-meta"),
        help: "Frame META key sent to the backend as Switchboard-Meta-<key>; repeatable (env SWITCHBOARD_BACKEND_META; file \"backend-meta\").")
    var backendMeta: [String] = []
    @Option(
        name: .customLong("backend-disconnect-hook"),
        help: "Path on the backend notified when a connection closes (env SWITCHBOARD_BACKEND_DISCONNECT_HOOK; off by default).")
    var backendDisconnectHook: String?
    @Option(
        name: .customLong("backend-connect-hook"),
        help:
            "Path on the backend that names the user of an upgrade without a token, from its cookies (env SWITCHBOARD_BACKEND_CONNECT_HOOK; off by default)."
    ) var backendConnectHook: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical (env SWITCHBOARD_LOG_LEVEL).") var logLevel:
        String?

    /// Keys a configuration file may hold, with their types.
    static let fileKeys: [String: ConfigFile.Kind] = [
        "host": .string, "port": .integer, "ws-path": .string, "jwt-secret": .string, "jwt-jwks": .string,
        "allow-anonymous": .boolean, "api-keys": .strings, "allowed-origins": .strings, "redis": .string,
        "redis-cluster": .boolean, "node-id": .string, "history-size": .integer, "history-age": .number,
        "session-ttl": .number, "max-queue-bytes": .integer, "max-message-size": .integer, "ping-interval": .number,
        "request-rate": .number, "request-burst": .number, "user-request-rate": .number, "user-request-burst": .number,
        "connection-rate": .number, "connection-burst": .number, "max-connections-per-user": .integer,
        "max-subscriptions": .integer, "max-in-flight": .integer, "drain-window": .number, "echo-path": .string,
        "log-level": .string, "handshake-timeout": .number, "request-timeout": .number, "idle-timeout": .number,
        "max-handshakes": .integer, "max-connections": .integer, "streams": .objects, "backends": .strings,
        "backend-secret": .string, "backend-timeout": .number, "backend-max-in-flight": .integer, "backend-max-in-flight-per-connection": .integer,
        "backend-meta": .strings,
        "backend-disconnect-hook": .string, "backend-connect-hook": .string,
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
        var backend: BackendConfiguration?
    }

    /// Resolves and validates every option; each error names the option and the bad value.
    func settings(environment: Environment = Environment()) throws -> Settings {
        let path = self.config ?? environment["CONFIG"]
        let file = try path.map { try ConfigFile(path: $0, keys: Self.fileKeys) } ?? .empty
        // Each option by its long name: flag, else SWITCHBOARD_<NAME>, else the file's key.
        let o = OptionLayers(environment: environment, file: file, keys: Self.fileKeys)
        var s = Settings()
        var g = s.gateway
        g.host = o.string(self.host, "host") ?? g.host
        g.port = try o.int(self.port, "port") ?? g.port
        g.webSocketPath = o.string(self.wsPath, "ws-path") ?? g.webSocketPath
        g.allowAnonymous = try o.bool(self.allowAnonymous, "allow-anonymous")
        g.nodeID = o.string(self.nodeID, "node-id")
        g.maxQueueBytes = try o.int(self.maxQueueBytes, "max-queue-bytes") ?? g.maxQueueBytes
        g.maxMessageSize = try o.int(self.maxMessageSize, "max-message-size") ?? g.maxMessageSize
        g.pingInterval = try o.double(self.pingInterval, "ping-interval") ?? g.pingInterval
        g.requestRate = try o.double(self.requestRate, "request-rate") ?? g.requestRate
        g.requestBurst = try o.double(self.requestBurst, "request-burst") ?? g.requestBurst
        g.maxSubscriptions = try o.int(self.maxSubscriptions, "max-subscriptions") ?? g.maxSubscriptions
        g.maxInFlightRequests = try o.int(self.maxInFlight, "max-in-flight") ?? g.maxInFlightRequests
        g.connectionRate = try o.double(self.connectionRate, "connection-rate")
        g.connectionBurst = try o.double(self.connectionBurst, "connection-burst")
        g.maxConnectionsPerUser = try o.int(self.maxConnectionsPerUser, "max-connections-per-user")
        g.echoPath = o.string(self.echoPath, "echo-path")
        g.allowedOrigins = o.list(self.allowedOrigins, "allowed-origins")

        g.handshakeTimeout = try o.double(self.handshakeTimeout, "handshake-timeout") ?? g.handshakeTimeout
        g.requestTimeout = try o.double(self.requestTimeout, "request-timeout") ?? g.requestTimeout
        g.idleTimeout = try o.double(self.idleTimeout, "idle-timeout") ?? g.idleTimeout
        g.maxHandshakes = try o.int(self.maxHandshakes, "max-handshakes") ?? g.maxHandshakes
        g.maxConnections = try o.int(self.maxConnections, "max-connections")

        guard (0...65535).contains(g.port) else { throw ConfigError("--port must be 0-65535, got \(g.port)") }
        guard g.webSocketPath.hasPrefix("/") else { throw ConfigError("--ws-path must start with '/', got '\(g.webSocketPath)'") }
        if let echo = g.echoPath, !echo.hasPrefix("/") || echo == g.webSocketPath {
            throw ConfigError("--echo-path must start with '/' and differ from --ws-path, got '\(echo)'")
        }
        try Bounds.integer("--max-message-size", g.maxMessageSize, 128...(64 << 20))
        try Bounds.integer("--max-queue-bytes", g.maxQueueBytes, g.maxMessageSize...(1 << 40), below: "--max-message-size (\(g.maxMessageSize))")
        try Bounds.number("--request-rate", g.requestRate, above: 0, max: 1e9)
        try Bounds.number("--request-burst", g.requestBurst, atLeast: 1, max: 1e9)
        try Bounds.integer("--max-subscriptions", g.maxSubscriptions, 1...1_000_000)
        try Bounds.integer("--max-in-flight", g.maxInFlightRequests, 1...1_000_000)
        try Bounds.number("--ping-interval", g.pingInterval, above: 0, max: Bounds.day)
        try Bounds.number("--handshake-timeout", g.handshakeTimeout, above: 0, max: Bounds.day)
        try Bounds.number("--request-timeout", g.requestTimeout, above: 0, max: Bounds.day)
        try Bounds.number("--idle-timeout", g.idleTimeout, above: 0, max: Bounds.day)
        try Bounds.integer("--max-handshakes", g.maxHandshakes, 1...10_000_000)
        if let max = g.maxConnections { try Bounds.integer("--max-connections", max, 1...100_000_000) }
        if let rate = g.connectionRate { try Bounds.number("--connection-rate", rate, above: 0, max: 1e9) }
        if let burst = g.connectionBurst { try Bounds.number("--connection-burst", burst, atLeast: 1, max: 1e9) }
        if let max = g.maxConnectionsPerUser { try Bounds.integer("--max-connections-per-user", max, 1...10_000_000) }
        for origin in g.allowedOrigins where !(origin.hasPrefix("http://") || origin.hasPrefix("https://")) || origin.hasSuffix("/") {
            throw ConfigError("--allowed-origin must look like https://host[:port] (no path, no trailing '/'), got '\(origin)'")
        }
        s.gateway = g

        var m = s.memory
        m.historySize = try o.int(self.historySize, "history-size") ?? m.historySize
        m.historyAge = try o.double(self.historyAge, "history-age") ?? m.historyAge
        m.sessionTTL = try o.double(self.sessionTTL, "session-ttl") ?? m.sessionTTL
        try Bounds.integer("--history-size", m.historySize, 1...100_000_000)
        try Bounds.number("--history-age", m.historyAge, above: 0, max: 100 * Bounds.year)
        try Bounds.number("--session-ttl", m.sessionTTL, above: 0, max: Bounds.year)
        s.memory = m

        s.jwtJWKS = o.string(self.jwtJWKS, "jwt-jwks")
        s.jwtSecret = o.string(self.jwtSecret, "jwt-secret")
        s.apiKeys = Set(o.list(self.apiKeys, "api-keys"))
        guard !s.apiKeys.contains("") else { throw ConfigError("--api-key must not be empty") }
        s.redis = o.string(self.redis, "redis")
        s.redisCluster = try o.bool(self.redisCluster, "redis-cluster")
        s.userRequestRate = try o.double(self.userRequestRate, "user-request-rate")
        s.userRequestBurst = try o.double(self.userRequestBurst, "user-request-burst")
        if let rate = s.userRequestRate { try Bounds.number("--user-request-rate", rate, above: 0, max: 1e9) }
        if let burst = s.userRequestBurst { try Bounds.number("--user-request-burst", burst, atLeast: 1, max: 1e9) }
        s.drainWindow = try o.double(self.drainWindow, "drain-window") ?? s.drainWindow
        try Bounds.number("--drain-window", s.drainWindow, atLeast: 0, max: Bounds.day)
        let level = o.string(self.logLevel, "log-level") ?? "info"
        guard let parsed = Logger.Level(rawValue: level) else {
            throw ConfigError("--log-level must be one of trace, debug, info, notice, warning, error, critical; got '\(level)'")
        }
        s.logLevel = parsed
        try self.bridgeSettings(o, file: file, into: &s)
        return s
    }

    /// What `serve` starts with and `config check` validates: the settings, the token verifier
    /// (secret or key set read and checked) and the Redis engine's settings. Both commands run
    /// exactly this, so a file the check passes is one `serve` accepts.
    struct Resolved {
        var settings: Settings
        var verifier: TokenVerifier?
        var redis: RedisEngineConfiguration?
    }

    func resolve(environment: Environment = Environment()) async throws -> Resolved {
        let settings = try self.settings(environment: environment)
        let verifier: TokenVerifier?
        if let path = settings.jwtJWKS {
            let json: String
            do { json = try String(contentsOfFile: path, encoding: .utf8) } catch {
                throw ConfigError("--jwt-jwks \(path): \(error.localizedDescription)")
            }
            do {
                verifier = try await TokenVerifier.jwks(json: json)
            } catch {
                throw ConfigError("--jwt-jwks \(path): \(error)")
            }
        } else if let secret = settings.jwtSecret {
            do {
                verifier = try await TokenVerifier.hs256(secret: secret)
            } catch {
                throw ConfigError("--jwt-secret: \(error) (this one has \(secret.utf8.count))")
            }
        } else {
            verifier = nil
        }
        let redis = try settings.redis.map {
            try RedisEngineFactory.configuration(url: $0, cluster: settings.redisCluster, history: settings.memory)
        }
        return Resolved(settings: settings, verifier: verifier, redis: redis)
    }

    func run() async throws {
        let resolved = try await self.resolve()
        let settings = resolved.settings
        let verifier = resolved.verifier
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = settings.logLevel
            return handler
        }
        let logger = Logger(label: "switchboard")
        let registry = PrometheusCollectorRegistry()
        var metricsFactory = PrometheusMetricsFactory(registry: registry)
        metricsFactory.durationHistogramBuckets.merge(Gateway.durationHistogramBuckets) { $1 }
        MetricsSystem.bootstrap(metricsFactory)

        if verifier == nil && !settings.gateway.allowAnonymous && settings.backend?.connectHook == nil {
            logger.warning("no --jwt-secret, --jwt-jwks, --backend-connect-hook or --allow-anonymous: every connection will be refused")
        }
        if settings.gateway.echoPath != nil {
            logger.warning("echo endpoint on \(settings.gateway.echoPath!): for conformance tests only")
        }

        let engine: any SwitchboardEngine
        if let redis = resolved.redis {
            engine = RedisEngine(configuration: redis, logger: logger)
        } else {
            engine = MemoryEngine(configuration: settings.memory)
        }

        let router = Router(context: SwitchboardRequestContext.self)
        router.add(middleware: RouteMetricsMiddleware())
        if let verifier { router.add(middleware: IdentityMiddleware(verifier: verifier)) }
        if let rate = settings.userRequestRate {
            router.add(middleware: UserRateLimitMiddleware(rate: rate, burst: settings.userRequestBurst ?? max(1, 2 * rate)))
        }
        // Stream rules (the file's `streams`, or `/streams/**` open as before), then the backend
        // for request frames no route answers.
        router.add(middleware: StreamRulesMiddleware())
        router.add(middleware: BackendFallbackMiddleware())
        MetricsRoutes.add(to: router, registry: registry)
        StandardRoutes.add(to: router, options: .init(apiKeys: settings.apiKeys, openStreams: false))

        let backend = settings.backend.map {
            HTTPBackend(configuration: $0, eventLoopGroup: Gateway.defaultEventLoopGroup, logger: logger)
        }
        let gateway = Gateway(
            router: router, configuration: settings.gateway, engine: engine, verifier: verifier, backend: backend,
            drainWindow: settings.drainWindow, logger: logger
        )
        // The backend's pool closes after the gateway drained (services stop in reverse order).
        let services = ServiceGroup(
            configuration: .init(
                services: (backend.map { [$0 as any Service] } ?? []) + [gateway], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
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
