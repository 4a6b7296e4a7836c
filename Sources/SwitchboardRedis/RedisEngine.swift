import Foundation
import Logging
import NIOCore
import RESP
import Switchboard

/// Connection changes of a `RedisEngine`, for the gateway.
public enum RedisEngineEvent: Sendable, Equatable {
    /// Redis went away: every engine call now throws `EngineError.unavailable`.
    case disconnected
    /// Redis is back and the live subscriptions are restored. `lagging` lists the
    /// subscribed streams whose position moved past what this engine last delivered
    /// (messages published while the subscription was down, or a new epoch): nothing was
    /// delivered for them, the gateway should catch them up from history.
    case reconnected(lagging: [String: StreamPosition])
}

/// The cluster engine: streams, sessions and presence in Redis, shared by every node.
///
/// Each call is one round trip (one script, see `RedisScripts`), except `ack` and `release`,
/// which also update the session key (another slot in Redis Cluster) concurrently.
/// Live messages arrive over pub/sub on channel `sb:{<stream>}` for streams this node
/// subscribed to, and go to the delivery in offset order.
public final class RedisEngine: SwitchboardEngine {
    public let configuration: RedisEngineConfiguration
    /// The underlying client (reconnecting; its `events` are consumed by the engine).
    public let client: RESPClient
    /// Connection changes (single consumer).
    public let events: AsyncStream<RedisEngineEvent>
    private let eventsContinuation: AsyncStream<RedisEngineEvent>.Continuation
    private let logger: Logger
    private let state = Locked(State())

    struct LiveStream {
        var refs: Int
        let generation: UInt64
        let task: Task<RESPSubscription, any Error>
        /// Last message delivered (offset, epoch).
        var lastOffset: Int64?
        var lastEpoch: String?
    }

    struct State {
        var delivery: (any EngineDelivery)?
        var live: [String: LiveStream] = [:]
        var nextGeneration: UInt64 = 1
        /// Presence members joined through this engine (stream → encoded members), refreshed
        /// by the heartbeat.
        var presence: [String: Set<String>] = [:]
        var tasks: [Task<Void, Never>] = []
        var started = false
        var shutdown = false
    }

    public init(configuration: RedisEngineConfiguration, logger: Logger = Logger(label: "switchboard.redis")) {
        self.configuration = configuration
        self.logger = logger
        self.client = RESPClient(configuration: configuration.redis, logger: logger)
        (self.events, self.eventsContinuation) = AsyncStream<RedisEngineEvent>.makeStream(bufferingPolicy: .bufferingNewest(64))
    }

    /// Convenience: `redis://[user:pass@]host[:port][/db]` with default settings.
    public convenience init(url: String, logger: Logger = Logger(label: "switchboard.redis")) throws {
        self.init(configuration: try RedisEngineConfiguration(url: url), logger: logger)
    }

    /// True while connected to Redis.
    public var isAvailable: Bool { self.client.isConnected }

    /// Streams with a live subscription on this node.
    public var subscribedStreams: Set<String> { self.state.withLock { Set($0.live.keys) } }

    /// The last message delivered live for `stream` (nil if none or not subscribed).
    public func lastDelivered(_ stream: String) -> (offset: Int64, epoch: String)? {
        self.state.withLock { s in
            guard let l = s.live[stream], let o = l.lastOffset, let e = l.lastEpoch else { return nil }
            return (o, e)
        }
    }

    // MARK: lifecycle

    public func start(delivery: any EngineDelivery) async throws {
        let first = self.state.withLock { s -> Bool in
            s.delivery = delivery
            defer { s.started = true }
            return !s.started
        }
        guard first else { return }
        self.client.start()
        let watcher = Task { [weak self, client] in
            for await event in client.events {
                guard let self else { return }
                await self.handle(event)
            }
        }
        let heartbeat = Task { [weak self, configuration] in
            let period = max(0.05, configuration.presenceTTL / 3)
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Int(period * 1000)))
                guard let self else { return }
                await self.refreshPresence()
            }
        }
        self.state.withLock { $0.tasks += [watcher, heartbeat] }
        if self.configuration.requireConnectionAtStart {
            do {
                try await self.client.connect(timeout: self.configuration.connectTimeout)
            } catch {
                throw EngineError.unavailable("cannot reach Redis at \(configuration.redis.host):\(configuration.redis.port): \(error)")
            }
        }
    }

    public func shutdown() async {
        let (tasks, live) = self.state.withLock { s -> ([Task<Void, Never>], [LiveStream]) in
            s.shutdown = true
            let t = s.tasks, l = Array(s.live.values)
            s.tasks = []
            s.live = [:]
            return (t, l)
        }
        for l in live { l.task.cancel() }
        for t in tasks { t.cancel() }
        await self.client.shutdown()
        for t in tasks { await t.value }
        self.eventsContinuation.finish()
    }

    private func handle(_ event: RESPClientEvent) async {
        switch event {
        case .connected:
            break
        case .disconnected:
            self.logger.warning("Redis unavailable")
            self.eventsContinuation.yield(.disconnected)
        case .reconnected:
            self.logger.info("Redis available again")
            await self.refreshPresence()
            let known = self.state.withLock { s in s.live.mapValues { ($0.lastOffset, $0.lastEpoch) } }
            var lagging: [String: StreamPosition] = [:]
            if let positions = try? await self.positions(of: Array(known.keys)) {
                for (stream, p) in positions {
                    guard let (offset, epoch) = known[stream] else { continue }
                    if let offset, let epoch {
                        if epoch != p.epoch || p.top > offset { lagging[stream] = p }
                    } else if p.top > 0 {
                        lagging[stream] = p
                    }
                }
            }
            self.eventsContinuation.yield(.reconnected(lagging: lagging))
        }
    }

    // MARK: keys

    struct StreamKeys {
        let meta: String, log: String, acks: String, ackt: String, presence: String, channel: String
        let base: String
        func idempotency(_ key: String) -> String { base + ":idem:" + key }
        var scriptKeys: [String] { [meta, log, acks, ackt] }
    }

    /// `sb:{P}:…`: the hash tag keeps a stream's keys (and its sharded channel) in one slot.
    func keys(_ stream: String) -> StreamKeys {
        let base = "\(self.configuration.keyPrefix):{\(stream)}"
        return StreamKeys(meta: base + ":meta", log: base + ":log", acks: base + ":acks", ackt: base + ":ackt",
                          presence: base + ":presence", channel: base, base: base)
    }

    func sessionKey(_ id: String) -> String { "\(self.configuration.keyPrefix):session:\(id)" }

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
            .int(max(1, self.ms(c.idempotencyTTL))), .string(k.channel), .int(c.useShardedPubSub ? 1 : 0),
            .int(c.approximateTrimming ? 1 : 0), .int(self.streamTTLms),
        ])
        guard let a = reply.array, a.count == 3, let offset = a[0].int, let epoch = a[1].string, let dup = a[2].int else {
            throw EngineError.unavailable("unexpected publish reply: \(reply)")
        }
        return PublishResult(offset: Int64(offset), epoch: epoch, duplicate: dup == 1)
    }

    public func read(_ stream: String, after offset: Int64, epoch: String?, limit: Int) async throws -> HistoryRead {
        let k = self.keys(stream)
        let after = max(0, offset)
        let reply = try await self.run(RedisScripts.read, keys: k.scriptKeys, args: [
            .int(Int(after)), .string(Self.newEpoch()), .int(max(0, limit)), .int(self.ms(self.configuration.historyAge)),
            .string(epoch ?? ""), .int(self.streamTTLms),
        ])
        guard let a = reply.array, a.count >= 3, a.count % 2 == 1, let e = a[0].string, let top = a[1].int, let gone = a[2].int else {
            throw EngineError.unavailable("unexpected read reply: \(reply)")
        }
        let position = StreamPosition(epoch: e, top: Int64(top))
        if gone == 1 { return .gone(position) }
        var messages: [StreamMessage] = []
        messages.reserveCapacity((a.count - 3) / 2)
        var i = 3
        while i + 1 < a.count {
            guard let o = a[i].int, let body = a[i + 1].bytes else { throw EngineError.unavailable("unexpected read entry") }
            messages.append(StreamMessage(stream: stream, offset: Int64(o), epoch: e, body: body))
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
        guard self.client.isConnected else { throw EngineError.unavailable("Redis not connected") }
        let channel = self.keys(stream).channel
        let kind: RESPSubscriptionKind = self.configuration.useShardedPubSub ? .shard : .channel
        let subscriber = self.client.subscriber
        let (generation, task) = try self.state.withLock { s -> (UInt64, Task<RESPSubscription, any Error>) in
            if s.shutdown { throw EngineError.unavailable("engine shut down") }
            if var l = s.live[stream] {
                l.refs += 1
                s.live[stream] = l
                return (l.generation, l.task)
            }
            let generation = s.nextGeneration
            s.nextGeneration += 1
            let handler: @Sendable (RESPMessage) -> Void = { [weak self] m in
                self?.received(stream, generation: generation, payload: m.payload)
            }
            let task = Task<RESPSubscription, any Error> {
                try await subscriber.subscribe([channel], kind: kind, handler: handler)
            }
            s.live[stream] = LiveStream(refs: 1, generation: generation, task: task)
            return (generation, task)
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
        var offset: Int64 = 0
        for b in view[view.startIndex..<c1] {
            guard b >= 48, b <= 57 else { return nil }
            offset = offset &* 10 &+ Int64(b - 48)
        }
        guard let c2 = view[(c1 + 1)...].firstIndex(of: comma),
              let body = payload.getSlice(at: c2 + 1, length: view.endIndex - (c2 + 1)) else { return nil }
        let epoch = String(decoding: view[(c1 + 1)..<c2], as: UTF8.self)
        return StreamMessage(stream: stream, offset: offset, epoch: epoch, body: body)
    }

    // MARK: sessions

    public func saveSession(_ session: SessionRecord) async throws {
        var args: [RESPArgument] = [.int(max(1, self.ms(self.configuration.sessionTTL)))]
        if let user = session.user { args += [.int(1), .string(user)] } else { args += [.int(0), .string("")] }
        for (stream, cursor) in session.cursors { args += [.string(stream), .int(Int(cursor))] }
        _ = try await self.run(RedisScripts.saveSession, keys: [self.sessionKey(session.id)], args: args)
    }

    public func loadSession(_ id: String) async throws -> SessionRecord? {
        let fields: [String: ByteBuffer]
        do {
            fields = try await self.client.hgetall(self.sessionKey(id))
        } catch {
            throw Self.map(error)
        }
        if fields.isEmpty { return nil }
        var record = SessionRecord(id: id, user: fields["u"].map { String(buffer: $0) })
        for (name, value) in fields where name.hasPrefix("c:") {
            if let cursor = Int64(String(buffer: value)) { record.cursors[String(name.dropFirst(2))] = cursor }
        }
        return record
    }

    public func touchSession(_ id: String, connected: Bool) async throws {
        _ = try await self.run(RedisScripts.touchSession, keys: [self.sessionKey(id)], args: [
            .int(connected ? 1 : -1), .int(max(1, self.ms(self.configuration.sessionTTL))),
        ])
    }

    public func ack(session: String, stream: String, offset: Int64) async throws {
        let k = self.keys(stream)
        // Sessions that have not acked for this long no longer hold history back: by then
        // their session expired, or age trimming dropped what they would protect.
        let staleAfter = self.ms(max(self.configuration.historyAge, self.configuration.sessionTTL) * 2)
        async let streamSide = self.run(RedisScripts.ack, keys: k.scriptKeys, args: [
            .string(session), .int(Int(offset)), .int(max(1, staleAfter)), .int(self.streamTTLms),
        ])
        async let sessionSide = self.run(RedisScripts.sessionCursor, keys: [self.sessionKey(session)], args: [
            .string("c:" + stream), .int(Int(offset)),
        ])
        _ = try await (streamSide, sessionSide)
    }

    public func release(session: String, stream: String) async throws {
        let k = self.keys(stream)
        async let a = self.send(RESPCommand("ZREM", .string(k.acks), .string(session)))
        async let b = self.send(RESPCommand("ZREM", .string(k.ackt), .string(session)))
        async let c = self.send(RESPCommand("HDEL", .string(self.sessionKey(session)), .string("c:" + stream)))
        _ = try await (a, b, c)
    }

    // MARK: presence

    public func presenceJoin(_ stream: String, member: PresenceMember) async throws {
        let encoded = try Self.encode(member)
        self.state.withLock { $0.presence[stream, default: []].insert(encoded) }
        _ = try await self.run(RedisScripts.presenceJoin, keys: [self.keys(stream).presence], args: [
            .int(max(1, self.ms(self.configuration.presenceTTL))), .string(encoded),
        ])
    }

    public func presenceLeave(_ stream: String, member: PresenceMember) async throws {
        let encoded = try Self.encode(member)
        self.state.withLock { s in
            s.presence[stream]?.remove(encoded)
            if s.presence[stream]?.isEmpty ?? false { s.presence[stream] = nil }
        }
        _ = try await self.send(RESPCommand("HDEL", .string(self.keys(stream).presence), .string(encoded)))
    }

    public func presence(of stream: String) async throws -> [PresenceMember] {
        let reply = try await self.run(RedisScripts.presenceList, keys: [self.keys(stream).presence], args: [])
        let decoder = JSONDecoder()
        return (reply.array ?? []).compactMap { v in
            v.bytes.flatMap { try? decoder.decode(PresenceMember.self, from: Data($0.readableBytesView)) }
        }
    }

    /// Re-arms the expiry of every member joined through this engine.
    func refreshPresence() async {
        let snapshot = self.state.withLock { $0.presence }
        let ttl = max(1, self.ms(self.configuration.presenceTTL))
        await withTaskGroup(of: Void.self) { group in
            for (stream, members) in snapshot where !members.isEmpty {
                let key = self.keys(stream).presence
                group.addTask {
                    _ = try? await self.run(RedisScripts.presenceJoin, keys: [key],
                                            args: [.int(ttl)] + members.map { .string($0) })
                }
            }
        }
    }

    static func encode(_ member: PresenceMember) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return String(decoding: try encoder.encode(member), as: UTF8.self)
    }

    // MARK: plumbing

    private func run(_ script: RESPScript, keys: [String], args: [RESPArgument]) async throws -> RESPValue {
        do {
            return try await self.client.run(script, keys: keys, args: args)
        } catch {
            throw Self.map(error)
        }
    }

    private func send(_ command: RESPCommand) async throws -> RESPValue {
        do {
            return try await self.client.send(command, timeout: nil)
        } catch {
            throw Self.map(error)
        }
    }

    /// Every Redis failure is "unavailable" to the gateway (SUB503, publish refused).
    static func map(_ error: any Error) -> any Error {
        if let e = error as? RESPError { return EngineError.unavailable(e.description) }
        return error
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
