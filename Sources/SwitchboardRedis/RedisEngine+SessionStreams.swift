import Foundation
import NIOConcurrencyHelpers
import NIOCore
import RESP
import Switchboard
import SwitchboardWire

/// Every connection has its session's own stream (`/sessions/<id>`). A channel subscription per
/// stream would cost each idle connection a subscription in Redis and on the node (~1.5 KiB);
/// on a single Redis a node instead subscribes once to the pattern of every session stream's
/// channel, and hands on the messages of the sessions it holds (the hub drops the others). A
/// session stream carries messages to one connection, so a node receives some it does not need;
/// that is the price of holding none per connection. On a Redis Cluster (sharded pub/sub has no
/// patterns) session streams are subscribed one by one, like every other stream.
///
/// What a pattern subscription cannot see by itself is checked from the outside: after an
/// outage every held session's stream is caught up from the log, and each live-check round the
/// node publishes a canary to its own pattern; a canary not heard by the next round means the
/// subscription died silently: it is made again and every held session is caught up.
extension RedisEngine {
    /// Whether session streams share the node's pattern subscription.
    var sharesSessionChannels: Bool { self.configuration.clusterSeeds == nil }

    func isSharedSessionStream(_ stream: String) -> Bool {
        self.sharesSessionChannels && BuiltinStream.isSessionStream(stream)
    }

    /// `sb:{/sessions/*}`, the prefix's glob characters escaped.
    private var sessionPattern: String {
        var prefix = ""
        for c in self.keys(BuiltinStream.sessionPrefix).channel {
            if "*?[]\\".contains(c) { prefix.append("\\") }
            prefix.append(c)
        }
        // `sb:{/sessions/}` → `sb:{/sessions/*}`
        return String(prefix.dropLast()) + "*}"
    }

    private var canaryStream: String { BuiltinStream.sessionPrefix + "~canary~" + self.nodeID }

    /// Subscribes the node to every session stream (once; the backend restores it after outages).
    func subscribeSessionStreams() {
        guard self.sharesSessionChannels else { return }
        let start = self.state.withLockedValue { s -> Bool in
            guard s.sessionChannel == nil, !s.node.isEmpty, s.lifecycle != .shutDown else { return false }
            return true
        }
        guard start else { return }
        let backend = self.backend
        let pattern = self.sessionPattern
        let task = Task<RESPSubscription, any Error> {
            try await backend.subscribe(pattern: pattern) { [weak self] channel, payload in
                self?.receivedSessionMessage(channel: channel, payload: payload)
            }
        }
        self.state.withLockedValue { $0.sessionChannel = task }
        Task { [weak self] in
            if case .failure(let error) = await task.result {
                // Tried again with the next heartbeat.
                self?.logger.warning("session streams' subscription failed: \(error)")
                self?.state.withLockedValue { $0.sessionChannel = nil }
            }
        }
    }

    /// Runs on the pub/sub connection's event loop, in order.
    private func receivedSessionMessage(channel: String, payload: ByteBuffer) {
        let base = self.keys("").channel  // `sb:{}`
        guard channel.hasPrefix(base.dropLast()), channel.hasSuffix("}") else { return }
        let stream = String(channel.dropFirst(base.count - 1).dropLast())
        if stream == self.canaryStream {
            let n = UInt64(String(buffer: payload)) ?? 0
            self.state.withLockedValue { $0.canaryHeard = max($0.canaryHeard, n) }
            return
        }
        // Only the sessions held here: the others are another node's.
        guard self.state.withLockedValue({ $0.sessions[String(stream.dropFirst(BuiltinStream.sessionPrefix.count))] != nil }) else { return }
        guard let message = Self.decode(stream: stream, payload: payload) else {
            self.logger.warning("undecodable live message on \(stream)")
            return
        }
        self.state.withLockedValue { $0.delivery }?.deliver(message)
    }

    /// One live-check round for the session streams: the canary sent last round must have come
    /// back; a new one goes out.
    func checkSessionChannel() async {
        guard self.sharesSessionChannels, self.isAvailable else { return }
        let (sent, heard, subscribed) = self.state.withLockedValue { ($0.canarySent, $0.canaryHeard, $0.sessionChannel != nil) }
        guard subscribed else { return }
        if sent > heard {
            self.logger.warning("the session streams' subscription went silent; subscribing again and catching up")
            let old = self.state.withLockedValue { s -> Task<RESPSubscription, any Error>? in
                defer { s.sessionChannel = nil }
                return s.sessionChannel
            }
            if let old, let subscription = try? await old.value { try? await subscription.unsubscribe() }
            self.subscribeSessionStreams()
            if let task = self.state.withLockedValue({ $0.sessionChannel }) { _ = try? await task.value }
            await self.catchUpSessionStreams()
        }
        let next = self.state.withLockedValue { max($0.canarySent, $0.canaryHeard) + 1 }
        // Counted as sent only once Redis took it: a canary lost with a connection is no alarm.
        if (try? await self.send(RESPCommand("PUBLISH", .string(self.keys(self.canaryStream).channel), .string(String(next))))) != nil {
            self.state.withLockedValue { $0.canarySent = max($0.canarySent, next) }
        }
    }

    /// The streams of every session held here, handed to the gateway to catch up (a cursor
    /// already at a stream's position reads nothing).
    func catchUpSessionStreams() async {
        guard self.sharesSessionChannels else { return }
        let streams = self.state.withLockedValue { s in s.sessions.keys.map { BuiltinStream.session($0) } }
        guard !streams.isEmpty else { return }
        let delivery = self.state.withLockedValue { $0.delivery }
        var start = 0
        while start < streams.count {
            let batch = Array(streams[start..<min(start + Self.liveCheckBatch, streams.count)])
            start += batch.count
            guard let positions = try? await self.tops(of: batch) else { continue }
            for (stream, position) in positions where !position.epoch.isEmpty { delivery?.catchUp(stream, to: position) }
        }
    }
}
