import DequeModule
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire

/// The single-node engine: streams, sessions and presence in this process.
///
/// Everything sits behind one lock; live delivery is handed to the hub while the lock
/// is held so messages of a stream reach it in offset order.
public final class MemoryEngine: SwitchboardEngine {
    public struct Configuration: Sendable {
        /// Messages kept per stream (older ones are trimmed).
        public var historySize: Int = 1000
        /// Seconds a message is kept.
        public var historyAge: Double = 300
        /// Seconds a session survives after its last connection closed.
        public var sessionTTL: Double = 120
        /// Seconds an idempotency key is remembered.
        public var idempotencyTTL: Double = 300

        public init(historySize: Int = 1000, historyAge: Double = 300, sessionTTL: Double = 120, idempotencyTTL: Double = 300) {
            self.historySize = historySize
            self.historyAge = historyAge
            self.sessionTTL = sessionTTL
            self.idempotencyTTL = idempotencyTTL
        }
    }

    struct Entry {
        var offset: Int64
        var time: NIODeadline
        var tag: String
        var previousTag: String
        var body: ByteBuffer
    }

    /// What the stream's rule keeps, resolved once when its state is made.
    struct Limits {
        var size: Int
        var age: TimeAmount
        var trimsByAcks: Bool
    }

    struct StreamState {
        let epoch: String
        let limits: Limits
        var top: Int64 = 0
        /// The tag of the message at `top` (the next one's `previousTag`).
        var lastTag = ""
        var log: Deque<Entry> = []
        /// Acked offset per consuming session; entries all of them acked are trimmed.
        var consumers: [String: Int64] = [:]
        var idempotency: [String: (result: PublishResult, expires: NIODeadline)] = [:]
        var presence: Set<PresenceMember> = []

        var isUnused: Bool { self.top == 0 && self.lastTag.isEmpty && self.consumers.isEmpty && self.presence.isEmpty && self.idempotency.isEmpty }

        /// Oldest offset still readable: a reader after `firstKept - 1` is covered.
        var firstKept: Int64 { self.log.first?.offset ?? (self.top + 1) }
    }

    struct SessionState {
        var record: SessionRecord
        var connections: Int
        var expires: NIODeadline?
    }

    struct State {
        var streams: [String: StreamState] = [:]
        var sessions: [String: SessionState] = [:]
        var delivery: (any EngineDelivery)?
        var storage = StreamStoragePolicy.standard
        var node = NodeInfo(id: "", address: nil, startedAt: 0, lastSeen: 0, connections: 0)
    }

    public let configuration: Configuration
    /// The epoch of every stream of this engine: its history lives exactly as long as the
    /// process, so one epoch per engine says when it was lost. A stream that was never
    /// published to needs no state of its own (a subscriber learns this epoch and top 0).
    public let epoch = MemoryEngine.newEpoch()
    private let state = NIOLockedValueBox(State())
    private let sweeper = NIOLockedValueBox<Task<Void, Never>?>(nil)
    private let buckets = NIOLockedValueBox(RateBuckets())

    /// Rate buckets by key; a bucket that has refilled is the same as none, so the table is
    /// pruned of those now and then and stays as small as the set of busy keys.
    struct RateBuckets {
        /// Each bucket with the rate and burst it was drawn with, so pruning judges it by its own.
        var table: [String: (bucket: TokenBucket, rate: Double, burst: Double)] = [:]
        var takes = 0
    }

    public func takeToken(_ key: String, rate: Double, burst: Double) async throws -> Bool {
        let now = NIODeadline.now()
        return self.buckets.withLockedValue { buckets in
            buckets.takes += 1
            if buckets.takes % 4096 == 0 {
                buckets.table = buckets.table.filter { !$0.value.bucket.isFull(rate: $0.value.rate, burst: $0.value.burst, now: now) }
            }
            var entry = buckets.table[key] ?? (TokenBucket(burst: burst, now: now), rate, burst)
            let taken = entry.bucket.take(rate: rate, burst: burst, now: now)
            buckets.table[key] = (entry.bucket, rate, burst)
            return taken
        }
    }

    public init(configuration: Configuration = .init()) {
        self.configuration = configuration
    }

    public func start(node: String, delivery: any EngineDelivery) async throws {
        let now = Date().timeIntervalSince1970
        self.state.withLockedValue { state in
            state.delivery = delivery
            state.node = NodeInfo(id: node, address: nil, startedAt: now, lastSeen: now, connections: 0)
        }
        let task = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                self?.sweep(now: .now())
            }
        }
        self.sweeper.withLockedValue { $0 = task }
    }

    public func shutdown() async {
        self.sweeper.withLockedValue { $0?.cancel() }
    }

    public func announce(address: String) async {
        self.state.withLockedValue { $0.node.address = address }
    }

    public func health() async -> EngineHealth {
        EngineHealth(available: true, detail: "in-memory engine")
    }

    /// Just this node: the memory engine is a cluster of one.
    public func nodes() async throws -> [NodeInfo] {
        let now = Date().timeIntervalSince1970
        return self.state.withLockedValue { state in
            var node = state.node
            node.lastSeen = now
            node.connections = state.sessions.values.reduce(0) { $0 + $1.connections }
            return [node]
        }
    }

    public func send(_ message: ControlMessage, to node: String) async throws {
        let delivery = self.state.withLockedValue { $0.node.id == node ? $0.delivery : nil }
        guard let delivery else { throw EngineError.unknownNode(node) }
        delivery.control(message)
    }

    public func useStorage(_ policy: StreamStoragePolicy) {
        self.state.withLockedValue { $0.storage = policy }
    }

    private func newStream(_ stream: String, _ policy: StreamStoragePolicy) -> StreamState {
        let storage = policy.storage(of: stream)
        let limits = Limits(
            size: max(0, storage.historySize ?? self.configuration.historySize),
            age: .seconds(clamping: storage.historyAge ?? self.configuration.historyAge),
            trimsByAcks: storage.trimsByAcks(stream))
        return StreamState(epoch: self.epoch, limits: limits)
    }

    public func publish(_ stream: String, body: ByteBuffer, idempotencyKey: String?) async throws -> PublishResult {
        let now = NIODeadline.now()
        let tag = StreamMessage.newTag()  // outside the lock
        return self.state.withLockedValue { state in
            let delivery = state.delivery
            // In place: a copy of the stream state would copy its whole history.
            return Self.inPlace(&state.streams[stream, default: self.newStream(stream, state.storage)]) { s in
                if let key = idempotencyKey, let seen = s.idempotency[key], seen.expires > now {
                    var result = seen.result
                    result.duplicate = true
                    return result
                }
                s.top += 1
                let previous = s.lastTag
                s.lastTag = tag
                s.log.append(Entry(offset: s.top, time: now, tag: tag, previousTag: previous, body: body))
                self.trim(&s, now: now)
                let result = PublishResult(offset: s.top, epoch: s.epoch, duplicate: false)
                if let key = idempotencyKey {
                    s.idempotency[key] = (result, now + .seconds(clamping: self.configuration.idempotencyTTL))
                }
                delivery?.deliver(StreamMessage(stream: stream, offset: s.top, epoch: s.epoch, tag: tag, previousTag: previous, body: body))
                return result
            }
        }
    }

    /// Runs `body` on `value` where it is (`&dictionary[key, default: …]` is not copied out).
    private static func inPlace<T, R>(_ value: inout T, _ body: (inout T) -> R) -> R {
        body(&value)
    }

    public func read(_ stream: String, after offset: Int64, epoch: String?, tag: String?, limit: Int) async throws -> HistoryRead {
        let now = NIODeadline.now()
        return self.state.withLockedValue { state in
            guard state.streams[stream] != nil else {
                // Never published to: empty, so only a reader at 0 in this epoch is covered.
                let position = StreamPosition(epoch: self.epoch, top: 0)
                return (epoch ?? self.epoch) == self.epoch && offset == 0 ? .messages([], position) : .gone(position)
            }
            self.trim(&state.streams[stream]!, now: now)
            let s = state.streams[stream]!
            let position = StreamPosition(epoch: s.epoch, top: s.top)
            if let epoch, epoch != s.epoch { return .gone(position) }
            if offset > s.top { return .gone(position) }
            if offset + 1 < s.firstKept { return .gone(position) }
            // The reader names the message it stopped at: it must be the one kept here (or, when
            // that one was just trimmed, the one kept after it must follow it).
            if let tag, !tag.isEmpty, offset > 0 {
                if offset >= s.firstKept {
                    if s.log[Int(offset - s.firstKept)].tag != tag { return .gone(position) }
                } else if let first = s.log.first, first.offset == offset + 1, !first.previousTag.isEmpty, first.previousTag != tag {
                    return .gone(position)
                } else if s.log.isEmpty, offset == s.top, !s.lastTag.isEmpty, s.lastTag != tag {
                    return .gone(position)
                }
            }
            var out: [StreamMessage] = []
            let startIndex = Int(offset + 1 - s.firstKept)
            var i = max(0, startIndex)
            while i < s.log.count && out.count < limit {
                let e = s.log[i]
                out.append(StreamMessage(stream: stream, offset: e.offset, epoch: s.epoch, tag: e.tag, previousTag: e.previousTag, body: e.body))
                i += 1
            }
            return .messages(out, position)
        }
    }

    public func position(of stream: String) async throws -> StreamPosition {
        self.state.withLockedValue { state in
            state.streams[stream].map { StreamPosition(epoch: $0.epoch, top: $0.top) } ?? StreamPosition(epoch: self.epoch, top: 0)
        }
    }

    // Live delivery is unconditional here: every publish reaches the hub, which
    // drops what no local connection wants.
    public func subscribe(_ stream: String) async throws {}
    public func unsubscribe(_ stream: String) async {}

    public func saveSession(_ session: SessionRecord) async throws {
        self.state.withLockedValue { state in
            if var existing = state.sessions[session.id] {
                existing.record = session
                state.sessions[session.id] = existing
            } else {
                let ttl = TimeAmount.seconds(clamping: self.configuration.sessionTTL)
                state.sessions[session.id] = SessionState(record: session, connections: 0, expires: .now() + ttl)
            }
        }
    }

    public func loadSession(_ id: String) async throws -> SessionRecord? {
        let now = NIODeadline.now()
        return self.state.withLockedValue { state in
            guard let s = state.sessions[id] else { return nil }
            if let expires = s.expires, expires <= now { return nil }
            return s.record
        }
    }

    public func touchSession(_ id: String, user: String?, connected: Bool) async throws {
        let ttl = TimeAmount.seconds(clamping: self.configuration.sessionTTL)
        self.state.withLockedValue { state in
            guard var s = state.sessions[id] else { return }
            s.connections = max(0, s.connections + (connected ? 1 : -1))
            s.expires = s.connections == 0 ? .now() + ttl : nil
            s.record.node = s.connections == 0 ? nil : state.node.id
            state.sessions[id] = s
        }
    }

    public func ack(session: String, stream: String, offset: Int64) async throws {
        self.state.withLockedValue { state in
            let acked = min(max(0, offset), state.streams[stream]?.top ?? 0)
            if var s = state.sessions[session] {
                s.record.cursors[stream] = max(s.record.cursors[stream] ?? 0, acked)
                state.sessions[session] = s
            }
            if state.streams[stream] == nil {
                // A session's own stream has no other consumer to protect: it needs no state yet.
                // Any other stream records this consumer now, even before its first message, or a
                // later subscriber's acks would trim what this one has not read (protocol §4.4).
                if BuiltinStream.isSessionStream(stream) { return }
                let fresh = self.newStream(stream, state.storage)
                guard fresh.limits.trimsByAcks else { return }
                state.streams[stream] = fresh
            }
            guard state.streams[stream]!.limits.trimsByAcks else { return }
            Self.inPlace(&state.streams[stream]!) { s in
                s.consumers[session] = max(s.consumers[session] ?? 0, acked)
            }
        }
    }

    public func release(session: String, stream: String) async throws {
        self.state.withLockedValue { state in
            state.sessions[session]?.record.cursors[stream] = nil
            state.streams[stream]?.consumers[session] = nil
        }
    }

    @discardableResult
    public func presenceJoin(_ stream: String, member: PresenceMember) async throws -> Bool {
        self.state.withLockedValue { state in
            state.streams[stream, default: self.newStream(stream, state.storage)].presence.insert(member).inserted
        }
    }

    @discardableResult
    public func presenceLeave(_ stream: String, member: PresenceMember) async throws -> Bool {
        self.state.withLockedValue { state in
            state.streams[stream]?.presence.remove(member) != nil
        }
    }

    public func presence(of stream: String) async throws -> [PresenceMember] {
        self.state.withLockedValue { state in
            Array(state.streams[stream]?.presence ?? [])
        }
    }

    /// Drop expired history, idempotency keys and sessions.
    func sweep(now: NIODeadline) {
        self.state.withLockedValue { state in
            var expired: [SessionState] = []
            for (id, s) in state.sessions {
                if let e = s.expires, e <= now {
                    expired.append(s)
                    state.sessions[id] = nil
                }
            }
            for s in expired {
                for stream in s.record.cursors.keys {
                    state.streams[stream]?.consumers[s.record.id] = nil
                }
                // Nobody can resume this session any more: its own stream goes with it.
                state.streams[GatewayCore.sessionStream(s.record.id)] = nil
            }
            let gone = Set(expired.map(\.record.id))
            // A stream that never had a message and has nobody left holding it is the same as none.
            for key in state.streams.compactMap({ $0.value.isUnused ? $0.key : nil }) { state.streams[key] = nil }
            for index in state.streams.indices {
                // In place, through the dictionary's values: no copy of any history.
                self.trim(&state.streams.values[index], now: now)
                self.trimAcked(&state.streams.values[index])
                if !state.streams.values[index].idempotency.isEmpty {
                    state.streams.values[index].idempotency = state.streams.values[index].idempotency.filter { $0.value.expires > now }
                }
                if !gone.isEmpty, !state.streams.values[index].presence.isEmpty {
                    state.streams.values[index].presence = state.streams.values[index].presence.filter { !gone.contains($0.session) }
                }
            }
        }
    }

    /// Retention by count and age (on every publish and read).
    private func trim(_ s: inout StreamState, now: NIODeadline) {
        while s.log.count > s.limits.size {
            s.log.removeFirst()
        }
        let oldest = now - s.limits.age
        while let first = s.log.first, first.time < oldest {
            s.log.removeFirst()
        }
    }

    /// Retention by acks: drop what every consuming session acked. Runs in the sweep
    /// (once a second), not per ack, so a stream with many consumers costs
    /// O(consumers) a second rather than per acknowledgement.
    private func trimAcked(_ s: inout StreamState) {
        guard !s.consumers.isEmpty, let first = s.log.first else { return }
        var acked = Int64.max
        for value in s.consumers.values where value < acked {
            acked = value
            if acked < first.offset { return }
        }
        while let head = s.log.first, head.offset <= acked {
            s.log.removeFirst()
        }
    }

    static func newEpoch() -> String { RandomID.make(length: 8) }
}
