import Logging
import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire

/// What every connection of a node shares: configuration, engine, hub, router, keys.
final class GatewayCore: Sendable {
    let configuration: GatewayConfiguration
    /// The engine whole, for its lifecycle (start, health, shutdown); callers otherwise ask for
    /// the role they use (below).
    let engine: any SwitchboardEngine
    let streamStore: any StreamStore
    let sessionStore: any SessionStore
    let presenceStore: any PresenceStore
    let nodeRegistry: any NodeRegistry
    let rateBuckets: any RateBuckets
    let hub: Hub
    let responder: ErasedResponder
    let verifier: TokenVerifier?
    /// The application's backend (stream rules' `backend` settings, requests no route answers).
    let backend: (any SwitchboardBackend)?
    let logger: Logger
    let nodeID: String
    let allocator = ByteBufferAllocator()
    private let nextID = NIOLockedValueBox<UInt64>(0)
    private let draining = NIOLockedValueBox(false)
    /// Engine work a closed connection left behind (unsubscribes, presence leaves), so a
    /// draining node finishes it before it leaves the cluster.
    private let bookkeeping = NIOLockedValueBox(Bookkeeping())
    /// New connections admitted per second (nil: no limit).
    private let connectionBucket: NIOLockedValueBox<TokenBucket>?
    /// Open WebSocket connections per user on this node.
    private let userConnections = NIOLockedValueBox<[String: Int]>([:])
    /// Connections between their accept and their first request head (or upgrade).
    private let handshakes = NIOLockedValueBox(0)
    /// Connections the node holds (HTTP and WebSocket), and how many it may.
    let connectionLimit: ConnectionLimit
    let metrics: GatewayMetrics

    struct Bookkeeping {
        var next = 0
        var tasks: [Int: Task<Void, Never>] = [:]
    }

    init(
        configuration: GatewayConfiguration,
        engine: any SwitchboardEngine,
        hub: Hub,
        metrics: GatewayMetrics,
        responder: ErasedResponder,
        verifier: TokenVerifier?,
        backend: (any SwitchboardBackend)? = nil,
        logger: Logger
    ) {
        self.configuration = configuration
        self.engine = engine
        self.streamStore = engine
        self.sessionStore = engine
        self.presenceStore = engine
        self.nodeRegistry = engine
        self.rateBuckets = engine
        self.hub = hub
        self.responder = responder
        self.verifier = verifier
        self.backend = backend
        self.logger = logger
        self.nodeID = configuration.nodeID ?? Self.randomID(length: 10)
        self.connectionBucket = configuration.connectionRate.map { rate in
            NIOLockedValueBox(TokenBucket(burst: configuration.connectionBurst ?? max(1, rate)))
        }
        self.metrics = metrics
        self.connectionLimit = ConnectionLimit(maximum: configuration.maxConnections)
    }

    /// Whether the connection-rate limit lets one more upgrade in now.
    func admitConnection() -> Bool {
        guard let bucket = self.connectionBucket, let rate = self.configuration.connectionRate else { return true }
        let burst = self.configuration.connectionBurst ?? max(1, rate)
        return bucket.withLockedValue { $0.take(rate: rate, burst: burst) }
    }

    /// Counts a connection into its handshake; false when `maxHandshakes` are already in theirs.
    func beginHandshake() -> Bool {
        self.handshakes.withLockedValue { n in
            guard n < self.configuration.maxHandshakes else { return false }
            n += 1
            return true
        }
    }

    func endHandshake() {
        self.handshakes.withLockedValue { $0 -= 1 }
    }

    var handshakesInProgress: Int { self.handshakes.withLockedValue { $0 } }

    /// Connections `user` holds on this node.
    func connectionCount(of user: String) -> Int {
        self.userConnections.withLockedValue { $0[user] ?? 0 }
    }

    /// Counts a new connection of `user`; returns how many the user now holds.
    func countConnection(of user: String) -> Int {
        self.userConnections.withLockedValue { counts in
            let n = (counts[user] ?? 0) + 1
            counts[user] = n
            return n
        }
    }

    func uncountConnection(of user: String) {
        self.userConnections.withLockedValue { counts in
            let n = (counts[user] ?? 1) - 1
            counts[user] = n > 0 ? n : nil
        }
    }

    func makeConnectionID() -> UInt64 {
        self.nextID.withLockedValue {
            $0 += 1
            return $0
        }
    }

    var isDraining: Bool {
        get { self.draining.withLockedValue { $0 } }
    }

    func startDraining() { self.draining.withLockedValue { $0 = true } }

    /// Runs engine bookkeeping in the background, tracked until it is done.
    func bookkeeping(_ work: @escaping @Sendable () async -> Void) {
        self.bookkeeping.withLockedValue { b in
            let id = b.next
            b.next += 1
            b.tasks[id] = Task { [weak self] in
                await work()
                _ = self?.bookkeeping.withLockedValue { $0.tasks.removeValue(forKey: id) }
            }
        }
    }

    /// Waits (at most `timeout`) for the bookkeeping started so far.
    func finishBookkeeping(timeout: Duration) async {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard let task = self.bookkeeping.withLockedValue({ $0.tasks.values.first }) else { return }
            let timer = Task {
                try? await Task.sleep(until: deadline)
                task.cancel()
            }
            await task.value
            timer.cancel()
        }
    }

    static func randomID(length: Int) -> String { RandomID.make(length: length) }

    /// Session ids are 15 characters so Swift stores them inline, without a heap allocation.
    static func newSessionID() -> String { randomID(length: 15) }
}
