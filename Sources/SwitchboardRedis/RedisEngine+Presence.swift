import Foundation
import NIOConcurrencyHelpers
import NIOCore
import RESP
import Switchboard
import SwitchboardWire

/// Presence (the `PresenceStore` role): a stream's members are the hash `sb:{<stream>}:presence`,
/// each entry expiring unless its node refreshes it; each node indexes the members it joined
/// (`sb:node:{<id>}:presence`), so a survivor can make a dead node's members leave.
extension RedisEngine {
    private var presenceTTLms: Int { max(1, Int((self.configuration.presenceTTL * 1000).rounded())) }

    @discardableResult
    public func presenceJoin(_ stream: String, member: PresenceMember) async throws -> Bool {
        let encoded = try Self.encode(member)
        async let added = self.run(
            RedisScripts.presenceJoin, keys: [self.keys(stream).presence],
            args: [
                .int(self.presenceTTLms), .string(encoded),
            ])
        async let indexed = self.send(RESPCommand("SADD", .string(self.nodePresenceKey(self.nodeID)), .string(stream + "\t" + encoded)))
        let (reply, _) = try await (added, indexed)
        // Refreshed by the heartbeat from now on (not before: a refresh adding it first would
        // make this join look like nothing new, and lose its event).
        self.state.withLockedValue { _ = $0.presence[stream, default: []].insert(encoded) }
        return (reply.int ?? 0) > 0
    }

    @discardableResult
    public func presenceLeave(_ stream: String, member: PresenceMember) async throws -> Bool {
        let encoded = try Self.encode(member)
        self.state.withLockedValue { s in
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
                let stream = String(entry[..<tab])
                let encoded = String(entry[entry.index(after: tab)...])
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
        let snapshot = self.state.withLockedValue { $0.presence }
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
                        guard
                            let added = try? await self.run(
                                RedisScripts.presenceJoin, keys: [self.keys(stream).presence], args: [.int(ttl), .string(encoded)]),
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
        let snapshot = self.state.withLockedValue { $0.presence }
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
