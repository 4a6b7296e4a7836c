import Foundation
import NIOCore
import RESP
import Switchboard
import SwitchboardWire

/// Sessions and presence. A session is one hash `sb:session:<id>`: `u` (user), `n` (live
/// connections), `o` (node of the live connection), `c:<stream>` (acked offset). Without
/// connections it expires after `sessionTTL`. Each node also keeps the set of sessions it
/// holds (`sb:node:{<id>}:sessions`), so a survivor can release a dead node's sessions.
extension RedisEngine {
    func sessionKey(_ id: String) -> String { "\(self.configuration.keyPrefix):session:\(id)" }

    private var sessionTTLms: Int { max(1, Int((self.configuration.sessionTTL * 1000).rounded())) }

    public func saveSession(_ session: SessionRecord) async throws {
        var args: [RESPArgument] = [.int(self.sessionTTLms)]
        if let user = session.user { args += [.int(1), .string(user)] } else { args += [.int(0), .string("")] }
        for (stream, cursor) in session.cursors { args += [.string(stream), .int(Int(cursor))] }
        _ = try await self.run(RedisScripts.saveSession, keys: [self.sessionKey(session.id)], args: args)
    }

    public func loadSession(_ id: String) async throws -> SessionRecord? {
        let fields: [String: ByteBuffer]
        do {
            fields = try await self.backend.hgetall(self.sessionKey(id))
        } catch {
            throw Self.map(error)
        }
        if fields.isEmpty { return nil }
        var record = SessionRecord(id: id, user: fields["u"].map { String(buffer: $0) }, node: fields["o"].map { String(buffer: $0) })
        for (name, value) in fields where name.hasPrefix("c:") {
            if let cursor = Int64(String(buffer: value)) { record.cursors[String(name.dropFirst(2))] = cursor }
        }
        return record
    }

    public func touchSession(_ id: String, user: String?, connected: Bool) async throws {
        let node = self.nodeID
        // Held here from its first connection to its last: the index changes only then.
        let edge = self.state.withLock { s -> Bool in
            var local = s.sessions[id] ?? LocalSession(user: user, connections: 0)
            local.connections += connected ? 1 : -1
            s.sessions[id] = local.connections > 0 ? local : nil
            return connected ? local.connections == 1 : local.connections <= 0
        }
        let touch = ScriptCall(script: RedisScripts.touchSession, keys: [self.sessionKey(id)], args: [
            .int(connected ? 1 : -1), .int(self.sessionTTLms), .string(node),
        ])
        let count: RESPValue
        if edge {
            (count, _) = try await self.runBoth(
                touch, ScriptCall(script: RedisScripts.nodeSessionIndex, keys: [self.nodeSessionsKey(node)], args: [.int(connected ? 1 : 0), .string(id)])
            )
        } else {
            count = try await self.run(touch.script, keys: touch.keys, args: touch.args)
        }
        if !connected, count.int == 0 { await self.endHolds(ofSession: id) }
    }

    /// The session's last connection closed: it holds the history of each stream it acked for
    /// its TTL, no longer (an expired session must not keep others' history from being trimmed).
    func endHolds(ofSession id: String) async {
        guard let fields = try? await self.backend.hgetall(self.sessionKey(id)) else { return }
        // Only streams trimmed by acks have holds (not /broadcast).
        let streams = fields.keys.filter { $0.hasPrefix("c:") }.map { String($0.dropFirst(2)) }.filter(BuiltinStream.isTrimmedByAcks)
        await withTaskGroup(of: Void.self) { group in
            for stream in streams {
                group.addTask {
                    _ = try? await self.run(RedisScripts.endHold, keys: [self.keys(stream).holds], args: [.string(id), .int(self.sessionTTLms)])
                }
            }
        }
    }

    /// After Redis came back (perhaps without its data): every session with a live connection
    /// here is registered again, with this node as its owner.
    func restoreSessions() async {
        let (node, sessions) = self.state.withLock { ($0.node, $0.sessions) }
        guard !sessions.isEmpty else { return }
        await withTaskGroup(of: Void.self) { group in
            for (id, local) in sessions {
                let user = local.user
                group.addTask {
                    _ = try? await self.run(RedisScripts.restoreSession, keys: [self.sessionKey(id)], args: [
                        .string(node), .int(user == nil ? 0 : 1), .string(user ?? ""),
                    ])
                }
            }
            group.addTask {
                var add = RESPCommand("SADD", .string(self.nodeSessionsKey(node)))
                add.append(contentsOf: sessions.keys.map { .string($0) })
                _ = try? await self.send(add)
            }
        }
    }

    public func ack(session: String, stream: String, offset: Int64) async throws {
        let sessionKey = [self.sessionKey(session)]
        let cursorArgs: [RESPArgument] = [.string("c:" + stream), .int(Int(offset))]
        guard BuiltinStream.isTrimmedByAcks(stream) else {
            _ = try await self.run(RedisScripts.sessionCursor, keys: sessionKey, args: cursorArgs)
            return
        }
        let k = self.keys(stream)
        let streamTTL = self.configuration.streamIdleTTL > 0 ? max(1, Int((self.configuration.streamIdleTTL * 1000).rounded())) : 0
        // Both sent together: one round trip (two on a cluster, in parallel: the keys live in
        // different slots).
        _ = try await self.runBoth(
            ScriptCall(script: RedisScripts.ack, keys: k.scriptKeys, args: [
                .string(session), .int(Int(offset)), .int(streamTTL), .string(Self.newEpoch()),
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

    // MARK: presence

    private var presenceTTLms: Int { max(1, Int((self.configuration.presenceTTL * 1000).rounded())) }

    @discardableResult
    public func presenceJoin(_ stream: String, member: PresenceMember) async throws -> Bool {
        let encoded = try Self.encode(member)
        async let added = self.run(RedisScripts.presenceJoin, keys: [self.keys(stream).presence], args: [
            .int(self.presenceTTLms), .string(encoded),
        ])
        async let indexed = self.send(RESPCommand("SADD", .string(self.nodePresenceKey(self.nodeID)), .string(stream + "\t" + encoded)))
        let (reply, _) = try await (added, indexed)
        // Refreshed by the heartbeat from now on (not before: a refresh adding it first would
        // make this join look like nothing new, and lose its event).
        self.state.withLock { $0.presence[stream, default: []].insert(encoded) }
        return (reply.int ?? 0) > 0
    }

    @discardableResult
    public func presenceLeave(_ stream: String, member: PresenceMember) async throws -> Bool {
        let encoded = try Self.encode(member)
        self.state.withLock { s in
            s.presence[stream]?.remove(encoded)
            if s.presence[stream]?.isEmpty ?? false { s.presence[stream] = nil }
        }
        async let removed = self.send(RESPCommand("HDEL", .string(self.keys(stream).presence), .string(encoded)))
        async let indexed = self.send(RESPCommand("SREM", .string(self.nodePresenceKey(self.nodeID)), .string(stream + "\t" + encoded)))
        let (reply, _) = try await (removed, indexed)
        return (reply.int ?? 0) > 0
    }

    /// A dead node's members leave every stream they were in, with a leave event each.
    func removePresence(ofDeadNode id: String) async {
        guard let entries = try? await self.send(RESPCommand("SMEMBERS", .string(self.nodePresenceKey(id)))).array else { return }
        let decoder = JSONDecoder()
        await withTaskGroup(of: Void.self) { group in
            for entry in entries.compactMap(\.string) {
                guard let tab = entry.firstIndex(of: "\t") else { continue }
                let stream = String(entry[..<tab]), encoded = String(entry[entry.index(after: tab)...])
                group.addTask {
                    guard let removed = try? await self.send(RESPCommand("HDEL", .string(self.keys(stream).presence), .string(encoded))),
                        removed.int == 1, let member = try? decoder.decode(PresenceMember.self, from: Data(encoded.utf8))
                    else { return }
                    _ = try? await self.publish(PresenceEvents.stream(for: stream), body: PresenceEvents.body(.leave, member), idempotencyKey: nil)
                }
            }
        }
        _ = try? await self.send(RESPCommand("DEL", .string(self.nodePresenceKey(id))))
    }

    public func takeToken(_ key: String, rate: Double, burst: Double) async throws -> Bool {
        // The hash tag keeps a bucket in one slot of a Redis Cluster.
        let reply = try await self.run(RedisScripts.takeToken, keys: ["\(self.configuration.keyPrefix):rate:{\(key)}"], args: [.double(rate), .double(burst)])
        return reply.int == 1
    }

    public func presence(of stream: String) async throws -> [PresenceMember] {
        let reply = try await self.run(RedisScripts.presenceList, keys: [self.keys(stream).presence], args: [])
        let decoder = JSONDecoder()
        return (reply.array ?? []).compactMap { v in
            v.bytes.flatMap { try? decoder.decode(PresenceMember.self, from: Data($0.readableBytesView)) }
        }
    }

    /// After this node's entry was lost (it was wrongly declared dead, or Redis lost its data):
    /// every member joined through it is added again, to its stream and to this node's index,
    /// and each one that was missing (a survivor removed it, with a leave) is announced with a join.
    func restorePresence() async {
        let snapshot = self.state.withLock { $0.presence }
        guard !snapshot.isEmpty else { return }
        let ttl = self.presenceTTLms
        let index = self.nodePresenceKey(self.nodeID)
        let decoder = JSONDecoder()
        var restored = 0
        await withTaskGroup(of: Bool.self) { group in
            for (stream, members) in snapshot {
                for encoded in members {
                    group.addTask {
                        _ = try? await self.send(RESPCommand("SADD", .string(index), .string(stream + "\t" + encoded)))
                        guard let added = try? await self.run(RedisScripts.presenceJoin, keys: [self.keys(stream).presence], args: [.int(ttl), .string(encoded)]),
                            added.int == 1, let member = try? decoder.decode(PresenceMember.self, from: Data(encoded.utf8))
                        else { return false }
                        _ = try? await self.publish(PresenceEvents.stream(for: stream), body: PresenceEvents.body(.join, member), idempotencyKey: nil)
                        return true
                    }
                }
            }
            for await announced in group where announced { restored += 1 }
        }
        if restored > 0 { self.logger.notice("restored \(restored) presence members after this node's entry was lost") }
    }

    /// Re-arms the expiry of every member joined through this engine: members of a node that
    /// stops doing this (it died) expire after `presenceTTL`.
    func refreshPresence() async {
        let snapshot = self.state.withLock { $0.presence }
        let ttl = self.presenceTTLms
        await withTaskGroup(of: Void.self) { group in
            for (stream, members) in snapshot where !members.isEmpty {
                let key = self.keys(stream).presence
                group.addTask {
                    _ = try? await self.run(RedisScripts.presenceJoin, keys: [key], args: [.int(ttl)] + members.map { .string($0) })
                }
            }
        }
    }

    static func encode(_ member: PresenceMember) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return String(decoding: try encoder.encode(member), as: UTF8.self)
    }
}
