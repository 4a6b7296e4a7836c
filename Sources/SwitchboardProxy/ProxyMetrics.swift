import CoreMetrics

/// The proxy's metrics through swift-metrics (`switchboard proxy` serves them at `/metrics`
/// in the Prometheus format). docs/proxy.md lists each.
final class ProxyMetrics: Sendable {
    /// Counters of one direction (`to_upstream` or `to_client`).
    struct Direction: Sendable {
        /// Messages accepted and not yet confirmed by their peer.
        let queued: Meter
        /// Messages the peer confirmed.
        let delivered: Counter
        /// Messages refused because the queue was full while the peer was away.
        let overflows: Counter
        /// Accepted messages dropped because their peer was gone for good (each also logged).
        let undelivered: Counter

        init(_ name: String) {
            let labels = [("direction", name)]
            self.queued = Meter(label: "switchboard_proxy_messages_queued", dimensions: labels)
            self.delivered = Counter(label: "switchboard_proxy_messages_delivered_total", dimensions: labels)
            self.overflows = Counter(label: "switchboard_proxy_queue_overflows_total", dimensions: labels)
            self.undelivered = Counter(label: "switchboard_proxy_messages_undelivered_total", dimensions: labels)
        }
    }

    let toUpstream = Direction("to_upstream")
    let toClient = Direction("to_client")
    let clientsOpen = Meter(label: "switchboard_proxy_clients_open")
    let sessionsOpen = Meter(label: "switchboard_proxy_sessions_open")
    let upstreamsOpen = Meter(label: "switchboard_proxy_upstreams_open")
    let upstreamConnected = Counter(label: "switchboard_proxy_upstream_connects_total", dimensions: [("result", "connected")])
    let upstreamRefused = Counter(label: "switchboard_proxy_upstream_connects_total", dimensions: [("result", "refused")])
    let upstreamFailed = Counter(label: "switchboard_proxy_upstream_connects_total", dimensions: [("result", "failed")])
    let sessionsResumed = Counter(label: "switchboard_proxy_client_connects_total", dimensions: [("session", "resumed")])
    let sessionsNew = Counter(label: "switchboard_proxy_client_connects_total", dimensions: [("session", "new")])
    let upgradesRefused = Counter(label: "switchboard_proxy_upgrades_refused_total")
    /// Client connections closed as they arrived because the proxy held `maxConnections`.
    let overCapacity = Counter(label: "switchboard_proxy_connections_over_capacity_total")
    /// Client connections closed because they sent no request within `--handshake-timeout`.
    let handshakeTimeouts = Counter(label: "switchboard_proxy_handshake_timeouts_total")
    private let closes: [UInt16: Counter]

    /// Codes the proxy sends on its own behalf, counted by `switchboard_proxy_closes_total{code}`.
    static let ownCloseCodes: [UInt16] = [
        ProxyCloseCode.goingAway, ProxyCloseCode.protocolError, ProxyCloseCode.messageTooBig, ProxyCloseCode.sessionTakenOver,
        ProxyCloseCode.upstreamUnavailable, ProxyCloseCode.queueFull,
    ]

    init() {
        var closes: [UInt16: Counter] = [:]
        for code in Self.ownCloseCodes {
            closes[code] = Counter(label: "switchboard_proxy_closes_total", dimensions: [("code", String(code))])
        }
        self.closes = closes
    }

    /// The proxy closed a connection with one of its own codes.
    func closed(code: UInt16) {
        self.closes[code]?.increment()
    }
}
