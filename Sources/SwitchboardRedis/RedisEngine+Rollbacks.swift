import RESP
import Switchboard

/// Rollbacks. Redis replication is asynchronous: a master can acknowledge writes, die before
/// its replica got them, and the promoted replica hands out the same offsets again (a single
/// Redis with `appendfsync everysec` can do the same after a crash). Offsets only ever grow
/// within an epoch, so a node that sees a stream's offsets go backwards in the same epoch, live
/// (a message at or below one it already received) or in a position it reads (a top below one it
/// saw), knows the history was rolled back. It starts a new epoch for the stream
/// (`RedisScripts.newEpoch`), and its subscribers are told (SUB410), like everyone's after it.
/// Clients that resume name the tag of their last message, so a rollback no node saw is caught
/// by the read (`RedisScripts.read`).
extension RedisEngine {
    /// Whether the message kept at `offset` of `stream` (in `epoch`) is not the one tagged
    /// `tag` (nor followed by one naming it): the history there was written again.
    func wasRewritten(_ stream: String, at offset: Int64, tag: String, epoch: String) async -> Bool {
        guard case .gone(let p)? = try? await self.read(stream, after: offset, epoch: epoch, tag: tag, limit: 0) else { return false }
        // Gone for another reason (trimmed, a new epoch) is not a rewrite of this epoch.
        guard p.epoch == epoch, offset <= p.top else { return false }
        if case .messages? = try? await self.read(stream, after: offset, epoch: epoch, tag: nil, limit: 0) { return true }
        return false
    }

    /// `stream`'s history in `epoch` was rolled back: this node had seen offset `seen`, and the
    /// stream is now at `now` in the same epoch. A new epoch starts (unless another node started
    /// one already), and local subscribers catch up to it: they get SUB410.
    func rolledBack(_ stream: String, epoch: String, seen: Int64, now: Int64) async {
        self.logger.error(
            "stream \(stream) was rolled back in epoch \(epoch): offset \(seen) was handed out, the stream is at \(now); starting a new epoch")
        var reply: RESPValue?
        for attempt in 0..<20 where reply == nil {
            // Redis may be failing over right now: keep trying (live messages wait meanwhile).
            if attempt > 0 { try? await Task.sleep(for: .milliseconds(250)) }
            reply = try? await self.run(RedisScripts.newEpoch, keys: [self.keys(stream).meta], args: [.string(epoch), .string(Self.newEpoch())])
        }
        guard let a = reply?.array, a.count == 2, let e = a[0].string, let top = Self.offset(a[1]) else {
            // No new epoch (Redis unreachable all along): live delivery resumes, and the
            // subscribers read from the log, whose reads check their last message's tag.
            self.state.withLockedValue { s in
                s.live[stream]?.rollingBack = false
                s.live[stream]?.received = nil
                s.live[stream]?.receivedTag = ""
            }
            if let position = try? await self.position(of: stream) { self.state.withLockedValue { $0.delivery }?.catchUp(stream, to: position) }
            return
        }
        let position = StreamPosition(epoch: e, top: top)
        let delivery = self.state.withLockedValue { s -> (any EngineDelivery)? in
            guard var l = s.live[stream] else { return nil }
            l.lastOffset = top
            l.lastEpoch = e
            l.received = nil
            l.receivedTag = ""
            l.rollingBack = false
            l.published = nil
            l.suspect = nil
            s.live[stream] = l
            return s.delivery
        }
        self.rollbacks.withLockedValue { $0 += 1 }
        delivery?.catchUp(stream, to: position)
    }
}
