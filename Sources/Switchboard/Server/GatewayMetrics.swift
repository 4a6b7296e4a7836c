import CoreMetrics
import NIOCore

/// A node's metrics through swift-metrics: whatever backend the process bootstrapped
/// (`switchboard serve` uses Prometheus, served at `/metrics`), no-ops when none. Every
/// handle is made once here, so the hot paths only add to a counter; deliveries are
/// summed per loop batch, not per socket. docs/operations.md lists each metric.
final class GatewayMetrics: Sendable {
    let connectionsOpen: Meter
    let connectionsOpened: Counter
    private let closedByCode: [UInt16: Counter]
    private let closedOther: Counter
    private let messagesIn: [MessageKind: Counter]
    let repliesOut: Counter
    /// Pushes written to sockets: live ones and those replayed from history.
    let deliveries: Counter
    let historyDeliveries: Counter
    let droppedSlowConsumer: Counter
    let droppedClosing: Counter
    let slowConsumerCloses: Counter
    let publishDuration: Timer
    /// A live message handed to the hub → the last local socket write for it issued.
    let fanoutDuration: Timer
    let publishFailures: Counter
    let resumesRecovered: Counter
    let resumesNotRecovered: Counter
    let upgradesRefused: [Int: Counter]
    /// Connections closed at accept because `maxHandshakes` were in their handshake.
    let handshakeRefused: Counter
    /// Requests the HTTP decoder could not parse (answered 400/431 and closed).
    let badRequests: Counter
    private let timeouts: [HTTPConnectionGuard.Phase: Counter]
    /// Connections closed as they arrived because the node held `maxConnections`.
    let overCapacity: Counter
    let engineAvailable: Gauge
    let engineRoundTrip: Gauge

    /// What a client sent, for `switchboard_messages_in_total{kind}`.
    enum MessageKind: String, CaseIterable, Sendable {
        case request, sub, unsub, ack, auth, invalid, echo
    }

    /// Codes recorded by name; any other peer code counts as "other" (bounded labels).
    static let fanoutDurationLabel = "switchboard_fanout_duration_seconds"
    /// Fan-out is sub-millisecond to tens of milliseconds: finer buckets than Prometheus's defaults
    /// (which start at 5 ms); see `Gateway.durationHistogramBuckets`.
    static let fanoutDurationBuckets: [Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
        .milliseconds(3), .milliseconds(5), .microseconds(7500), .milliseconds(10), .milliseconds(15), .milliseconds(20),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1),
    ]

    static let knownCloseCodes: [UInt16] = [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 4001, 4401, 4403, 4409, 4429, 4503]

    init(node: String) {
        let labels = [("node", node)]
        self.connectionsOpen = Meter(label: "switchboard_connections_open", dimensions: labels)
        self.connectionsOpened = Counter(label: "switchboard_connections_opened_total", dimensions: labels)
        var closed: [UInt16: Counter] = [:]
        for code in Self.knownCloseCodes {
            closed[code] = Counter(label: "switchboard_connections_closed_total", dimensions: labels + [("code", String(code))])
        }
        self.closedByCode = closed
        self.closedOther = Counter(label: "switchboard_connections_closed_total", dimensions: labels + [("code", "other")])
        var messages: [MessageKind: Counter] = [:]
        for kind in MessageKind.allCases {
            messages[kind] = Counter(label: "switchboard_messages_in_total", dimensions: labels + [("kind", kind.rawValue)])
        }
        self.messagesIn = messages
        self.repliesOut = Counter(label: "switchboard_messages_out_total", dimensions: labels + [("kind", "reply")])
        self.deliveries = Counter(label: "switchboard_deliveries_total", dimensions: labels + [("source", "live")])
        self.historyDeliveries = Counter(label: "switchboard_deliveries_total", dimensions: labels + [("source", "history")])
        self.droppedSlowConsumer = Counter(label: "switchboard_deliveries_dropped_total", dimensions: labels + [("reason", "slow_consumer")])
        self.droppedClosing = Counter(label: "switchboard_deliveries_dropped_total", dimensions: labels + [("reason", "closing")])
        self.slowConsumerCloses = Counter(label: "switchboard_slow_consumer_closes_total", dimensions: labels)
        self.publishDuration = Timer(label: "switchboard_publish_duration_seconds", dimensions: labels, preferredDisplayUnit: .seconds)
        self.fanoutDuration = Timer(label: Self.fanoutDurationLabel, dimensions: labels, preferredDisplayUnit: .seconds)
        self.publishFailures = Counter(label: "switchboard_publish_failures_total", dimensions: labels)
        self.resumesRecovered = Counter(label: "switchboard_resumes_total", dimensions: labels + [("outcome", "recovered")])
        self.resumesNotRecovered = Counter(label: "switchboard_resumes_total", dimensions: labels + [("outcome", "not_recovered")])
        var refused: [Int: Counter] = [:]
        for status in [400, 401, 403, 404, 429, 503] {
            refused[status] = Counter(label: "switchboard_upgrades_refused_total", dimensions: labels + [("status", String(status))])
        }
        self.upgradesRefused = refused
        self.handshakeRefused = Counter(label: "switchboard_handshakes_refused_total", dimensions: labels)
        self.badRequests = Counter(label: "switchboard_http_bad_requests_total", dimensions: labels)
        var timeouts: [HTTPConnectionGuard.Phase: Counter] = [:]
        for phase in HTTPConnectionGuard.Phase.allCases {
            timeouts[phase] = Counter(label: "switchboard_connections_timed_out_total", dimensions: labels + [("phase", phase.rawValue)])
        }
        self.timeouts = timeouts
        self.overCapacity = Counter(label: "switchboard_connections_over_capacity_total", dimensions: labels)
        self.engineAvailable = Gauge(label: "switchboard_engine_available", dimensions: labels)
        self.engineRoundTrip = Gauge(label: "switchboard_engine_round_trip_seconds", dimensions: labels)
    }

    func connectionClosed(code: UInt16) {
        (self.closedByCode[code] ?? self.closedOther).increment()
    }

    func messageIn(_ kind: MessageKind) {
        self.messagesIn[kind]!.increment()
    }

    func timedOut(_ phase: HTTPConnectionGuard.Phase) {
        self.timeouts[phase]?.increment()
    }

    func upgradeRefused(status: Int) {
        self.upgradesRefused[status]?.increment()
    }

    /// Times one publish into the engine.
    func timePublish<T>(_ work: () async throws -> T) async throws -> T {
        let start = NIODeadline.now()
        do {
            let result = try await work()
            self.publishDuration.recordNanoseconds((NIODeadline.now() - start).nanoseconds)
            return result
        } catch {
            self.publishFailures.increment()
            throw error
        }
    }
}
