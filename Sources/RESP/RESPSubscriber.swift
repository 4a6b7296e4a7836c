import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

public enum RESPSubscriptionKind: Sendable, Hashable {
    /// SUBSCRIBE / UNSUBSCRIBE; messages arrive as `message`.
    case channel
    /// PSUBSCRIBE / PUNSUBSCRIBE; messages arrive as `pmessage`.
    case pattern
    /// SSUBSCRIBE / SUNSUBSCRIBE (sharded); messages arrive as `smessage`.
    case shard

    var subscribeCommand: String { self == .channel ? "SUBSCRIBE" : self == .pattern ? "PSUBSCRIBE" : "SSUBSCRIBE" }
    var unsubscribeCommand: String { self == .channel ? "UNSUBSCRIBE" : self == .pattern ? "PUNSUBSCRIBE" : "SUNSUBSCRIBE" }
}

/// A received pub/sub message. `payload` is a slice of the received bytes.
public struct RESPMessage: Sendable {
    public var kind: RESPSubscriptionKind
    public var channel: String
    /// The matching pattern for `.pattern` subscriptions.
    public var pattern: String?
    public var payload: ByteBuffer
}

/// Handle for one local subscription (one or more channels). Unsubscribing the last local
/// subscriber of a channel sends UNSUBSCRIBE.
public final class RESPSubscription: Sendable {
    public let id: UInt64
    public let kind: RESPSubscriptionKind
    public let channels: [String]
    /// Messages for stream-based subscriptions; finishes on `unsubscribe()` or subscriber shutdown.
    /// Empty (already finished) for handler-based subscriptions.
    public let messages: AsyncStream<RESPMessage>
    private let unsubscribeAction: @Sendable (UInt64) async throws -> Void

    init(
        id: UInt64, kind: RESPSubscriptionKind, channels: [String], messages: AsyncStream<RESPMessage>,
        unsubscribe: @escaping @Sendable (UInt64) async throws -> Void
    ) {
        self.id = id
        self.kind = kind
        self.channels = channels
        self.messages = messages
        self.unsubscribeAction = unsubscribe
    }

    public func unsubscribe() async throws {
        try await unsubscribeAction(id)
    }
}

/// Pub/sub over a dedicated RESP3 connection, with per-channel reference counting.
///
/// Handlers run on the connection's event loop: keep them short and non-blocking.
public final class RESPSubscriber: Sendable {
    struct Key: Hashable {
        let kind: RESPSubscriptionKind
        let name: String
    }
    struct Entry {
        let kind: RESPSubscriptionKind
        let channels: [String]
        let handler: @Sendable (RESPMessage) -> Void
        let continuation: AsyncStream<RESPMessage>.Continuation?
    }
    struct State {
        var nextID: UInt64 = 1
        var subscriptions: [UInt64: Entry] = [:]
        /// Channel -> ids of local subscribers (reference count = count).
        var refs: [Key: Set<UInt64>] = [:]
        /// SUBSCRIBE commands in flight, so later local subscribers of the same channel can wait
        /// for the server's confirmation too.
        var inflight: [Key: EventLoopFuture<RESPValue>] = [:]
        var connection: RESPConnection?
        var shutdown = false
    }

    private let state = NIOLockedValueBox(State())
    public let configuration: RESPConfiguration
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    /// Managed by `RESPClient`: subscribing while disconnected only registers locally.
    private let managed: Bool
    /// The server dropped a subscribed shard channel (its slot moved to another node).
    private let onServerUnsubscribe: (@Sendable (String) -> Void)?

    init(
        configuration: RESPConfiguration, eventLoopGroup: any EventLoopGroup, logger: Logger, managed: Bool,
        onServerUnsubscribe: (@Sendable (String) -> Void)? = nil
    ) {
        var c = configuration
        c.protocolVersion = 3
        self.configuration = c
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.managed = managed
        self.onServerUnsubscribe = onServerUnsubscribe
    }

    /// Opens a dedicated RESP3 connection for pub/sub. `onServerUnsubscribe` is told when a
    /// Redis Cluster node drops a shard channel because its slot moved (see
    /// `RESPClusterSubscriber`, which then subscribes it where the slot went).
    public static func connect(
        configuration: RESPConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "resp.subscriber"),
        onServerUnsubscribe: (@Sendable (String) -> Void)? = nil
    ) async throws -> RESPSubscriber {
        let s = RESPSubscriber(
            configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger, managed: false,
            onServerUnsubscribe: onServerUnsubscribe)
        _ = try await s.connectAndResubscribe()
        return s
    }

    /// The current underlying connection, if connected.
    public var connection: RESPConnection? { state.withLockedValue { $0.connection } }

    /// Opens a new connection and re-sends SUBSCRIBE for every locally referenced channel.
    func connectAndResubscribe() async throws -> RESPConnection {
        let conn = try await RESPConnection.connect(
            configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger,
            onPush: { [weak self] value in self?.handlePush(value) })
        guard conn.protocolVersion == 3 else {
            await conn.close()
            throw RESPError.unexpectedReply("pub/sub requires RESP3 (HELLO 3 failed)")
        }
        let promises: [EventLoopPromise<RESPValue>]? = state.withLockedValue { s in
            if s.shutdown { return nil }
            s.connection = conn
            var byKind: [RESPSubscriptionKind: [String]] = [:]
            for key in s.refs.keys { byKind[key.kind, default: []].append(key.name) }
            return byKind.map { kind, names in
                conn.enqueue(
                    RESPCommand(kind.subscribeCommand, arguments: names.map { .string($0) }),
                    expectedPushes: names.count, pushKind: kind.subscribeCommand.lowercased())
            }
        }
        guard let promises else {
            await conn.close()
            throw RESPError.shutdown
        }
        do {
            for p in promises { _ = try await RESPConnection.wait(p, timeout: configuration.commandTimeout) }
        } catch {
            detach(conn)
            await conn.close()
            throw error
        }
        return conn
    }

    /// Forgets `conn` if it is the current connection.
    func detach(_ conn: RESPConnection) {
        state.withLockedValue { s in if s.connection === conn { s.connection = nil } }
    }

    /// Subscribes with a handler. Only channels without local subscribers are sent to Redis.
    public func subscribe(
        _ channels: [String], kind: RESPSubscriptionKind = .channel,
        handler: @escaping @Sendable (RESPMessage) -> Void
    ) async throws -> RESPSubscription {
        try await subscribe(channels, kind: kind, handler: handler, continuation: nil, stream: Self.noMessages)
    }

    /// The `messages` of every handler-based subscription: one finished stream, shared (one per
    /// subscription cost ~180 bytes each, and a node holds one subscription per connection).
    static let noMessages: AsyncStream<RESPMessage> = {
        let (stream, continuation) = AsyncStream<RESPMessage>.makeStream()
        continuation.finish()
        return stream
    }()

    /// Convenience: `(channel, payload)` handler.
    public func subscribe(
        _ channels: [String], kind: RESPSubscriptionKind = .channel,
        handler: @escaping @Sendable (_ channel: String, _ payload: ByteBuffer) -> Void
    ) async throws -> RESPSubscription {
        try await subscribe(channels, kind: kind, handler: { (m: RESPMessage) in handler(m.channel, m.payload) })
    }

    /// Subscribes and returns a subscription whose `messages` stream yields the messages.
    public func subscribe(
        _ channels: [String], kind: RESPSubscriptionKind = .channel,
        bufferingPolicy: AsyncStream<RESPMessage>.Continuation.BufferingPolicy = .unbounded
    ) async throws -> RESPSubscription {
        let (stream, cont) = AsyncStream<RESPMessage>.makeStream(bufferingPolicy: bufferingPolicy)
        return try await subscribe(channels, kind: kind, handler: { m in cont.yield(m) }, continuation: cont, stream: stream)
    }

    private func subscribe(
        _ channels: [String], kind: RESPSubscriptionKind,
        handler: @escaping @Sendable (RESPMessage) -> Void,
        continuation: AsyncStream<RESPMessage>.Continuation?,
        stream: AsyncStream<RESPMessage>
    ) async throws -> RESPSubscription {
        var unique: [String] = []
        var seen = Set<String>()
        for c in channels where seen.insert(c).inserted { unique.append(c) }
        let managed = self.managed
        let result: Result<(UInt64, EventLoopPromise<RESPValue>?, [EventLoopFuture<RESPValue>]), RESPError> = state.withLockedValue { s in
            if s.shutdown { return .failure(.shutdown) }
            if s.connection == nil && !managed { return .failure(.notConnected) }
            let id = s.nextID
            s.nextID += 1
            s.subscriptions[id] = Entry(kind: kind, channels: unique, handler: handler, continuation: continuation)
            var fresh: [String] = []
            var others: [EventLoopFuture<RESPValue>] = []
            for name in unique {
                let key = Key(kind: kind, name: name)
                if s.refs[key, default: []].isEmpty { fresh.append(name) } else if let f = s.inflight[key] { others.append(f) }
                s.refs[key, default: []].insert(id)
            }
            var promise: EventLoopPromise<RESPValue>?
            if !fresh.isEmpty, let conn = s.connection {
                let p = conn.enqueue(
                    RESPCommand(kind.subscribeCommand, arguments: fresh.map { .string($0) }),
                    expectedPushes: fresh.count, pushKind: kind.subscribeCommand.lowercased())
                for name in fresh { s.inflight[Key(kind: kind, name: name)] = p.futureResult }
                promise = p
            }
            return .success((id, promise, others))
        }
        let (id, promise, others) = try result.get()
        let subscription = RESPSubscription(
            id: id, kind: kind, channels: unique, messages: stream,
            unsubscribe: { [weak self] id in try await self?.unsubscribe(id: id) })
        if let promise {
            defer {
                state.withLockedValue { s in
                    for name in unique {
                        let key = Key(kind: kind, name: name)
                        if s.inflight[key] === promise.futureResult { s.inflight[key] = nil }
                    }
                }
            }
            do {
                _ = try await RESPConnection.wait(promise, timeout: configuration.commandTimeout)
            } catch {
                // In managed mode a lost connection is fine: the client resubscribes on reconnect.
                if managed, let e = error as? RESPError, e == .connectionClosed || e == .notConnected { return subscription }
                try? await unsubscribe(id: id)
                throw error
            }
        }
        // Channels another local subscriber is still confirming: wait for that confirmation.
        for f in others { _ = try? await f.get() }
        return subscription
    }

    func unsubscribe(id: UInt64) async throws {
        let (entry, promise): (Entry?, EventLoopPromise<RESPValue>?) = state.withLockedValue { s in
            guard let entry = s.subscriptions.removeValue(forKey: id) else { return (nil, nil) }
            var gone: [String] = []
            for name in entry.channels {
                let key = Key(kind: entry.kind, name: name)
                s.refs[key]?.remove(id)
                if s.refs[key]?.isEmpty ?? false {
                    s.refs[key] = nil
                    gone.append(name)
                }
            }
            var promise: EventLoopPromise<RESPValue>?
            if !gone.isEmpty, let conn = s.connection, !s.shutdown {
                promise = conn.enqueue(
                    RESPCommand(entry.kind.unsubscribeCommand, arguments: gone.map { .string($0) }),
                    expectedPushes: gone.count, pushKind: entry.kind.unsubscribeCommand.lowercased())
            }
            return (entry, promise)
        }
        entry?.continuation?.finish()
        if let promise {
            do {
                _ = try await RESPConnection.wait(promise, timeout: configuration.commandTimeout)
            } catch let e as RESPError where e == .connectionClosed || e == .notConnected {
                // Connection gone: the server-side subscription is gone too.
            }
        }
    }

    /// Channels (of `kind`) currently subscribed locally.
    public func subscribedChannels(kind: RESPSubscriptionKind = .channel) -> Set<String> {
        state.withLockedValue { s in Set(s.refs.keys.filter { $0.kind == kind }.map(\.name)) }
    }

    private func handlePush(_ value: RESPValue) {
        guard case .push(let items) = value, let kindName = items.first?.string else { return }
        let message: RESPMessage
        let key: Key
        switch kindName.lowercased() {
        case "message" where items.count >= 3:
            guard let ch = items[1].string, let payload = items[2].bytes else { return }
            message = RESPMessage(kind: .channel, channel: ch, pattern: nil, payload: payload)
            key = Key(kind: .channel, name: ch)
        case "smessage" where items.count >= 3:
            guard let ch = items[1].string, let payload = items[2].bytes else { return }
            message = RESPMessage(kind: .shard, channel: ch, pattern: nil, payload: payload)
            key = Key(kind: .shard, name: ch)
        case "pmessage" where items.count >= 4:
            guard let pattern = items[1].string, let ch = items[2].string, let payload = items[3].bytes else { return }
            message = RESPMessage(kind: .pattern, channel: ch, pattern: pattern, payload: payload)
            key = Key(kind: .pattern, name: pattern)
        case "sunsubscribe" where items.count >= 2:
            // Not the answer to our SUNSUBSCRIBE (that one is consumed as its confirmation): the
            // server dropped the channel because its slot moved to another node.
            if let ch = items[1].string, state.withLockedValue({ $0.refs[Key(kind: .shard, name: ch)] != nil }) {
                logger.debug("shard channel \(ch) unsubscribed by the server")
                onServerUnsubscribe?(ch)
            }
            return
        default:
            logger.trace("ignoring push \(value)")
            return
        }
        let handlers: [@Sendable (RESPMessage) -> Void] = state.withLockedValue { s in
            (s.refs[key] ?? []).compactMap { s.subscriptions[$0]?.handler }
        }
        for h in handlers { h(message) }
    }

    /// Closes the connection and finishes every message stream.
    public func close() async {
        let (conn, entries): (RESPConnection?, [Entry]) = state.withLockedValue { s in
            s.shutdown = true
            let c = s.connection
            s.connection = nil
            let e = Array(s.subscriptions.values)
            s.subscriptions = [:]
            s.refs = [:]
            return (c, e)
        }
        for e in entries { e.continuation?.finish() }
        await conn?.close()
    }
}
