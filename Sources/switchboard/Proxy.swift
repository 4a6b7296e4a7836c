import ArgumentParser
import Foundation
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import SwitchboardProxy

/// `switchboard proxy`: the reconnecting proxy in front of an existing WebSocket backend
/// (docs/proxy.md). Every option also reads `SWITCHBOARD_PROXY_<NAME>` from the environment
/// (e.g. `SWITCHBOARD_PROXY_UPSTREAM`); a flag wins over the environment.
struct Proxy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the reconnecting proxy in front of an existing WebSocket backend.")

    @Option(help: "Upstream WebSocket URL, ws://host:port/path or wss://… (env SWITCHBOARD_PROXY_UPSTREAM).") var upstream: String?
    @Option(help: "sender (one upstream per client session, default) or receiver (one upstream for the proxy) (env SWITCHBOARD_PROXY_MODE).")
    var mode: String?
    @Option(help: "Address to listen on (env SWITCHBOARD_PROXY_HOST; default 127.0.0.1).") var host: String?
    @Option(help: "Port (env SWITCHBOARD_PROXY_PORT; default 8090; 0 picks a free one).") var port: Int?
    @Option(
        name: .customLong("forward-header"),
        help:
            "Client request header copied to the upstream handshake; repeatable (env SWITCHBOARD_PROXY_FORWARD_HEADERS, comma-separated; default Authorization, Cookie, Sec-WebSocket-Protocol, User-Agent)."
    ) var forwardHeaders: [String] = []
    @Option(
        name: .customLong("upstream-header"),
        help:
            "'Name: value' added to every upstream handshake; repeatable (env SWITCHBOARD_PROXY_UPSTREAM_HEADERS, comma-separated: a value with a comma needs the flag)."
    ) var upstreamHeaders: [String] = []
    @Option(
        name: .customLong("resume-from"),
        help: "none, first-message or response-header: where the upstream's resume id comes from (env SWITCHBOARD_PROXY_RESUME_FROM).")
    var resumeFrom: String?
    @Option(
        name: .customLong("resume-header"),
        help: "Header that carries the resume id on reconnects (env SWITCHBOARD_PROXY_RESUME_HEADER; default X-Resume-Id).") var resumeHeader: String?
    @Option(
        name: .customLong("upstream-timeout"),
        help: "Seconds an upstream may stay away before its client is closed with 4502 (env SWITCHBOARD_PROXY_UPSTREAM_TIMEOUT; default 30).")
    var upstreamTimeout: Double?
    @Option(
        name: .customLong("connect-timeout"),
        help: "Seconds one upstream connection attempt may take (env SWITCHBOARD_PROXY_CONNECT_TIMEOUT; default 5).") var connectTimeout: Double?
    @Option(
        name: .customLong("backoff-initial"), help: "First reconnect delay ceiling in seconds (env SWITCHBOARD_PROXY_BACKOFF_INITIAL; default 0.1).")
    var backoffInitial: Double?
    @Option(name: .customLong("backoff-max"), help: "Largest reconnect delay in seconds (env SWITCHBOARD_PROXY_BACKOFF_MAX; default 5).")
    var backoffMax: Double?
    @Option(help: "Seconds a session keeps its upstream after its client dropped (env SWITCHBOARD_PROXY_GRACE; default 30).") var grace: Double?
    @Option(
        name: .customLong("max-queue-messages"),
        help: "Messages per queue (each direction of each session) (env SWITCHBOARD_PROXY_MAX_QUEUE_MESSAGES; default 1000).") var maxQueueMessages:
        Int?
    @Option(name: .customLong("max-queue-bytes"), help: "Bytes per queue (env SWITCHBOARD_PROXY_MAX_QUEUE_BYTES; default 1048576).")
    var maxQueueBytes: Int?
    @Option(
        name: .customLong("max-message-size"), help: "Largest message from either side (env SWITCHBOARD_PROXY_MAX_MESSAGE_SIZE; default 1048576).")
    var maxMessageSize: Int?
    @Option(name: .customLong("max-sessions"), help: "Sessions held at once in sender mode (env SWITCHBOARD_PROXY_MAX_SESSIONS; default 10000).")
    var maxSessions: Int?
    @Option(
        name: .customLong("max-connections"),
        help: """
            Client connections held at once; past it new ones are closed as they arrive \
            (env SWITCHBOARD_PROXY_MAX_CONNECTIONS; default: the open-file limit less a reserve).
            """
    )
    var maxConnections: Int?
    @Option(
        name: .customLong("handshake-timeout"),
        help: """
            Seconds a new client connection has to send its first request, plus the connect timeout for an upgrade \
            (env SWITCHBOARD_PROXY_HANDSHAKE_TIMEOUT; default 10).
            """
    )
    var handshakeTimeout: Double?
    @Option(
        name: .customLong("idle-timeout"),
        help: "Seconds a kept-alive HTTP connection may wait for its next request (env SWITCHBOARD_PROXY_IDLE_TIMEOUT; default 60)."
    )
    var idleTimeout: Double?
    @Option(name: .customLong("ping-interval"), help: "Seconds between keepalive pings (env SWITCHBOARD_PROXY_PING_INTERVAL; default 15).")
    var pingInterval: Double?
    @Option(
        name: .customLong("transient-close-codes"),
        help:
            "Comma-separated close codes that mean 'reconnect' rather than 'done' (env SWITCHBOARD_PROXY_TRANSIENT_CLOSE_CODES; default 1001,1011,1012,1013,1014)."
    ) var transientCloseCodes: String?
    @Flag(
        name: .customLong("announce-session"),
        help: "Send the session id as a first text message {\"proxySession\":\"…\"} (env SWITCHBOARD_PROXY_ANNOUNCE_SESSION=1).")
    var announceSession = false
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical (env SWITCHBOARD_PROXY_LOG_LEVEL).")
    var logLevel: String?

    /// Resolves flags and environment into a validated configuration.
    func settings(environment: Environment = Environment()) throws -> (ProxyConfiguration, Logger.Level) {
        let env = environment
        guard let raw = self.upstream ?? env["PROXY_UPSTREAM"] else {
            throw ConfigError("--upstream is required (e.g. --upstream ws://127.0.0.1:9000/socket)")
        }
        var c = ProxyConfiguration(upstream: try UpstreamURL(raw))
        if let mode = self.mode ?? env["PROXY_MODE"] {
            guard let parsed = ProxyConfiguration.Mode(rawValue: mode) else { throw ConfigError("--mode must be sender or receiver, got '\(mode)'") }
            c.mode = parsed
        }
        c.host = self.host ?? env["PROXY_HOST"] ?? c.host
        c.port = try self.port ?? env.int("PROXY_PORT") ?? c.port
        let forward = Self.list(self.forwardHeaders, env["PROXY_FORWARD_HEADERS"])
        if !forward.isEmpty { c.forwardHeaders = forward }
        c.upstreamHeaders = try Self.list(self.upstreamHeaders, env["PROXY_UPSTREAM_HEADERS"]).map { line in
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, !parts[0].trimmingCharacters(in: .whitespaces).isEmpty else {
                throw ConfigError("--upstream-header must look like 'Name: value', got '\(line)'")
            }
            return (parts[0].trimmingCharacters(in: .whitespaces), parts[1].trimmingCharacters(in: .whitespaces))
        }
        if let source = self.resumeFrom ?? env["PROXY_RESUME_FROM"] {
            guard let parsed = ProxyConfiguration.ResumeSource(rawValue: source) else {
                throw ConfigError("--resume-from must be none, first-message or response-header, got '\(source)'")
            }
            c.resumeSource = parsed
        }
        c.resumeHeader = self.resumeHeader ?? env["PROXY_RESUME_HEADER"] ?? c.resumeHeader
        c.upstreamTimeout = try self.upstreamTimeout ?? env.double("PROXY_UPSTREAM_TIMEOUT") ?? c.upstreamTimeout
        c.connectTimeout = try self.connectTimeout ?? env.double("PROXY_CONNECT_TIMEOUT") ?? c.connectTimeout
        c.backoffInitial = try self.backoffInitial ?? env.double("PROXY_BACKOFF_INITIAL") ?? c.backoffInitial
        c.backoffMax = try self.backoffMax ?? env.double("PROXY_BACKOFF_MAX") ?? c.backoffMax
        c.grace = try self.grace ?? env.double("PROXY_GRACE") ?? c.grace
        c.maxQueueMessages = try self.maxQueueMessages ?? env.int("PROXY_MAX_QUEUE_MESSAGES") ?? c.maxQueueMessages
        c.maxQueueBytes = try self.maxQueueBytes ?? env.int("PROXY_MAX_QUEUE_BYTES") ?? c.maxQueueBytes
        c.maxMessageSize = try self.maxMessageSize ?? env.int("PROXY_MAX_MESSAGE_SIZE") ?? c.maxMessageSize
        c.maxSessions = try self.maxSessions ?? env.int("PROXY_MAX_SESSIONS") ?? c.maxSessions
        c.maxConnections = try self.maxConnections ?? env.int("PROXY_MAX_CONNECTIONS")
        c.handshakeTimeout = try self.handshakeTimeout ?? env.double("PROXY_HANDSHAKE_TIMEOUT") ?? c.handshakeTimeout
        c.idleTimeout = try self.idleTimeout ?? env.double("PROXY_IDLE_TIMEOUT") ?? c.idleTimeout
        c.pingInterval = try self.pingInterval ?? env.double("PROXY_PING_INTERVAL") ?? c.pingInterval
        if let codes = self.transientCloseCodes ?? env["PROXY_TRANSIENT_CLOSE_CODES"] {
            c.transientCloseCodes = Set(
                try codes.split(separator: ",").map { code in
                    guard let value = UInt16(code.trimmingCharacters(in: .whitespaces)) else {
                        throw ConfigError("--transient-close-codes must be comma-separated numbers, got '\(codes)'")
                    }
                    return value
                })
        }
        let announce = try env.bool("PROXY_ANNOUNCE_SESSION") ?? false
        c.announceSession = self.announceSession || announce
        try c.validate()
        let level = self.logLevel ?? env["PROXY_LOG_LEVEL"] ?? "info"
        guard let parsed = Logger.Level(rawValue: level) else {
            throw ConfigError("--log-level must be one of trace, debug, info, notice, warning, error, critical; got '\(level)'")
        }
        return (c, parsed)
    }

    private static func list(_ flags: [String], _ env: String?) -> [String] {
        if !flags.isEmpty { return flags }
        return env?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } ?? []
    }

    func run() async throws {
        let (configuration, level): (ProxyConfiguration, Logger.Level)
        do {
            (configuration, level) = try self.settings()
        } catch let error as ProxyConfigurationError {
            throw ConfigError(error.description)
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "switchboard.proxy")
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let proxy = try ProxyServer(configuration: configuration, registry: registry, logger: logger)
        let services = ServiceGroup(configuration: .init(services: [proxy], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await services.run()
    }
}
