import NIOCore

/// Everything a node needs to serve, with defaults fit for a first try.
public struct GatewayConfiguration: Sendable {
    public var host: String = "127.0.0.1"
    public var port: Int = 8080
    /// Requests to this path with `Upgrade: websocket` become WebSocket connections.
    public var webSocketPath: String = "/ws"
    /// Accept connections without a token (they get no user and no `/users/…` stream).
    public var allowAnonymous: Bool = false
    /// Largest WebSocket frame and largest reassembled message, in bytes.
    public var maxMessageSize: Int = 64 * 1024
    /// Bytes a connection may have queued for writing before it is closed as a slow consumer.
    public var maxQueueBytes: Int = 1 << 20
    /// Seconds between server pings; a peer that did not answer the previous ping is closed.
    public var pingInterval: Double = 30
    /// Requests per second per connection (token bucket rate) and burst size.
    public var requestRate: Double = 100
    public var requestBurst: Double = 200
    /// 429 replies in a row after which the connection is closed with 4429.
    public var rateLimitStrikes: Int = 50
    /// Subscriptions one connection may hold, besides its built-in streams (session, user, broadcast).
    public var maxSubscriptions: Int = 100
    /// Requests one connection may have in flight at once.
    public var maxInFlightRequests: Int = 64
    /// Messages read from history per batch when resuming.
    public var replayBatchSize: Int = 256
    /// Seconds to wait for the peer's close frame before dropping the socket.
    public var closeTimeout: Double = 3
    /// Seconds a new connection has to send its first request head and, for a WebSocket, to
    /// finish the upgrade (silent sockets and slowloris are closed after it).
    public var handshakeTimeout: Double = 10
    /// Seconds a request's body has to arrive after its head.
    public var requestTimeout: Double = 30
    /// Seconds a kept-alive HTTP connection may wait for its next request.
    public var idleTimeout: Double = 60
    /// Connections that may be in their handshake at once; more are closed as they arrive.
    public var maxHandshakes: Int = 2048
    /// Connections (HTTP and WebSocket) the node holds at most; past it new connections are
    /// closed as they arrive. Nil: the open-file limit less a reserve (see `ConnectionLimit`).
    public var maxConnections: Int?
    /// Node id, unique in a cluster; random when nil.
    public var nodeID: String?
    /// Browser origins (`Origin` header, e.g. `https://chat.example.com`) allowed to upgrade;
    /// empty allows any. Upgrades without an `Origin` (non-browser clients) are not affected.
    public var allowedOrigins: [String] = []
    /// New WebSocket connections per second this node accepts (token bucket) and the burst;
    /// nil for no limit. Over it, upgrades get HTTP 429 and clients retry with backoff.
    public var connectionRate: Double?
    public var connectionBurst: Double?
    /// WebSocket connections one user may hold on this node; nil for no limit.
    public var maxConnectionsPerUser: Int?
    /// Path of a WebSocket echo endpoint (anonymous, no protocol: every message comes back
    /// as sent) for conformance tests such as Autobahn; nil, the default, disables it.
    public var echoPath: String?
    /// Stream rules: who may subscribe and publish, what is kept, whether presence is recorded.
    /// Nil: the router alone decides (`SUB` routes), every stream on the engine's defaults.
    /// Enforced by `StreamRulesMiddleware`, which `switchboard serve` installs.
    public var streamRules: StreamRules?

    public init() {}
}
