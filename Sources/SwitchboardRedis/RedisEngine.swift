import Foundation
import Logging
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
    let state = Locked(State())

    struct LiveStream {
        var refs: Int
        let generation: UInt64
        let task: Task<RESPSubscription, any Error>
        /// Last message delivered (offset, epoch), or the position when subscribed.
        var lastOffset: Int64?
        var lastEpoch: String?
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
        var sessions: [String: String?] = [:]
        var control: Task<RESPSubscription, any Error>?
        var tasks: [Task<Void, Never>] = []
        var availability = Availability.unavailable
        /// Where the next live check starts, when there are more streams than one round checks.
        var liveCheckCursor = 0
        var lastRoundTrip: Duration?
        /// Since when this node has been connected to Redis without a break (nil while away):
        /// other nodes' heartbeats are judged only once it has been for a dead node's silence,
        /// so its own outage never makes live nodes look dead.
        var connectedSince: ContinuousClock.Instant?
        /// A heartbeat is running (they never overlap: a restore must finish before a refresh).
        var heartbeating = false
        var heartbeatAgain = false
        var started = false
        var shutdown = false
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
    public var isAvailable: Bool { self.state.withLock { $0.availability != .unavailable } && self.backend.isConnected }

    /// Streams with a live subscription on this node.
    public var subscribedStreams: Set<String> { self.state.withLock { Set($0.live.keys) } }

    /// The last message delivered live for `stream` (nil if none or not subscribed).
    public func lastDelivered(_ stream: String) -> (offset: Int64, epoch: String)? {
        self.state.withLock { s in
            guard let l = s.live[stream], let o = l.lastOffset, let e = l.lastEpoch else { return nil }
            return (o, e)
        }
    }

    var nodeID: String { self.state.withLock { $0.node } }

    // MARK: lifecycle

    public func start(node: String, delivery: any EngineDelivery) async throws {
        let first = self.state.withLock { s -> Bool in
            s.node = node
            s.delivery = delivery
            defer { s.started = true }
            return !s.started
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
        self.state.withLock { $0.tasks += [watcher, heartbeat, liveCheck] }
        if self.configuration.requireConnectionAtStart {
            do {
                try await self.backend.waitUntilConnected(timeout: self.configuration.connectTimeout)
            } catch {
                throw EngineError.unavailable("cannot reach Redis at \(self.configuration.redis.host):\(self.configuration.redis.port): \(error)")
            }
            self.state.withLock { s in
                if s.availability == .unavailable { s.availability = .available }
                if s.connectedSince == nil { s.connectedSince = .now }
            }
            await self.register()
        }
    }

    public func announce(address: String) async {
        self.state.withLock { $0.address = address }
        await self.heartbeat()
    }

    public func shutdown() async {
        await self.deregister()
        let (tasks, live, control) = self.state.withLock { s -> ([Task<Void, Never>], [LiveStream], Task<RESPSubscription, any Error>?) in
            s.shutdown = true
            let t = s.tasks, l = Array(s.live.values)
            s.tasks = []
            s.live = [:]
            return (t, l, s.control)
        }
        control?.cancel()
        for l in live { l.task.cancel() }
        for t in tasks { t.cancel() }
        await self.backend.shutdown()
        for t in tasks { await t.value }
        self.eventsContinuation.finish()
    }

    public func health() async -> EngineHealth {
        let (availability, lastRoundTrip) = self.state.withLock { ($0.availability, $0.lastRoundTrip) }
        let target = self.configuration.clusterSeeds == nil
            ? "Redis \(self.configuration.redis.host):\(self.configuration.redis.port)"
            : "Redis Cluster (\(self.configuration.clusterSeeds!.count) seeds)"
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
            self.state.withLock { s in
                if s.availability == .unavailable { s.availability = .available }
                if s.connectedSince == nil { s.connectedSince = .now }
            }
            await self.loadScripts()
            await self.register()
        case .disconnected:
            self.logger.warning("Redis unavailable")
            self.state.withLock { s in
                s.availability = .unavailable
                s.connectedSince = nil
            }
            self.eventsContinuation.yield(.disconnected)
        case .reconnected:
            self.logger.info("Redis available again; catching up live streams")
            self.state.withLock { s in
                s.availability = .catchingUp
                s.connectedSince = .now
            }
            // Re-register before anything else: a restarted Redis may have lost this node.
            await self.loadScripts()
            await self.register()
            let lagging = await self.catchUpLiveStreams()
            self.state.withLock { if $0.availability == .catchingUp { $0.availability = .available } }
            self.eventsContinuation.yield(.reconnected(lagging: lagging))
        }
    }

    // MARK: keys

    struct StreamKeys {
        let meta: String, log: String, acks: String, holds: String, presence: String, channel: String
        let base: String
        func idempotency(_ key: String) -> String { base + ":idem:" + key }
        var scriptKeys: [String] { [meta, log, acks, holds] }
    }

    /// `sb:{P}:…`: the hash tag keeps a stream's keys (and its sharded channel) in one slot.
    func keys(_ stream: String) -> StreamKeys {
        let base = "\(self.configuration.keyPrefix):{\(stream)}"
        return StreamKeys(meta: base + ":meta", log: base + ":log", acks: base + ":acks", holds: base + ":holds",
                          presence: base + ":presence", channel: base, base: base)
    }

    private var ms: (Double) -> Int { { Int(($0 * 1000).rounded()) } }
    private var streamTTLms: Int { self.configuration.streamIdleTTL > 0 ? max(1, self.ms(self.configuration.streamIdleTTL)) : 0 }

    // MARK: streams

    public func publish(_ stream: String, body: ByteBuffer, idempotencyKey: String?) async throws -> PublishResult {
        let k = self.keys(stream)
        var keys = k.scriptKeys
        if let idempotencyKey { keys.append(k.idempotency(idempotencyKey)) }
        let c = self.configuration
        let reply = try await self.run(RedisScripts.publish, keys: keys, args: [
            .bytes(body), .string(Self.newEpoch()), .int(max(0, c.historySize)), .int(self.ms(c.historyAge)),
            .int(max(1, self.ms(c.idempotencyTTL))), .string(k.channel), .int(self.backend.sharded ? 1 : 0),
            .int(c.approximateTrimming ? 1 : 0), .int(self.streamTTLms),
        ])
        guard let a = reply.array, a.count == 3, let offset = Self.offset(a[0]), let epoch = a[1].string, let dup = a[2].int else {
            throw EngineError.unavailable("unexpected publish reply: \(reply)")
        }
        return PublishResult(offset: offset, epoch: epoch, duplicate: dup == 1)
    }

    public func read(_ stream: String, after offset: Int64, epoch: String?, limit: Int) async throws -> HistoryRead {
        let k = self.keys(stream)
        let after = max(0, offset)
        let reply = try await self.run(RedisScripts.read, keys: k.scriptKeys, args: [
            .int(Int(after)), .string(Self.newEpoch()), .int(max(0, limit)), .int(self.ms(self.configuration.historyAge)),
            .string(epoch ?? ""), .int(self.streamTTLms), .int(max(0, self.configuration.historySize)),
        ])
        guard let a = reply.array, a.count >= 3, a.count % 2 == 1, let e = a[0].string, let top = Self.offset(a[1]), let gone = a[2].int else {
            throw EngineError.unavailable("unexpected read reply: \(reply)")
        }
        let position = StreamPosition(epoch: e, top: top)
        if gone == 1 { return .gone(position) }
        var messages: [StreamMessage] = []
        messages.reserveCapacity((a.count - 3) / 2)
        var i = 3
        while i + 1 < a.count {
            guard let o = Self.offset(a[i]), o > after, o <= top, let body = a[i + 1].bytes else {
                throw EngineError.unavailable("unexpected read entry")
            }
            messages.append(StreamMessage(stream: stream, offset: o, epoch: e, body: body))
            i += 2
        }
        return .messages(messages, position)
    }

    public func position(of stream: String) async throws -> StreamPosition {
        switch try await self.read(stream, after: 0, epoch: nil, limit: 0) {
        case .messages(_, let p), .gone(let p): return p
        }
    }

    /// Positions of many streams, pipelined on the one connection.
    public func positions(of streams: [String]) async throws -> [String: StreamPosition] {
        try await withThrowingTaskGroup(of: (String, StreamPosition).self) { group in
            for s in Set(streams) {
                group.addTask { (s, try await self.position(of: s)) }
            }
            var out: [String: StreamPosition] = [:]
            for try await (s, p) in group { out[s] = p }
            return out
        }
    }

    // MARK: live delivery

    public func subscribe(_ stream: String) async throws {
        guard self.isAvailable else { throw EngineError.unavailable("Redis not connected") }
        let channel = self.keys(stream).channel
        let backend = self.backend
        let (generation, task, fresh) = try self.state.withLock { s -> (UInt64, Task<RESPSubscription, any Error>, Bool) in
            if s.shutdown { throw EngineError.unavailable("engine shut down") }
            if var l = s.live[stream] {
                l.refs += 1
                s.live[stream] = l
                return (l.generation, l.task, false)
            }
            let generation = s.nextGeneration
            s.nextGeneration += 1
            let task = Task<RESPSubscription, any Error> {
                try await backend.subscribe(channel) { [weak self] payload in
                    self?.received(stream, generation: generation, payload: payload)
                }
            }
            s.live[stream] = LiveStream(refs: 1, generation: generation, task: task)
            return (generation, task, true)
        }
        do {
            _ = try await task.value
        } catch {
            // The subscription failed for every caller waiting on it: forget it.
            self.state.withLock { s in
                if s.live[stream]?.generation == generation { s.live[stream] = nil }
            }
            throw Self.map(error)
        }
        // Where the stream stood once live messages flow: the live check measures from here.
        if fresh, let position = try? await self.position(of: stream) {
            self.state.withLock { s in
                guard s.live[stream]?.generation == generation, s.live[stream]?.lastOffset == nil else { return }
                s.live[stream]?.lastOffset = position.top
                s.live[stream]?.lastEpoch = position.epoch
            }
        }
    }

    public func unsubscribe(_ stream: String) async {
        let task = self.state.withLock { s -> Task<RESPSubscription, any Error>? in
            guard var l = s.live[stream] else { return nil }
            l.refs -= 1
            if l.refs > 0 {
                s.live[stream] = l
                return nil
            }
            s.live[stream] = nil
            return l.task
        }
        if let task, let subscription = try? await task.value {
            try? await subscription.unsubscribe()
        }
    }

    /// Runs on the pub/sub connection's event loop, one message at a time: order is kept.
    private func received(_ stream: String, generation: UInt64, payload: ByteBuffer) {
        guard let message = Self.decode(stream: stream, payload: payload) else {
            self.logger.warning("undecodable live message on \(stream)")
            return
        }
        let delivery = self.state.withLock { s -> (any EngineDelivery)? in
            // A stale subscription (unsubscribed, being replaced) must not deliver twice.
            guard var l = s.live[stream], l.generation == generation else { return nil }
            l.lastOffset = message.offset
            l.lastEpoch = message.epoch
            if let suspect = l.suspect, message.offset >= suspect { l.suspect = nil }
            s.live[stream] = l
            return s.delivery
        }
        delivery?.deliver(message)
    }

    /// `<offset>,<epoch>,<body>`; the body is a slice of the received buffer.
    static func decode(stream: String, payload: ByteBuffer) -> StreamMessage? {
        let view = payload.readableBytesView
        let comma = UInt8(ascii: ",")
        guard let c1 = view.firstIndex(of: comma), c1 > view.startIndex else { return nil }
        guard c1 - view.startIndex <= 16 else { return nil }
        var offset: Int64 = 0
        for b in view[view.startIndex..<c1] {
            guard b >= 48, b <= 57 else { return nil }
            offset = offset * 10 + Int64(b - 48)
        }
        guard offset <= StreamOffset.maximum else { return nil }
        guard let c2 = view[(c1 + 1)...].firstIndex(of: comma),
              let body = payload.getSlice(at: c2 + 1, length: view.endIndex - (c2 + 1)) else { return nil }
        let epoch = String(decoding: view[(c1 + 1)..<c2], as: UTF8.self)
        return StreamMessage(stream: stream, offset: offset, epoch: epoch, body: body)
    }

    // MARK: catching up

    /// After an outage of the live channels: every subscribed stream whose position moved past
    /// what was delivered is handed to the gateway to read from history. Returns those streams.
    func catchUpLiveStreams() async -> [String: StreamPosition] {
        let known = self.state.withLock { s in s.live.mapValues { ($0.lastOffset, $0.lastEpoch) } }
        guard !known.isEmpty else { return [:] }
        var lagging: [String: StreamPosition] = [:]
        for attempt in 0..<5 {
            guard let positions = try? await self.positions(of: Array(known.keys)) else {
                try? await Task.sleep(for: .milliseconds(100 << attempt))
                continue
            }
            for (stream, p) in positions {
                guard let (offset, epoch) = known[stream] else { continue }
                if let offset, let epoch {
                    if epoch != p.epoch || p.top > offset { lagging[stream] = p }
                } else if p.top > 0 {
                    lagging[stream] = p
                }
            }
            break
        }
        let delivery = self.state.withLock { $0.delivery }
        for (stream, position) in lagging { delivery?.catchUp(stream, to: position) }
        if !lagging.isEmpty { self.logger.info("caught up \(lagging.count) live streams after an outage") }
        return lagging
    }

    /// Streams checked per round of `checkLiveSubscriptions`; a node with more takes turns.
    static let liveCheckBatch = 512

    /// Compares subscribed streams' tops with what was delivered (up to `liveCheckBatch` a
    /// round, in turn, read in one call on a single server). A stream behind its top twice in a
    /// row (so not just a message in flight) lost messages on a subscription that went silently
    /// dead: the gateway catches it up, and the subscription is made again.
    func checkLiveSubscriptions() async {
        let known = self.state.withLock { s -> [(String, Int64, String?, Int64?)] in
            let streams = s.live.compactMap { stream, l in l.lastOffset.map { (stream, $0, l.lastEpoch, l.suspect) } }
                .sorted { $0.0 < $1.0 }
            guard streams.count > Self.liveCheckBatch else { return streams }
            let start = s.liveCheckCursor % streams.count
            s.liveCheckCursor = start + Self.liveCheckBatch
            return Array((streams + streams)[start..<(start + Self.liveCheckBatch)])
        }
        guard !known.isEmpty, self.isAvailable, let positions = try? await self.tops(of: known.map(\.0)) else { return }
        var dead: [String: StreamPosition] = [:]
        self.state.withLock { s in
            for (stream, offset, epoch, suspect) in known {
                guard let p = positions[stream], s.live[stream] != nil else { continue }
                let behind = p.top > offset || (epoch != nil && !p.epoch.isEmpty && epoch != p.epoch)
                if behind, let suspect, offset < suspect {
                    dead[stream] = p
                    s.live[stream]?.suspect = nil
                } else {
                    s.live[stream]?.suspect = behind ? p.top : nil
                }
            }
        }
        guard !dead.isEmpty else { return }
        self.logger.warning("live subscriptions behind their stream: \(dead.keys.sorted()); resubscribing and catching up")
        for stream in dead.keys { await self.resubscribe(stream) }
        let delivery = self.state.withLock { $0.delivery }
        for (stream, position) in dead { delivery?.catchUp(stream, to: position) }
    }

    /// Epoch and top of many streams without creating any: one script on a single server,
    /// one read per stream on a cluster (their keys live in different slots).
    func tops(of streams: [String]) async throws -> [String: StreamPosition] {
        guard self.configuration.clusterSeeds == nil else { return try await self.positions(of: streams) }
        let reply = try await self.run(RedisScripts.tops, keys: streams.map { self.keys($0).meta }, args: [])
        let values = reply.array ?? []
        var out: [String: StreamPosition] = [:]
        for (i, stream) in streams.enumerated() where 2 * i + 1 < values.count {
            guard let top = Self.offset(values[2 * i + 1]) else { continue }
            out[stream] = StreamPosition(epoch: values[2 * i].string ?? "", top: top)
        }
        return out
    }

    /// Replaces the live subscription of `stream` with a new one (same local references).
    private func resubscribe(_ stream: String) async {
        let channel = self.keys(stream).channel
        let backend = self.backend
        let old = self.state.withLock { s -> Task<RESPSubscription, any Error>? in
            guard var l = s.live[stream] else { return nil }
            let generation = s.nextGeneration
            s.nextGeneration += 1
            let task = Task<RESPSubscription, any Error> {
                try await backend.subscribe(channel) { [weak self] payload in
                    self?.received(stream, generation: generation, payload: payload)
                }
            }
            let previous = l.task
            l = LiveStream(refs: l.refs, generation: generation, task: task, lastOffset: l.lastOffset, lastEpoch: l.lastEpoch)
            s.live[stream] = l
            return previous
        }
        if let old, let subscription = try? await old.value { try? await subscription.unsubscribe() }
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

    static func newEpoch() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        return String((0..<8).map { _ in alphabet.randomElement()! })
    }
}

/// Lock-protected value (NSLock; `Mutex` needs macOS 15).
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    @discardableResult
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        self.lock.lock()
        defer { self.lock.unlock() }
        return try body(&self.value)
    }
}
