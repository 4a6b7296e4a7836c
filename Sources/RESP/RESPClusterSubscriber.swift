import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Sharded pub/sub on a Redis Cluster (SSUBSCRIBE, Redis 7).
///
/// Each channel is subscribed on the primary that owns its slot, over one dedicated RESP3
/// connection per primary; channels subscribed together are sent in one write. Local
/// subscribers are reference counted per channel, as in `RESPSubscriber`.
///
/// When a slot moves (the node drops the subscription with a `sunsubscribe` push, or answers
/// SSUBSCRIBE with MOVED) or a node's connection is lost, the affected channels are subscribed
/// again where their slots now live, with backoff. `events` reports `.disconnected` when that
/// starts and `.reconnected` when every channel is back: messages published in between were
/// not delivered, so a caller with its own log (the gateway) catches up from it.
public final class RESPClusterSubscriber: Sendable {
    public typealias Node = RESPClusterClient.Node

    struct Local {
        let channels: [String]
        let handler: @Sendable (RESPMessage) -> Void
    }

    /// One channel as this process has it on the cluster.
    struct Remote {
        var refs: Set<UInt64> = []
        /// Where it is subscribed now; nil while it is being (re)subscribed.
        var node: Node?
        /// The node connection it is subscribed through.
        var via: ObjectIdentifier?
        var subscription: RESPSubscription?
        /// The first subscribe of the channel, awaited by later local subscribers.
        var attaching: Task<Void, any Error>?
    }

    struct State {
        var nextID: UInt64 = 1
        var locals: [UInt64: Local] = [:]
        var channels: [String: Remote] = [:]
        var nodes: [Node: Task<RESPSubscriber, any Error>] = [:]
        /// The connection each node's task produced, once it did.
        var connected: [Node: ObjectIdentifier] = [:]
        var broken: Set<String> = []
        var repairing = false
        var shutdown = false
    }

    public let cluster: RESPClusterClient
    public let retryPolicy: RESPReconnectPolicy
    /// `.disconnected` when channels lost their subscription, `.reconnected` when all are back
    /// (single consumer).
    public let events: AsyncStream<RESPClientEvent>
    private let eventsContinuation: AsyncStream<RESPClientEvent>.Continuation
    private let state = NIOLockedValueBox(State())
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger

    public init(
        cluster: RESPClusterClient,
        retryPolicy: RESPReconnectPolicy = RESPReconnectPolicy(initialDelay: .milliseconds(50), maxDelay: .seconds(2)),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "resp.cluster.subscriber")
    ) {
        self.cluster = cluster
        self.retryPolicy = retryPolicy
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        (self.events, self.eventsContinuation) = AsyncStream<RESPClientEvent>.makeStream(bufferingPolicy: .bufferingNewest(64))
    }

    /// Subscribes to shard channels; returns once every one is confirmed by its node.
    public func subscribe(_ channels: [String], handler: @escaping @Sendable (RESPMessage) -> Void) async throws -> RESPSubscription {
        var unique: [String] = []
        var seen = Set<String>()
        for c in channels where seen.insert(c).inserted { unique.append(c) }
        let (id, waits): (UInt64, [Task<Void, any Error>]) = try state.withLockedValue { s in
            if s.shutdown { throw RESPError.shutdown }
            let id = s.nextID
            s.nextID += 1
            s.locals[id] = Local(channels: unique, handler: handler)
            var fresh: [String] = []
            var waits: [Task<Void, any Error>] = []
            for channel in unique {
                if s.channels[channel] == nil {
                    s.channels[channel] = Remote()
                    fresh.append(channel)
                } else if let attaching = s.channels[channel]?.attaching {
                    waits.append(attaching)
                }
                s.channels[channel]!.refs.insert(id)
            }
            if !fresh.isEmpty {
                let task = Task { try await self.attach(fresh) }
                for channel in fresh { s.channels[channel]!.attaching = task }
                waits.append(task)
            }
            return (id, waits)
        }
        do {
            for wait in waits { try await wait.value }
        } catch {
            try? await self.unsubscribe(id: id)
            throw error
        }
        // Handler-based: its `messages` is the shared finished stream (no allocation each).
        return RESPSubscription(
            id: id, kind: .shard, channels: unique, messages: RESPSubscriber.noMessages,
            unsubscribe: { [weak self] id in try await self?.unsubscribe(id: id) })
    }

    func unsubscribe(id: UInt64) async throws {
        let gone: [RESPSubscription] = state.withLockedValue { s in
            guard let local = s.locals.removeValue(forKey: id) else { return [] }
            var gone: [RESPSubscription] = []
            for channel in local.channels {
                s.channels[channel]?.refs.remove(id)
                if s.channels[channel]?.refs.isEmpty == true, let remote = s.channels.removeValue(forKey: channel) {
                    s.broken.remove(channel)
                    if let subscription = remote.subscription { gone.append(subscription) }
                }
            }
            return gone
        }
        for subscription in gone { try? await subscription.unsubscribe() }
    }

    /// Channels with at least one local subscriber.
    public var subscribedChannels: Set<String> { state.withLockedValue { Set($0.channels.keys) } }

    /// The node each channel is subscribed on (nil while it is being resubscribed).
    public func node(of channel: String) -> Node? { state.withLockedValue { $0.channels[channel]?.node } }

    public func close() async {
        let nodes: [Task<RESPSubscriber, any Error>] = state.withLockedValue { s in
            s.shutdown = true
            s.locals = [:]
            s.channels = [:]
            defer { s.nodes = [:] }
            return Array(s.nodes.values)
        }
        for node in nodes { await (try? node.value)?.close() }
        eventsContinuation.finish()
    }

    // MARK: attaching channels to nodes

    /// Subscribes `channels` (all new or broken) on the nodes owning their slots. Each channel
    /// gets its own subscription, so it can later be dropped alone; subscribed concurrently, the
    /// commands for one node leave in one write.
    private func attach(_ channels: [String]) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for channel in channels {
                group.addTask { try await self.attach(channel) }
            }
            try await group.waitForAll()
        }
    }

    private func attach(_ channel: String) async throws {
        let slot = RESPClusterSlot.slot(for: channel)
        var lastError: any Error = RESPError.unexpectedReply("no node serves slot \(slot)")
        for attempt in 0..<8 {
            if attempt > 0 { try await Task.sleep(for: retryPolicy.delay(attempt: attempt)) }
            guard let node = cluster.node(forSlot: slot) else {
                try? await cluster.refreshSlots()
                continue
            }
            do {
                let subscriber = try await self.subscriber(for: node)
                let subscription = try await subscriber.subscribe([channel], kind: .shard) { [weak self] message in
                    self?.deliver(message)
                }
                let stale: RESPSubscription? = state.withLockedValue { s in
                    guard s.channels[channel] != nil, !s.shutdown else { return subscription }
                    s.channels[channel]!.node = node
                    s.channels[channel]!.via = ObjectIdentifier(subscriber)
                    s.channels[channel]!.subscription = subscription
                    s.channels[channel]!.attaching = nil
                    return nil
                }
                // Unsubscribed locally while this was in flight.
                if let stale { try? await stale.unsubscribe() }
                return
            } catch RESPError.server(let code, let message) where code == "MOVED" || RESPClusterClient.retriedErrors.contains(code) {
                lastError = RESPError.server(code: code, message: message)
                try? await cluster.refreshSlots()
            } catch let error as RESPError where error.isServerReply || error == .shutdown {
                throw error
            } catch {
                // The node cannot be reached: forget its connection, find the slot's owner again.
                lastError = error
                self.dropSubscriber(for: node)
                try? await cluster.refreshSlots()
            }
        }
        throw lastError
    }

    private func deliver(_ message: RESPMessage) {
        let handlers: [@Sendable (RESPMessage) -> Void] = state.withLockedValue { s in
            (s.channels[message.channel]?.refs ?? []).compactMap { s.locals[$0]?.handler }
        }
        for handler in handlers { handler(message) }
    }

    /// The dedicated pub/sub connection to `node`, opened on first use.
    private func subscriber(for node: Node) async throws -> RESPSubscriber {
        let task: Task<RESPSubscriber, any Error> = try state.withLockedValue { s in
            if s.shutdown { throw RESPError.shutdown }
            if let task = s.nodes[node] { return task }
            var configuration = cluster.configuration
            configuration.host = node.host
            configuration.port = node.port
            let group = eventLoopGroup
            let logger = logger
            let task = Task { [weak self] () throws -> RESPSubscriber in
                let subscriber = try await RESPSubscriber.connect(
                    configuration: configuration, eventLoopGroup: group, logger: logger,
                    onServerUnsubscribe: { [weak self] channel in self?.broke([channel]) }
                )
                let id = ObjectIdentifier(subscriber)
                self?.state.withLockedValue { $0.connected[node] = id }
                // A lost connection takes its subscriptions with it. (The callback keeps the
                // subscriber alive until it ran, so its identity cannot be reused before.)
                subscriber.connection?.closeFuture.whenComplete { [weak self] _ in
                    withExtendedLifetime(subscriber) { self?.connectionLost(id, node: node) }
                }
                return subscriber
            }
            s.nodes[node] = task
            return task
        }
        do {
            return try await task.value
        } catch {
            state.withLockedValue { s in if s.nodes[node] == task { s.nodes[node] = nil } }
            throw error
        }
    }

    /// Closes the connection to `node`; channels still on it are resubscribed (see `connectionLost`).
    private func dropSubscriber(for node: Node) {
        let task = state.withLockedValue { s in
            s.connected[node] = nil
            return s.nodes.removeValue(forKey: node)
        }
        if let task { Task { await (try? task.value)?.close() } }
    }

    // MARK: repair

    private func connectionLost(_ id: ObjectIdentifier, node: Node) {
        let channels: [String] = state.withLockedValue { s in
            guard !s.shutdown else { return [] }
            if s.connected[node] == id {
                s.connected[node] = nil
                s.nodes[node] = nil
            }
            return s.channels.filter { $0.value.via == id }.map(\.key)
        }
        if !channels.isEmpty {
            self.logger.warning("lost the pub/sub connection to \(node); resubscribing \(channels.count) channels")
            self.broke(channels)
        }
    }

    /// `channels` lost their subscription: subscribe them again, in the background.
    private func broke(_ channels: [String]) {
        let start: Bool = state.withLockedValue { s in
            guard !s.shutdown else { return false }
            for channel in channels where s.channels[channel] != nil {
                s.channels[channel]!.node = nil
                s.channels[channel]!.via = nil
                s.broken.insert(channel)
            }
            guard !s.repairing, !s.broken.isEmpty else { return false }
            s.repairing = true
            return true
        }
        guard start else { return }
        eventsContinuation.yield(.disconnected)
        Task { await self.repair() }
    }

    private func repair() async {
        var attempt = 0
        while true {
            let batch: [(String, RESPSubscription?)] = state.withLockedValue { s in
                let batch = s.broken.compactMap { channel -> (String, RESPSubscription?)? in
                    guard let remote = s.channels[channel] else { return nil }
                    s.channels[channel]!.subscription = nil
                    return (channel, remote.subscription)
                }
                s.broken = []
                if batch.isEmpty { s.repairing = false }
                return batch
            }
            if batch.isEmpty { break }
            // Drop what is left of the old subscriptions (harmless if the node already did).
            for (_, old) in batch { try? await old?.unsubscribe() }
            var failed: [String] = []
            await withTaskGroup(of: (String, Bool).self) { group in
                for (channel, _) in batch {
                    group.addTask { (channel, (try? await self.attach(channel)) != nil) }
                }
                for await (channel, ok) in group where !ok { failed.append(channel) }
            }
            if !failed.isEmpty {
                attempt += 1
                self.logger.warning("\(failed.count) shard channels not resubscribed yet (attempt \(attempt))")
                state.withLockedValue { s in for channel in failed where s.channels[channel] != nil { s.broken.insert(channel) } }
                try? await Task.sleep(for: retryPolicy.delay(attempt: min(attempt, 6)))
            }
            if state.withLockedValue({ $0.shutdown }) { return }
        }
        eventsContinuation.yield(.reconnected)
    }
}
