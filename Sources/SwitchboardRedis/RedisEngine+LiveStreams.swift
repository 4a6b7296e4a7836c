import Foundation
import NIOConcurrencyHelpers
import NIOCore
import RESP
import Switchboard
import SwitchboardWire

/// Live delivery: a pub/sub channel per stream this node has subscribers of, and the checks
/// that turn anything pub/sub lost into a catch-up from the log, and any rollback of the log
/// into a new epoch (`RedisEngine+Rollbacks.swift`).
extension RedisEngine {
    public func subscribe(_ stream: String) async throws {
        // A session's own stream comes over the node's pattern subscription (single Redis).
        if self.isSharedSessionStream(stream) {
            guard self.isAvailable else { throw EngineError.unavailable("Redis not connected") }
            return
        }
        // On a cluster only the stream's own shard matters: a failed master elsewhere must not
        // refuse this subscription. A failure here is this stream's, and answered as such.
        if self.configuration.clusterSeeds == nil {
            guard self.isAvailable else { throw EngineError.unavailable("Redis not connected") }
        }
        let (generation, pending, fresh) = try self.state.withLockedValue { s -> (UInt64, Task<RESPSubscription, any Error>?, Bool) in
            if s.lifecycle == .shutDown { throw EngineError.unavailable("engine shut down") }
            if var l = s.live[stream] {
                l.refs += 1
                s.live[stream] = l
                if case .subscribing(let task) = l.channel { return (l.generation, task, false) }
                return (l.generation, nil, false)
            }
            let generation = s.nextGeneration
            s.nextGeneration += 1
            let task = self.channelTask(stream, generation: generation)
            // A new subscription is watched for three rounds of the live check (a dead channel is
            // found in two), at least 15 s, then only while it has traffic.
            let watch = Duration.milliseconds(Int((max(15, 3 * self.configuration.liveCheckInterval) * 1000).rounded()))
            s.live[stream] = LiveStream(refs: 1, generation: generation, channel: .subscribing(task), activeUntil: .now + watch)
            return (generation, task, true)
        }
        guard let pending else { return }
        do {
            let subscription = try await pending.value
            self.state.withLockedValue { s in
                if s.live[stream]?.generation == generation { s.live[stream]?.channel = .subscribed(subscription) }
            }
        } catch {
            // The subscription failed for every caller waiting on it: forget it.
            self.state.withLockedValue { s in
                if s.live[stream]?.generation == generation { s.live[stream] = nil }
            }
            throw Self.map(error)
        }
        // Where the stream stood once live messages flow: the checks measure from here.
        if fresh, let position = try? await self.position(of: stream) {
            self.state.withLockedValue { s in
                guard s.live[stream]?.generation == generation, s.live[stream]?.lastOffset == nil else { return }
                s.live[stream]?.lastOffset = position.top
                s.live[stream]?.lastEpoch = position.epoch
            }
        }
    }

    /// Subscribes the stream's channel; messages go to `received` while `generation` is current.
    /// Subscribes the stream's channel, after closing `replaced` (subscriptions are counted per
    /// channel: one made while the old one is still there would not reach Redis, and closing
    /// the old one after it would not either).
    private func channelTask(_ stream: String, generation: UInt64, replacing replaced: LiveChannel? = nil) -> Task<RESPSubscription, any Error> {
        let channel = self.keys(stream).channel
        let backend = self.backend
        return Task {
            await Self.close(replaced)
            return try await backend.subscribe(channel) { [weak self] payload in
                self?.received(stream, generation: generation, payload: payload)
            }
        }
    }

    public func unsubscribe(_ stream: String) async {
        if self.isSharedSessionStream(stream) { return }
        let channel = self.state.withLockedValue { s -> LiveChannel? in
            guard var l = s.live[stream] else { return nil }
            l.refs -= 1
            if l.refs > 0 {
                s.live[stream] = l
                return nil
            }
            s.live[stream] = nil
            return l.channel
        }
        await Self.close(channel)
    }

    static func close(_ channel: LiveChannel?) async {
        switch channel {
        case .subscribed(let subscription)?:
            try? await subscription.unsubscribe()
        case .subscribing(let task)?:
            if let subscription = try? await task.value { try? await subscription.unsubscribe() }
        case nil:
            break
        }
    }

    /// Runs on the pub/sub connection's event loop, one message at a time: order is kept.
    func received(_ stream: String, generation: UInt64, payload: ByteBuffer) {
        guard let message = Self.decode(stream: stream, payload: payload) else {
            self.logger.warning("undecodable live message on \(stream)")
            return
        }
        enum Outcome {
            case deliver(any EngineDelivery, verify: (Int64, String)?)
            case rolledBack(seen: Int64)
            case drop
        }
        let outcome = self.state.withLockedValue { s -> Outcome in
            // A stale subscription (unsubscribed, being replaced) must not deliver twice.
            guard var l = s.live[stream], l.generation == generation, let delivery = s.delivery, !l.rollingBack else { return .drop }
            // Pub/sub delivers a stream's messages once, in offset order: one at or below a
            // message already received, in the same epoch, is an offset handed out again.
            // The next message names the one before it: another one than received here means the
            // history between was written again.
            if let received = l.received, l.lastEpoch == message.epoch,
                message.offset <= received || (message.offset == received + 1 && !message.follows(l.receivedTag))
            {
                // Until the new epoch is in place, what arrives here is dropped: it is caught up after.
                s.live[stream]?.rollingBack = true
                return .rolledBack(seen: received)
            }
            // Offsets skipped (pub/sub lost some): whether the history between is still the one
            // this node saw is checked from the log.
            var verify: (Int64, String)?
            if let received = l.received, l.lastEpoch == message.epoch, message.offset > received + 1, !l.receivedTag.isEmpty {
                verify = (received, l.receivedTag)
            }
            l.lastOffset = message.offset
            l.lastEpoch = message.epoch
            l.received = message.offset
            l.receivedTag = message.tag
            l.activeUntil = .now + self.liveCheckWindow
            if let suspect = l.suspect, message.offset >= suspect { l.suspect = nil }
            s.live[stream] = l
            return .deliver(delivery, verify: verify)
        }
        switch outcome {
        case .deliver(let delivery, let verify):
            delivery.deliver(message)
            if let (offset, tag) = verify {
                let epoch = message.epoch
                Task {
                    if await self.wasRewritten(stream, at: offset, tag: tag, epoch: epoch) {
                        await self.rolledBack(stream, epoch: epoch, seen: offset, now: message.offset)
                    }
                }
            }
        case .rolledBack(let seen):
            Task { await self.rolledBack(stream, epoch: message.epoch, seen: seen, now: message.offset) }
        case .drop: break
        }
    }

    /// Records a publish by this node to `stream`: local traffic, which the live check watches
    /// for (a subscription that dies silently is found without reading anything).
    func published(_ stream: String, offset: Int64, epoch: String) {
        self.state.withLockedValue { s in
            guard var l = s.live[stream], l.lastEpoch == epoch || l.lastEpoch == nil else { return }
            l.published = max(l.published ?? 0, offset)
            l.activeUntil = .now + self.liveCheckWindow
            s.live[stream] = l
        }
    }

    /// `<offset>,<epoch>,<tag>,<previous tag>,<body>`; the body is a slice of the received buffer.
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
        guard let c2 = view[(c1 + 1)...].firstIndex(of: comma), let c3 = view[(c2 + 1)...].firstIndex(of: comma),
            let c4 = view[(c3 + 1)...].firstIndex(of: comma),
            let body = payload.getSlice(at: c4 + 1, length: view.endIndex - (c4 + 1))
        else { return nil }
        let epoch = String(decoding: view[(c1 + 1)..<c2], as: UTF8.self)
        let tag = String(decoding: view[(c2 + 1)..<c3], as: UTF8.self)
        let previous = String(decoding: view[(c3 + 1)..<c4], as: UTF8.self)
        return StreamMessage(stream: stream, offset: offset, epoch: epoch, tag: tag, previousTag: previous, body: body)
    }

    // MARK: catching up

    /// After an outage of the live channels: every subscribed stream whose position moved past
    /// what was delivered is handed to the gateway to read from history (every one of them: a
    /// dead channel delivers nothing, so only a read can tell). A top below what this node
    /// saw, in the same epoch, is a rollback. Returns the streams that were behind.
    func catchUpLiveStreams() async -> [String: StreamPosition] {
        let known = self.state.withLockedValue { s in s.live.mapValues { ($0.lastOffset, $0.lastEpoch) } }
        let receivedTags = self.state.withLockedValue { s in
            s.live.compactMapValues { l in l.received.map { ($0, l.receivedTag) } }
        }
        guard !known.isEmpty else {
            await self.catchUpSessionStreams()
            return [:]
        }
        var lagging: [String: StreamPosition] = [:]
        var rolledBack: [(String, String, Int64, Int64)] = []
        // Streams not read yet (a cluster shard still away leaves its streams out): read again.
        var unread = Set(known.keys)
        for attempt in 0..<5 where !unread.isEmpty {
            if attempt > 0 { try? await Task.sleep(for: .milliseconds(100 << attempt)) }
            guard let positions = try? await self.tops(of: Array(unread)) else { continue }
            for (stream, p) in positions {
                unread.remove(stream)
                guard let (offset, epoch) = known[stream] else { continue }
                if let offset, let epoch {
                    if epoch == p.epoch && p.top < offset {
                        rolledBack.append((stream, epoch, offset, p.top))
                    } else if epoch != p.epoch || p.top > offset {
                        // A new epoch, or none (Redis lost the stream: the read starts one).
                        lagging[stream] = p
                    }
                } else if p.top > 0 {
                    lagging[stream] = p
                }
            }
        }
        if !unread.isEmpty {
            self.logger.warning(
                "could not read the position of \(unread.count) live streams after an outage; the live check reads them when they carry traffic")
        }
        // A stream that moved on may have moved on from another history: the message this node
        // received last must still be the one kept there.
        for (stream, position) in lagging {
            guard let (received, tag) = receivedTags[stream], !tag.isEmpty, let epoch = known[stream]?.1, epoch == position.epoch,
                position.top >= received, await self.wasRewritten(stream, at: received, tag: tag, epoch: epoch)
            else { continue }
            rolledBack.append((stream, epoch, received, position.top))
            lagging[stream] = nil
        }
        for (stream, epoch, seen, now) in rolledBack { await self.rolledBack(stream, epoch: epoch, seen: seen, now: now) }
        let delivery = self.state.withLockedValue { $0.delivery }
        for (stream, position) in lagging { delivery?.catchUp(stream, to: position) }
        if !lagging.isEmpty { self.logger.info("caught up \(lagging.count) live streams after an outage") }
        await self.catchUpSessionStreams()
        return lagging
    }

    var liveCheckWindow: Duration { .milliseconds(Int((self.configuration.liveCheckWindow * 1000).rounded())) }

    /// Streams checked per round of `checkLiveSubscriptions`; a node with more takes turns.
    static let liveCheckBatch = 512

    /// Looks for live subscriptions that lost messages while their connection stayed up (a dead
    /// channel, a slot that moved), and for rollbacks. Only streams with traffic in the last
    /// `liveCheckWindow` (or subscribed in the last three rounds, at least 15 s) are read, so idle streams cost
    /// nothing here: one was idle, or its subscription died with its connection, which the
    /// reconnect catches up (`catchUpLiveStreams`).
    ///
    /// - A stream this node published to, whose own message never came back live within two
    ///   rounds, has a dead subscription: found without reading anything.
    /// - A stream behind its top twice in a row (not a message in flight) lost messages.
    /// Those are subscribed again and caught up. The reads are one script on a single server, and
    /// one pipelined command per stream on a cluster (their keys live in different slots).
    func checkLiveSubscriptions() async {
        await self.checkSessionChannel()
        let now = ContinuousClock.now
        let (known, unheard) = self.state.withLockedValue { s -> ([(String, Int64, String?, Int64?)], [String]) in
            var unheard: [String] = []
            var active: [(String, Int64, String?, Int64?)] = []
            for (stream, l) in s.live {
                guard let until = l.activeUntil, now < until else { continue }
                // No baseline yet (its position could not be read when it was subscribed): this
                // round reads one.
                guard let offset = l.lastOffset else {
                    active.append((stream, -1, nil, nil))
                    continue
                }
                if let published = l.published, published > (l.received ?? offset) {
                    // Its own publish has not come back: twice in a row means the channel is dead.
                    if l.unheard == published { unheard.append(stream) } else { s.live[stream]?.unheard = published }
                }
                active.append((stream, offset, l.lastEpoch, l.suspect))
            }
            active.sort { $0.0 < $1.0 }
            guard active.count > Self.liveCheckBatch else { return (active, unheard) }
            let start = s.liveCheckCursor % active.count
            s.liveCheckCursor = start + Self.liveCheckBatch
            return (Array((active + active)[start..<(start + Self.liveCheckBatch)]), unheard)
        }
        var dead: [String: StreamPosition] = [:]
        var rolledBack: [(String, String, Int64, Int64)] = []
        if !known.isEmpty, self.isAvailable, let positions = try? await self.tops(of: known.map(\.0)) {
            self.state.withLockedValue { s in
                for (stream, offset, epoch, suspect) in known {
                    guard let p = positions[stream], s.live[stream] != nil else { continue }
                    if offset < 0 {
                        if s.live[stream]?.lastOffset == nil, !p.epoch.isEmpty {
                            s.live[stream]?.lastOffset = p.top
                            s.live[stream]?.lastEpoch = p.epoch
                        }
                        continue
                    }
                    if let epoch, epoch == p.epoch, p.top < offset {
                        rolledBack.append((stream, epoch, offset, p.top))
                        continue
                    }
                    let behind = p.top > offset || (epoch != nil && !p.epoch.isEmpty && epoch != p.epoch)
                    if behind, let suspect, offset < suspect {
                        dead[stream] = p
                        s.live[stream]?.suspect = nil
                    } else {
                        s.live[stream]?.suspect = behind ? p.top : nil
                    }
                }
            }
        }
        for (stream, epoch, seen, top) in rolledBack { await self.rolledBack(stream, epoch: epoch, seen: seen, now: top) }
        for stream in unheard where dead[stream] == nil {
            if let p = try? await self.position(of: stream) { dead[stream] = p }
        }
        guard !dead.isEmpty else { return }
        self.logger.warning("live subscriptions behind their stream: \(dead.keys.sorted()); resubscribing and catching up")
        for stream in dead.keys { await self.resubscribe(stream) }
        let delivery = self.state.withLockedValue { $0.delivery }
        for (stream, position) in dead { delivery?.catchUp(stream, to: position) }
    }

    /// Epoch and top of many streams without creating any: one script on a single server; on a
    /// cluster one HMGET per stream, pipelined to the master of each stream's slot. On a cluster
    /// a stream whose shard is away is left out (the others are still checked).
    func tops(of streams: [String]) async throws -> [String: StreamPosition] {
        guard self.configuration.clusterSeeds == nil else {
            return await withTaskGroup(of: (String, StreamPosition?).self) { group in
                for stream in Set(streams) {
                    group.addTask {
                        let reply = try? await self.send(RESPCommand("HMGET", .string(self.keys(stream).meta), "epoch", "top"))
                        guard let a = reply?.array, a.count == 2 else { return (stream, nil) }
                        return (stream, StreamPosition(epoch: a[0].string ?? "", top: a[1].isNull ? 0 : Self.offset(a[1]) ?? 0))
                    }
                }
                var out: [String: StreamPosition] = [:]
                for await (stream, position) in group { out[stream] = position }
                return out
            }
        }
        // 512 keys per script: Redis runs each at once, and nothing else while it does.
        var out: [String: StreamPosition] = [:]
        for start in stride(from: 0, to: streams.count, by: 512) {
            let batch = Array(streams[start..<min(start + 512, streams.count)])
            let reply = try await self.run(RedisScripts.tops, keys: batch.map { self.keys($0).meta }, args: [])
            let values = reply.array ?? []
            for (i, stream) in batch.enumerated() where 2 * i + 1 < values.count {
                guard let top = Self.offset(values[2 * i + 1]) else { continue }
                out[stream] = StreamPosition(epoch: values[2 * i].string ?? "", top: top)
            }
        }
        return out
    }

    /// Replaces the live subscription of `stream` with a new one (same local references).
    func resubscribe(_ stream: String) async {
        let (task, generation) = self.state.withLockedValue { s -> (Task<RESPSubscription, any Error>?, UInt64) in
            guard var l = s.live[stream] else { return (nil, 0) }
            let generation = s.nextGeneration
            s.nextGeneration += 1
            let task = self.channelTask(stream, generation: generation, replacing: l.channel)
            l = LiveStream(
                refs: l.refs, generation: generation, channel: .subscribing(task), lastOffset: l.lastOffset, lastEpoch: l.lastEpoch,
                received: l.received, receivedTag: l.receivedTag, activeUntil: l.activeUntil)
            s.live[stream] = l
            return (task, generation)
        }
        if let task, let subscription = try? await task.value {
            self.state.withLockedValue { s in
                if s.live[stream]?.generation == generation { s.live[stream]?.channel = .subscribed(subscription) }
            }
        }
    }
}
