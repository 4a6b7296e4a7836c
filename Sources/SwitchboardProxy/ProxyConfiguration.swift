import Foundation

/// Everything a proxy runs with. `switchboard proxy` fills it from flags and the environment;
/// docs/proxy.md explains each setting.
public struct ProxyConfiguration: Sendable {
    /// How clients map to upstream connections.
    public enum Mode: String, Sendable, CaseIterable {
        /// One upstream connection per client session (the default).
        case sender
        /// One upstream connection for the whole proxy; one client at a time reads from it.
        case receiver
    }

    /// Where the proxy finds the resume id it replays to the upstream on a reconnect.
    public enum ResumeSource: String, Sendable, CaseIterable {
        /// No resume id: a reconnect carries only the forwarded client headers.
        case none
        /// The first message of every upstream connection is its resume id; the proxy keeps it
        /// and does not forward it to the client.
        case firstMessage = "first-message"
        /// The upstream's handshake response carries the resume id in `resumeHeader`.
        case responseHeader = "response-header"
    }

    public var host = "127.0.0.1"
    public var port = 8090
    public var mode: Mode = .sender
    public var upstream: UpstreamURL
    /// Client request headers copied onto every upstream handshake (case-insensitive names).
    public var forwardHeaders: [String] = ["Authorization", "Cookie", "Sec-WebSocket-Protocol", "User-Agent"]
    /// Headers added to every upstream handshake, e.g. a key the backend expects of the proxy.
    public var upstreamHeaders: [(name: String, value: String)] = []
    public var resumeSource: ResumeSource = .none
    /// The request header that carries the resume id to the upstream on a reconnect (and the
    /// response header it is read from with `.responseHeader`).
    public var resumeHeader = "X-Resume-Id"
    /// Seconds an upstream may stay unreachable before its client is closed with 4502.
    public var upstreamTimeout: Double = 30
    /// Seconds one upstream connection attempt (TCP plus handshake) may take.
    public var connectTimeout: Double = 5
    /// First and largest delay between upstream reconnect attempts (full jitter in between).
    public var backoffInitial: Double = 0.1
    public var backoffMax: Double = 5
    /// Seconds a sender session keeps its upstream after its client dropped.
    public var grace: Double = 30
    /// Bounds of each queue (one per direction per session), in whole messages and in bytes.
    public var maxQueueMessages = 1000
    public var maxQueueBytes = 1 << 20
    /// Largest message (all fragments together) accepted from either side.
    public var maxMessageSize = 1 << 20
    /// Seconds between keepalive pings on an idle connection; one unanswered for twice
    /// this long marks the connection dead.
    public var pingInterval: Double = 15
    /// Sender sessions the proxy holds at once; upgrades past it get 503.
    public var maxSessions = 10_000
    /// TCP connections from clients held at once (WebSockets and HTTP); past it new ones are
    /// closed as they arrive, so the proxy never runs out of descriptors (see `ConnectionLimit`).
    /// Nil: the open-file limit less a reserve.
    public var maxConnections: Int?
    /// Seconds a new client connection has to send its first request (an upgrade, or a plain
    /// request for health or metrics); an upgrade also gets `connectTimeout` to reach the
    /// upstream. Silent sockets are closed after it.
    public var handshakeTimeout: Double = 10
    /// Seconds a kept-alive HTTP connection (health checks, scrapes) may wait for its next request.
    public var idleTimeout: Double = 60
    /// Close codes that mean "gone for now", not "done": an upstream closing with one is
    /// reconnected to, a client closing with one keeps its session for the grace period.
    /// A connection lost without a close frame always counts as transient.
    public var transientCloseCodes: Set<UInt16> = [1001, 1011, 1012, 1013, 1014]
    /// Send the session id to the client as a first text message `{"proxySession":"…"}`
    /// (browsers cannot read the upgrade response's headers).
    public var announceSession = false
    /// Seconds a node waits for the peer's close frame after sending its own.
    public var closeTimeout: Double = 5

    public init(upstream: UpstreamURL) {
        self.upstream = upstream
    }

    /// The longest duration any setting may have (a day), so every one converts to a timer.
    static let maxSeconds: Double = 86_400

    /// Checks the settings against each other; the error names the option.
    public func validate() throws(ProxyConfigurationError) {
        guard (0...65535).contains(self.port) else { throw .init("--port must be 0-65535, got \(self.port)") }
        guard self.maxMessageSize >= 125 else { throw .init("--max-message-size must be at least 125, got \(self.maxMessageSize)") }
        guard self.maxQueueBytes >= self.maxMessageSize else {
            throw .init("--max-queue-bytes (\(self.maxQueueBytes)) must be at least --max-message-size (\(self.maxMessageSize))")
        }
        guard self.maxQueueMessages >= 1 else { throw .init("--max-queue-messages must be at least 1, got \(self.maxQueueMessages)") }
        guard self.maxSessions >= 1 else { throw .init("--max-sessions must be at least 1, got \(self.maxSessions)") }
        if let max = self.maxConnections, !(1...100_000_000).contains(max) {
            throw .init("--max-connections must be 1-100000000, got \(max)")
        }
        for (name, value) in [
            ("--upstream-timeout", self.upstreamTimeout), ("--connect-timeout", self.connectTimeout),
            ("--backoff-initial", self.backoffInitial), ("--backoff-max", self.backoffMax), ("--ping-interval", self.pingInterval),
            ("--handshake-timeout", self.handshakeTimeout), ("--idle-timeout", self.idleTimeout),
        ] where !(value > 0 && value <= Self.maxSeconds) {
            throw .init("\(name) must be a positive number of seconds up to \(Int(Self.maxSeconds)), got \(value)")
        }
        guard self.grace >= 0, self.grace <= Self.maxSeconds else {
            throw .init("--grace must be 0 to \(Int(Self.maxSeconds)) seconds, got \(self.grace)")
        }
        guard self.backoffMax >= self.backoffInitial else { throw .init("--backoff-max must be at least --backoff-initial") }
        guard !self.resumeHeader.isEmpty, self.resumeHeader.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) else {
            throw .init("--resume-header must be an HTTP header name, got '\(self.resumeHeader)'")
        }
        for code in self.transientCloseCodes where !(1000...4999).contains(code) {
            throw .init("--transient-close-codes must be WebSocket close codes (1000-4999), got \(code)")
        }
    }
}

/// A setting that cannot work; the message names the option and the value.
public struct ProxyConfigurationError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The upstream WebSocket endpoint, `ws://host[:port]/path[?query]` or `wss://…`.
public struct UpstreamURL: Sendable, CustomStringConvertible {
    public let tls: Bool
    public let host: String
    public let port: Int
    /// Path and query, as sent in the request line.
    public let target: String

    public init(_ string: String) throws(ProxyConfigurationError) {
        guard let components = URLComponents(string: string), let scheme = components.scheme?.lowercased(),
            scheme == "ws" || scheme == "wss", let host = components.host, !host.isEmpty
        else {
            throw .init("--upstream must be a ws:// or wss:// URL with a host, got '\(string)'")
        }
        self.tls = scheme == "wss"
        self.host = host
        self.port = components.port ?? (self.tls ? 443 : 80)
        guard (1...65535).contains(self.port) else { throw .init("--upstream has a bad port in '\(string)'") }
        let path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
        self.target = path + (components.percentEncodedQuery.map { "?" + $0 } ?? "")
    }

    /// The Host header: the port is left out when it is the scheme's default.
    var hostHeader: String {
        let name = self.host.contains(":") ? "[\(self.host)]" : self.host
        return self.port == (self.tls ? 443 : 80) ? name : "\(name):\(self.port)"
    }

    public var description: String { "\(self.tls ? "wss" : "ws")://\(self.hostHeader)\(self.target)" }
}
