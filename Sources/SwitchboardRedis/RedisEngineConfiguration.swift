import RESP

/// Settings of `RedisEngine`.
public struct RedisEngineConfiguration: Sendable {
    /// Connection settings (host, port, credentials, database, timeouts). Built from a
    /// `redis://` URL by `init(url:)`, or set directly (e.g. to add TLS).
    public var redis: RESPConfiguration
    /// Messages kept per stream. Trimming uses `XADD MAXLEN ~` when `approximateTrimming`
    /// is set (Redis may keep somewhat more), exact `MAXLEN` otherwise.
    public var historySize: Int
    /// Seconds a message is kept (each log entry stores its publish time, see `RedisScripts`).
    public var historyAge: Double
    /// Seconds a session survives after its last connection closed.
    public var sessionTTL: Double
    /// Seconds an idempotency key is remembered.
    public var idempotencyTTL: Double
    /// Seconds a presence entry lives without a heartbeat; the engine refreshes the members
    /// joined through it every `presenceTTL / 3` seconds, so a dead node's members vanish.
    public var presenceTTL: Double
    /// Seconds all keys of a stream (meta, log, acks) live after the last publish/read.
    /// Past it the stream is forgotten and comes back with a new epoch. 0 = never.
    public var streamIdleTTL: Double
    /// Use SPUBLISH/SSUBSCRIBE (Redis 7 sharded pub/sub) for live messages.
    public var useShardedPubSub: Bool
    /// `MAXLEN ~` (cheap, keeps up to one radix node more) instead of exact `MAXLEN`.
    public var approximateTrimming: Bool
    /// Prefix of every key and channel.
    public var keyPrefix: String
    /// `start` waits this long for the first connection, then throws `.unavailable`.
    public var connectTimeout: Duration
    /// When false, `start` returns without waiting for Redis (the client keeps trying).
    public var requireConnectionAtStart: Bool
    /// Redis Cluster: the seed nodes (`redis.host`/`port` are then ignored). Keys are hash-tagged
    /// per stream and live messages use sharded pub/sub.
    public var clusterSeeds: [RESPClusterClient.Node]?
    /// Seconds between node heartbeats; a node silent for three of them is dead, and a
    /// survivor releases its sessions.
    public var heartbeatInterval: Double
    /// Seconds between checks that every live subscription still receives what is published
    /// (a subscription that went silently dead is found and caught up).
    public var liveCheckInterval: Double
    /// Seconds after its last message (received, or published by this node) that a stream stays
    /// in the live check; idle streams are not read (see `RedisEngine.checkLiveSubscriptions`).
    public var liveCheckWindow: Double
    /// Backoff between attempts to reach Redis after it went away. The ceiling bounds how long a
    /// node stays not-ready once Redis accepts connections again: with the default (500 ms, full
    /// jitter) it reconnects within half a second, then catches its live streams up.
    public var reconnect: RESPReconnectPolicy

    public init(
        redis: RESPConfiguration = RESPConfiguration(),
        historySize: Int = 1000, historyAge: Double = 300, sessionTTL: Double = 120,
        idempotencyTTL: Double = 300, presenceTTL: Double = 30, streamIdleTTL: Double = 86400,
        useShardedPubSub: Bool = false, approximateTrimming: Bool = true, keyPrefix: String = "sb",
        connectTimeout: Duration = .seconds(10), requireConnectionAtStart: Bool = true
    ) {
        self.redis = redis
        self.historySize = historySize
        self.historyAge = historyAge
        self.sessionTTL = sessionTTL
        self.idempotencyTTL = idempotencyTTL
        self.presenceTTL = presenceTTL
        self.streamIdleTTL = streamIdleTTL
        self.useShardedPubSub = useShardedPubSub
        self.approximateTrimming = approximateTrimming
        self.keyPrefix = keyPrefix
        self.connectTimeout = connectTimeout
        self.requireConnectionAtStart = requireConnectionAtStart
        self.clusterSeeds = nil
        self.heartbeatInterval = 2
        self.liveCheckInterval = 5
        self.liveCheckWindow = 60
        self.reconnect = RESPReconnectPolicy(initialDelay: .milliseconds(50), maxDelay: .milliseconds(500))
    }

    /// Redis Cluster from `redis://host:port,host:port,…` (any reachable subset of the nodes).
    public init(
        clusterURL: String,
        historySize: Int = 1000, historyAge: Double = 300, sessionTTL: Double = 120,
        idempotencyTTL: Double = 300, presenceTTL: Double = 30, streamIdleTTL: Double = 86400,
        approximateTrimming: Bool = true, keyPrefix: String = "sb"
    ) throws {
        let hosts = try Self.parseSeeds(url: clusterURL)
        self.init(
            redis: hosts[0], historySize: historySize, historyAge: historyAge, sessionTTL: sessionTTL,
            idempotencyTTL: idempotencyTTL, presenceTTL: presenceTTL, streamIdleTTL: streamIdleTTL,
            useShardedPubSub: true, approximateTrimming: approximateTrimming, keyPrefix: keyPrefix)
        self.clusterSeeds = hosts.map { RESPClusterClient.Node(host: $0.host, port: $0.port) }
    }

    /// Every `host:port` of a comma-separated URL, with the credentials of the first.
    public static func parseSeeds(url: String) throws -> [RESPConfiguration] {
        guard let schemeEnd = url.range(of: "://") else { throw URLError(reason: "missing scheme in '\(url)'") }
        let scheme = url[..<schemeEnd.upperBound]
        var rest = url[schemeEnd.upperBound...]
        var userinfo = ""
        if let at = rest.lastIndex(of: "@") {
            userinfo = String(rest[...at])
            rest = rest[rest.index(after: at)...]
        }
        let hosts = rest.split(separator: ",", omittingEmptySubsequences: false)
        guard !hosts.isEmpty, hosts.allSatisfy({ !$0.isEmpty }) else { throw URLError(reason: "empty host in '\(url)'") }
        return try hosts.map { try Self.parse(url: scheme + userinfo + $0) }
    }

    /// `redis://[user:pass@]host[:port][/db]` (also `redis://:pass@host`, `[::1]` hosts).
    public init(
        url: String,
        historySize: Int = 1000, historyAge: Double = 300, sessionTTL: Double = 120,
        idempotencyTTL: Double = 300, presenceTTL: Double = 30, streamIdleTTL: Double = 86400,
        useShardedPubSub: Bool = false, approximateTrimming: Bool = true, keyPrefix: String = "sb"
    ) throws {
        self.init(
            redis: try Self.parse(url: url), historySize: historySize, historyAge: historyAge,
            sessionTTL: sessionTTL, idempotencyTTL: idempotencyTTL, presenceTTL: presenceTTL,
            streamIdleTTL: streamIdleTTL, useShardedPubSub: useShardedPubSub,
            approximateTrimming: approximateTrimming, keyPrefix: keyPrefix)
    }

    public struct URLError: Error, Sendable, Equatable, CustomStringConvertible {
        public var reason: String
        public var description: String { "invalid redis URL: \(reason)" }
    }

    /// Parses `redis://[user:pass@]host[:port][/db]` into a `RESPConfiguration`.
    /// `rediss://` (TLS) is refused here: set `redis.tls` on the configuration instead.
    public static func parse(url: String) throws -> RESPConfiguration {
        var rest = Substring(url)
        guard let schemeEnd = rest.range(of: "://") else { throw URLError(reason: "missing scheme in '\(url)'") }
        let scheme = rest[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "redis" else {
            throw URLError(reason: scheme == "rediss" ? "rediss:// needs a TLS configuration: set redis.tls" : "unsupported scheme '\(scheme)'")
        }
        rest = rest[schemeEnd.upperBound...]
        var config = RESPConfiguration()
        // Strip query/fragment: not used.
        if let q = rest.firstIndex(where: { $0 == "?" || $0 == "#" }) { rest = rest[..<q] }
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                let user = percentDecode(userinfo[..<colon])
                config.username = user.isEmpty ? nil : user
                config.password = percentDecode(userinfo[userinfo.index(after: colon)...])
            } else if !userinfo.isEmpty {
                // `redis://secret@host`: a lone value is the password (as redis-cli does).
                config.password = percentDecode(userinfo)
            }
        }
        var host = rest
        var port: Substring?
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { throw URLError(reason: "unterminated IPv6 host") }
            let after = host[host.index(after: close)...]
            if after.hasPrefix(":") { port = after.dropFirst() } else if !after.isEmpty { throw URLError(reason: "bad host") }
            host = host[host.index(after: host.startIndex)..<close]
        } else if let colon = host.lastIndex(of: ":") {
            port = host[host.index(after: colon)...]
            host = host[..<colon]
        }
        if !host.isEmpty { config.host = String(host) }
        if let port {
            guard let p = Int(port), (1...65535).contains(p) else { throw URLError(reason: "bad port '\(port)'") }
            config.port = p
        }
        if !path.isEmpty {
            guard let db = Int(path), db >= 0 else { throw URLError(reason: "bad database '\(path)'") }
            config.database = db
        }
        return config
    }

    private static func percentDecode(_ s: Substring) -> String {
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%"), bytes.count >= 2,
                let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16)
            {
                out.append(v)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
