import Foundation
import NIOCore
import RESP
import Switchboard
import SwitchboardWire

/// Streams (the `StreamStore` role). A stream is `sb:{<stream>}:meta` (epoch, top, tags), `:log`
/// (the capped history), `:acks` and `:holds` (what sessions consumed and still need); the hash
/// tag keeps them, and the stream's sharded channel, in one slot of a Redis Cluster.
extension RedisEngine {
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
        return StreamKeys(
            meta: base + ":meta", log: base + ":log", acks: base + ":acks", holds: base + ":holds",
            presence: base + ":presence", channel: base, base: base)
    }

    var ms: (Double) -> Int { { Int(($0 * 1000).rounded()) } }

    /// What `stream`'s rule keeps: its history size, its age in ms, and whether acks trim it.
    struct Limits {
        let size: Int, ageMs: Int, trimsByAcks: Bool
    }

    func limits(_ stream: String) -> Limits {
        let storage = self.storage.withLockedValue { $0 }.storage(of: stream)
        let c = self.configuration
        return Limits(
            size: max(0, storage.historySize ?? c.historySize), ageMs: max(1, self.ms(min(storage.historyAge ?? c.historyAge, 1e12))),
            trimsByAcks: storage.trimsByAcks(stream))
    }

    public func useStorage(_ policy: StreamStoragePolicy) {
        self.storage.withLockedValue { $0 = policy }
    }
    var streamTTLms: Int { self.configuration.streamIdleTTL > 0 ? max(1, self.ms(self.configuration.streamIdleTTL)) : 0 }

    // MARK: streams

    public func publish(_ stream: String, body: ByteBuffer, idempotencyKey: String?) async throws -> PublishResult {
        let k = self.keys(stream)
        var keys = k.scriptKeys
        if let idempotencyKey { keys.append(k.idempotency(idempotencyKey)) }
        let c = self.configuration
        let limits = self.limits(stream)
        let reply = try await self.run(
            RedisScripts.publish, keys: keys,
            args: [
                .bytes(body), .string(Self.newEpoch()), .int(limits.size), .int(limits.ageMs),
                // Session streams share a pattern subscription on a single Redis: classic PUBLISH.
                .int(max(1, self.ms(c.idempotencyTTL))), .string(k.channel),
                .int(self.backend.sharded && !self.isSharedSessionStream(stream) ? 1 : 0),
                .int(c.approximateTrimming ? 1 : 0), .int(self.streamTTLms), .string(StreamMessage.newTag()),
            ])
        guard let a = reply.array, a.count == 4, let offset = Self.offset(a[0]), let epoch = a[1].string, let dup = a[2].int else {
            throw EngineError.unavailable("unexpected publish reply: \(reply)")
        }
        self.published(stream, offset: offset, epoch: epoch)
        return PublishResult(offset: offset, epoch: epoch, duplicate: dup == 1)
    }

    public func read(_ stream: String, after offset: Int64, epoch: String?, tag: String?, limit: Int) async throws -> HistoryRead {
        let k = self.keys(stream)
        let after = max(0, offset)
        let limits = self.limits(stream)
        let reply = try await self.run(
            RedisScripts.read, keys: k.scriptKeys,
            args: [
                .int(Int(after)), .string(Self.newEpoch()), .int(max(0, limit)), .int(limits.ageMs),
                .string(epoch ?? ""), .int(self.streamTTLms), .int(limits.size), .string(tag ?? ""),
            ])
        guard let a = reply.array, a.count >= 3, (a.count - 3) % 4 == 0, let e = a[0].string, let top = Self.offset(a[1]), let gone = a[2].int else {
            throw EngineError.unavailable("unexpected read reply: \(reply)")
        }
        let position = StreamPosition(epoch: e, top: top)
        if gone == 1 { return .gone(position) }
        var messages: [StreamMessage] = []
        messages.reserveCapacity((a.count - 3) / 4)
        var i = 3
        while i + 3 < a.count {
            guard let o = Self.offset(a[i]), o > after, o <= top, let tag = a[i + 1].string, let previous = a[i + 2].string,
                let body = a[i + 3].bytes
            else {
                throw EngineError.unavailable("unexpected read entry")
            }
            messages.append(StreamMessage(stream: stream, offset: o, epoch: e, tag: tag, previousTag: previous, body: body))
            i += 4
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

    // MARK: consumers

    public func ack(session: String, stream: String, offset: Int64) async throws {
        let sessionKey = [self.sessionKey(session)]
        let cursorArgs: [RESPArgument] = [.string("c:" + stream), .int(Int(offset))]
        guard self.limits(stream).trimsByAcks else {
            _ = try await self.run(RedisScripts.sessionCursor, keys: sessionKey, args: cursorArgs)
            return
        }
        let k = self.keys(stream)
        // Both sent together: one round trip (two on a cluster, in parallel: the keys live in
        // different slots).
        _ = try await self.runBoth(
            ScriptCall(
                script: RedisScripts.ack, keys: k.scriptKeys,
                args: [
                    .string(session), .int(Int(offset)), .int(self.streamTTLms), .string(Self.newEpoch()),
                ]),
            ScriptCall(script: RedisScripts.sessionCursor, keys: sessionKey, args: cursorArgs)
        )
    }

    public func release(session: String, stream: String) async throws {
        let k = self.keys(stream)
        async let a = self.send(RESPCommand("ZREM", .string(k.acks), .string(session)))
        async let b = self.send(RESPCommand("ZREM", .string(k.holds), .string(session)))
        async let c = self.send(RESPCommand("HDEL", .string(self.sessionKey(session)), .string("c:" + stream)))
        _ = try await (a, b, c)
    }
}
