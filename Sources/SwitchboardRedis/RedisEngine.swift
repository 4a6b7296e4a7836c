import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RESP
import Switchboard
import SwitchboardWire

/// Connection changes of a `RedisEngine`, for tests and operators.
public enum RedisEngineEvent: Sendable, Equatable {
    /// Redis went away: every engine call now throws `EngineError.unavailable`.
    case disconnected
    /// Redis is back and the live subscriptions are restored. `lagging` lists the subscribed
    /// streams whose position moved past what this engine last delivered (messages published
    /// while the subscription was down, or a new epoch); they were handed to the gateway's
    /// `catchUp` before this event.
    case reconnected(lagging: [String: StreamPosition])
}

/// The cluster engine: streams, sessions, presence and the node registry in Redis (one server
/// or a Redis Cluster), shared by every node.
///
/// Every stream call is one round trip (one script, see `RedisScripts`); `ack`, `release` and
/// `touchSession` also update keys in other slots, concurrently. Live messages arrive over
/// pub/sub on channel `sb:{<stream>}` for streams this node subscribed to, and go to the
/// delivery in offset order. After an outage of the live channels, and whenever a periodic
/// check finds a subscription behind the stream's top, the gateway is told to catch up.
public final class RedisEngine: SwitchboardEngine {
    public let configuration: RedisEngineConfiguration
    /// Connection changes (single consumer).
    public let events: AsyncStream<RedisEngineEvent>
    let eventsContinuation: AsyncStream<RedisEngineEvent>.Continuation
    let logger: Logger
    let backend: any RedisBackend
    let state = NIOLockedValueBox(State())
    /// Rollbacks of a stream's history this node detected (each started a new epoch).
    let rollbacks = NIOLockedValueBox(0)
    /// Each stream's history size, age and retention (the gateway's stream rules).
    let storage = NIOLockedValueBox(StreamStoragePolicy.standard)
    public var rollbacksDetected: Int { self.rollbacks.withLockedValue { $0 } }

    /// A stream's channel subscription: the task while SUBSCRIBE is on its way, then only the
    /// handle (a finished Task is kept whole, ~1.5 KiB: that would be per connection, for every
    /// session's own stream).
    enum LiveChannel {
        case subscribing(Task<RESPSubscription, any Error>)
        case subscribed(RESPSubscription)
    }

    struct LiveStream {
        var refs: Int
        let generation: UInt64
        var channel: LiveChannel
        /// Last message delivered (offset, epoch), or the position when subscribed.
        var lastOffset: Int64?
        var lastEpoch: String?
        /// Highest offset received live in `lastEpoch` (never from a position read): a live
        /// message at or below it is an offset handed out twice, a rollback.
        var received: Int64?
        /// The tag of the message at `received`.
        var receivedTag = ""
        /// A rollback was found and the new epoch is being started: live messages are dropped.
        var rollingBack = false
        /// Until when the live check reads this stream: `liveCheckWindow` after its last traffic
        /// here (a message received or published by this node), three check rounds after it was
        /// subscribed. Idle streams are not read.
        var activeUntil: ContinuousClock.Instant?
        /// Highest offset this node published to the stream in `lastEpoch`, and the one a live
        /// check found not received yet (the next check still not: the channel is dead).
        var published: Int64?
        var unheard: Int64?
        /// A top seen by the live check while this stream was behind it; still behind at the
        /// next check means the subscription lost messages.
        var suspect: Int64?
    }

    enum Availability: Equatable {
        case available
        /// Redis away since the first failure; calls fail fast.
        case unavailable
        /// Back, and live subscriptions are being caught up.
        case catchingUp
    }

    /// A session with live connections on this node (a reconnect to the same node overlaps the
    /// old connection's close: the session stays held until its last one closes).
    struct LocalSession {
        var user: String?
        var connections: Int
    }

    struct State {
        var node = ""
        var address: String?
        var startedAt = Date().timeIntervalSince1970
        var delivery: (any EngineDelivery)?
        var live: [String: LiveStream] = [:]
        var nextGeneration: UInt64 = 1
        /// Presence members joined through this engine (stream → encoded members), refreshed
        /// by the heartbeat.
        var presence: [String: Set<String>] = [:]
        /// Sessions with a live connection on this node (and their user), re-registered after
        /// an outage.
        var sessions: [String: LocalSession] = [:]
        var control: Task<RESPSubscription, any Error>?
        /// The pattern subscription of every session stream (single Redis), and its canaries.
        var sessionChannel: Task<RESPSubscription, any Error>?
        var canarySent: UInt64 = 0
        var canaryHeard: UInt64 = 0
        var tasks: [Task<Void, Never>] = []
        var availability = Availability.unavailable
        /// Where the next live check starts, when there are more streams than one round checks.
        var liveCheckCursor = 0
        var lastRoundTrip: Duration?
        /// Since when this node's own heartbeats have succeeded without a break (nil after a
        /// failed one, or while Redis is away): other nodes' heartbeats are judged only once it
        /// has been for a dead node's silence, so its own outage (or the registry's shard failing
        /// over) never makes live nodes look dead.
        var beatingSince: ContinuousClock.Instant?
        /// Cluster: some shard's live channels are down while the others serve.
        var degraded = false
        /// Heartbeats never overlap (a restore must finish before a refresh).
        var heartbeat = HeartbeatState.idle
        var lastPresenceRefresh: ContinuousClock.Instant?
        var lifecycle = Lifecycle.created
    }

    /// Started once; after `shutdown()` nothing (re)subscribes and nothing starts again.
    enum Lifecycle: Equatable {
        case created, running, shutDown
    }

    public init(configuration: RedisEngineConfiguration, logger: Logger = Logger(label: "switchboard.redis")) {
        self.configuration = configuration
        self.logger = logger
        if let seeds = configuration.clusterSeeds {
            self.backend = ClusterBackend(seeds: seeds, configuration: configuration.redis, reconnect: configuration.reconnect, logger: logger)
        } else {
            self.backend = StandaloneBackend(
                configuration: configuration.redis, sharded: configuration.useShardedPubSub, reconnect: configuration.reconnect, logger: logger
            )
        }
        (self.events, self.eventsContinuation) = AsyncStream<RedisEngineEvent>.makeStream(bufferingPolicy: .bufferingNewest(64))
    }

    /// Convenience: `redis://[user:pass@]host[:port][/db]` with default settings.
    public convenience init(url: String, logger: Logger = Logger(label: "switchboard.redis")) throws {
        self.init(configuration: try RedisEngineConfiguration(url: url), logger: logger)
    }

    /// True while Redis serves (caught up or not).
    public var isAvailable: Bool { self.state.withLockedValue { $0.availability != .unavailable } && self.backend.isConnected }

    /// Streams with a live subscription on this node.
    public var subscribedStreams: Set<String> { self.state.withLockedValue { Set($0.live.keys) } }

    /// The last message delivered live for `stream` (nil if none or not subscribed).
    public func lastDelivered(_ stream: String) -> (offset: Int64, epoch: String)? {
        self.state.withLockedValue { s in
            guard let l = s.live[stream], let o = l.lastOffset, let e = l.lastEpoch else { return nil }
            return (o, e)
        }
    }

    var nodeID: String { self.state.withLockedValue { $0.node } }

    // MARK: lifecycle

    public func start(node: String, delivery: any EngineDelivery) async throws {
        let first = self.state.withLockedValue { s -> Bool in
            guard s.lifecycle == .created else { return false }
            s.node = node
            s.delivery = delivery
            s.lifecycle = .running
            return true
        }
        guard first else { return }
        self.backend.start()
        let watcher = Task { [weak self, backend] in
            for await event in backend.events {
                guard let self else { return }
                await self.handle(event)
            }
        }
        let heartbeat = Task { [weak self, configuration] in
            let period = min(configuration.heartbeatInterval, max(0.05, configuration.presenceTTL / 3))
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Int(period * 1000)))
                guard let self else { return }
                await self.heartbeat()
            }
        }
        let liveCheck = Task { [weak self, configuration] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Int(configuration.liveCheckInterval * 1000)))
                guard let self else { return }
                await self.checkLiveSubscriptions()
            }
        }
        self.state.withLockedValue { $0.tasks += [watcher, heartbeat, liveCheck] }
        if self.configuration.requireConnectionAtStart {
            do {
                try await self.backend.waitUntilConnected(timeout: self.configuration.connectTimeout)
            } catch {
                throw EngineError.unavailable("cannot reach Redis at \(self.configuration.redis.host):\(self.configuration.redis.port): \(error)")
            }
            self.state.withLockedValue { s in
                if s.availability == .unavailable { s.availability = .available }
            }
            await self.register()
        }
    }

    public func announce(address: String) async {
        self.state.withLockedValue { $0.address = address }
        await self.heartbeat()
    }

    public func shutdown() async {
        await self.deregister()
        let (tasks, live, control, sessions) = self.state.withLockedValue {
            s -> ([Task<Void, Never>], [LiveStream], Task<RESPSubscription, any Error>?, Task<RESPSubscription, any Error>?) in
            s.lifecycle = .shutDown
            let t = s.tasks
            let l = Array(s.live.values)
            s.tasks = []
            s.live = [:]
            return (t, l, s.control, s.sessionChannel)
        }
        control?.cancel()
        sessions?.cancel()
        for l in live { if case .subscribing(let task) = l.channel { task.cancel() } }
        for t in tasks { t.cancel() }
        await self.backend.shutdown()
        for t in tasks { await t.value }
        self.eventsContinuation.finish()
    }

    public func health() async -> EngineHealth {
        let (availability, lastRoundTrip, degraded) = self.state.withLockedValue { ($0.availability, $0.lastRoundTrip, $0.degraded) }
        let target =
            self.configuration.clusterSeeds == nil
            ? "Redis \(self.configuration.redis.host):\(self.configuration.redis.port)"
            : "Redis Cluster (\(self.configuration.clusterSeeds!.count) seeds)"
        if degraded, availability == .available {
            // A cluster with a shard away still serves every other shard: ready, and said so;
            // unless no node of it answers at all.
            guard await self.backend.anyNodeAnswers(within: .seconds(1)) else {
                return EngineHealth(available: false, detail: "\(target): no node answers")
            }
            return EngineHealth(
                available: true, detail: "\(target): a shard is failing over; its streams answer 503 until it is back", roundTrip: lastRoundTrip)
        }
        switch availability {
        case .unavailable:
            return EngineHealth(available: false, detail: "\(target) unavailable")
        case .catchingUp:
            return EngineHealth(available: true, catchingUp: true, detail: "\(target): catching up live streams", roundTrip: lastRoundTrip)
        case .available:
            return EngineHealth(available: true, detail: target, roundTrip: lastRoundTrip)
        }
    }

    private func handle(_ event: RESPClientEvent) async {
        switch event {
        case .connected:
            self.state.withLockedValue { s in
                if s.availability == .unavailable { s.availability = .available }
            }
            await self.loadScripts()
            await self.register()
        case .disconnected where self.configuration.clusterSeeds != nil:
            // Some shard's live channels are down (a master failing over): the others serve on.
            // Operations on the failed slots fail on their own (503) until the replica takes over;
            // the node stays ready. Its live streams there are caught up when they are back.
            self.logger.warning("a Redis Cluster shard is unavailable")
            self.state.withLockedValue { $0.degraded = true }
            self.eventsContinuation.yield(.disconnected)
        case .disconnected:
            self.logger.warning("Redis unavailable")
            self.state.withLockedValue { s in
                s.availability = .unavailable
                s.beatingSince = nil
            }
            self.eventsContinuation.yield(.disconnected)
        case .reconnected where self.configuration.clusterSeeds != nil:
            self.logger.info("Redis Cluster live channels are back; catching up their streams")
            let lagging = await self.catchUpLiveStreams()
            self.state.withLockedValue { $0.degraded = false }
            self.eventsContinuation.yield(.reconnected(lagging: lagging))
        case .reconnected:
            self.logger.info("Redis available again; catching up live streams")
            self.state.withLockedValue { s in
                s.availability = .catchingUp
                s.beatingSince = nil
                // A canary lost in the outage is no sign of a dead subscription: the catch-up
                // below covers the session streams.
                s.canarySent = s.canaryHeard
            }
            // Re-register before anything else: a restarted Redis may have lost this node.
            await self.loadScripts()
            await self.register()
            let lagging = await self.catchUpLiveStreams()
            self.state.withLockedValue { if $0.availability == .catchingUp { $0.availability = .available } }
            self.eventsContinuation.yield(.reconnected(lagging: lagging))
        }
    }

    // MARK: plumbing

    /// Loads every script once, so the first burst of calls after a (re)connect does not each
    /// meet NOSCRIPT. (On a Redis Cluster each node learns a script on its first NOSCRIPT.)
    func loadScripts() async {
        guard self.configuration.clusterSeeds == nil else { return }
        await withTaskGroup(of: Void.self) { group in
            for script in RedisScripts.all {
                group.addTask { _ = try? await self.backend.scriptLoad(script.source, keys: [], timeout: nil) }
            }
        }
    }

    func run(_ script: RESPScript, keys: [String], args: [RESPArgument]) async throws -> RESPValue {
        do {
            return try await self.backend.run(script, keys: keys, args: args)
        } catch {
            throw Self.map(error)
        }
    }

    func runBoth(_ a: ScriptCall, _ b: ScriptCall) async throws -> (RESPValue, RESPValue) {
        do {
            return try await self.backend.runBoth(a, b)
        } catch {
            throw Self.map(error)
        }
    }

    func send(_ command: RESPCommand) async throws -> RESPValue {
        do {
            return try await self.backend.send(command, timeout: nil)
        } catch {
            throw Self.map(error)
        }
    }

    /// Every Redis failure is "unavailable" to the gateway (SUB503, publish refused).
    static func map(_ error: any Error) -> any Error {
        if let e = error as? RESPError { return EngineError.unavailable(e.description) }
        if error is EngineError { return error }
        return EngineError.unavailable("\(error)")
    }

    /// An offset in a reply: 0…`StreamOffset.maximum`, else the reply is not one of ours.
    static func offset(_ value: RESPValue) -> Int64? {
        guard let int = value.int, int >= 0, Int64(int) <= StreamOffset.maximum else { return nil }
        return Int64(int)
    }

    static func newEpoch() -> String { RandomID.make(length: 8) }
}
