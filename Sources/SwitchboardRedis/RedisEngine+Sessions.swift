import Foundation
import NIOConcurrencyHelpers
import NIOCore
import RESP
import Switchboard
import SwitchboardWire

/// Sessions. A session is one hash `sb:session:<id>`: `u` (user), `n` (live
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
        let edge = self.state.withLockedValue { s -> Bool in
            var local = s.sessions[id] ?? LocalSession(user: user, connections: 0)
            local.connections += connected ? 1 : -1
            s.sessions[id] = local.connections > 0 ? local : nil
            return connected ? local.connections == 1 : local.connections <= 0
        }
        let touch = ScriptCall(
            script: RedisScripts.touchSession, keys: [self.sessionKey(id)],
            args: [
                .int(connected ? 1 : -1), .int(self.sessionTTLms), .string(node),
            ])
        let count: RESPValue
        if edge {
            (count, _) = try await self.runBoth(
                touch,
                ScriptCall(script: RedisScripts.nodeSessionIndex, keys: [self.nodeSessionsKey(node)], args: [.int(connected ? 1 : 0), .string(id)])
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
        // Only streams trimmed by acks have holds (not /broadcast, not a `log` stream).
        let streams = fields.keys.filter { $0.hasPrefix("c:") }.map { String($0.dropFirst(2)) }.filter { self.limits($0).trimsByAcks }
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
        let (node, sessions) = self.state.withLockedValue { ($0.node, $0.sessions) }
        guard !sessions.isEmpty else { return }
        await withTaskGroup(of: Void.self) { group in
            for (id, local) in sessions {
                let user = local.user
                group.addTask {
                    _ = try? await self.run(
                        RedisScripts.restoreSession, keys: [self.sessionKey(id)],
                        args: [
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
}
