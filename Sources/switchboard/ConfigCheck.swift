import ArgumentParser
import Foundation

/// `switchboard config check FILE`: validates a configuration file (and the `SWITCHBOARD_*`
/// environment, which `serve` would apply over it) without starting a node, and prints the
/// settings a node would run with. It runs the same validation as `serve` (the secret's length,
/// the key set, the Redis URL included). Exit 0 when valid; otherwise the error names the value.
struct Config: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with configuration files.", subcommands: [Check.self]
    )

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a JSON configuration file and print the resulting settings.")

        @Argument(help: "The JSON file (keys are serve's long option names).") var file: String

        func run() async throws {
            let serve = try Serve.parse(["--config", self.file])
            // Exactly what `serve` runs before it starts: settings, keys, engine URL.
            let s = try await serve.resolve().settings
            let g = s.gateway
            var lines = [
                "\(self.file): OK",
                "listen \(g.host):\(g.port), WebSocket at \(g.webSocketPath)\(g.echoPath.map { ", echo at \($0)" } ?? "")",
                "auth: \(s.jwtJWKS.map { "JWKS \($0)" } ?? (s.jwtSecret != nil ? "HS256 secret" : "no token verification"))\(g.allowAnonymous ? ", anonymous allowed" : "")",
                "engine: \(s.redis.map { "Redis \($0)\(s.redisCluster ? " (cluster)" : "")" } ?? "in-memory")",
                "history: \(s.memory.historySize) messages, \(s.memory.historyAge) s; sessions \(s.memory.sessionTTL) s",
                "limits: message \(g.maxMessageSize) B, queue \(g.maxQueueBytes) B, \(g.requestRate)/s burst \(g.requestBurst) per connection, \(g.maxSubscriptions) subscriptions, \(g.maxInFlightRequests) in flight",
                "user limits: \(s.userRequestRate.map { "\($0)/s" } ?? "no request rate"), \(g.maxConnectionsPerUser.map { "\($0) connections" } ?? "no connection cap")",
                "node: \(g.connectionRate.map { "\($0) new connections/s" } ?? "no connection rate"), drain over \(s.drainWindow) s, ping every \(g.pingInterval) s",
                "connections: \(g.maxConnections.map { "at most \($0)" } ?? "at most the open-file limit less a reserve"), \(g.maxHandshakes) in their handshake; timeouts: handshake \(g.handshakeTimeout) s, request \(g.requestTimeout) s, idle \(g.idleTimeout) s",
                "origins: \(g.allowedOrigins.isEmpty ? "any" : g.allowedOrigins.joined(separator: ", "))",
                "server API keys: \(s.apiKeys.count)",
            ]
            for rule in g.streamRules?.rules ?? [] {
                let history =
                    rule.storage.historySize == 0
                    ? "no history"
                    : "history \(rule.storage.historySize.map(String.init) ?? "default") messages, \(rule.storage.historyAge.map { "\($0) s" } ?? "default age")"
                lines.append(
                    "stream \(rule.pattern): subscribe \(rule.subscribe.rawValue), publish \(rule.publish.rawValue), presence \(rule.presence ? "on" : "off"), \(history), retention \(rule.storage.retention.rawValue)"
                )
            }
            if let b = s.backend {
                let targets = b.targets.map { "\($0.prefix)=\($0.url.absoluteString)" }.joined(separator: ", ")
                lines.append(
                    "backend: \(targets); \(b.secret == nil ? "unsigned (no backend-secret)" : "signed"), timeout \(b.timeout) s, \(b.maxInFlight) in flight"
                )
            }
            if s.jwtSecret == nil && s.jwtJWKS == nil && !g.allowAnonymous && s.backend?.connectHook == nil {
                lines.append("warning: no jwt-secret, jwt-jwks, backend-connect-hook or allow-anonymous: every connection would be refused")
            }
            print(lines.joined(separator: "\n"))
        }
    }
}
