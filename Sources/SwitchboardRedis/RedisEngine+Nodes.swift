import Foundation
import NIOConcurrencyHelpers
import NIOCore
import RESP
import Switchboard

/// The node registry and control messages.
///
/// - `sb:nodes`: sorted set node id → last heartbeat (ms, Redis `TIME`).
/// - `sb:node:{<id>}`: hash `address`, `started`, `connections`; expires after three missed
///   heartbeats.
/// - `sb:node:{<id>}:sessions`: the sessions whose live connection is on that node.
/// - `sb:node:{<id>}:presence`: the presence members joined through that node.
/// - channel `sb:node:{<id>}:control`: control messages for that node (JSON).
///
/// Every heartbeat also looks for nodes silent for three heartbeats. One survivor (holding a
/// short lock) releases each dead node's sessions, so they start to expire and can be resumed
/// on any node, removes its presence members (publishing their leave events) and its entry.
extension RedisEngine {
    var nodesKey: String { "\(self.configuration.keyPrefix):nodes" }
    func nodeKey(_ id: String) -> String { "\(self.configuration.keyPrefix):node:{\(id)}" }
    func nodeSessionsKey(_ id: String) -> String { self.nodeKey(id) + ":sessions" }
    /// `<stream>\t<member>` of every presence member joined through that node.
    func nodePresenceKey(_ id: String) -> String { self.nodeKey(id) + ":presence" }
    func controlChannel(_ id: String) -> String { self.nodeKey(id) + ":control" }

    private var heartbeatMs: Int { max(10, Int((self.configuration.heartbeatInterval * 1000).rounded())) }
    /// A node silent this long is dead.
    private var deadAfterMs: Int { 3 * self.heartbeatMs }

    /// Joins the cluster: the first heartbeat, and the control channel.
    func register() async {
        self.subscribeControl()
        self.subscribeSessionStreams()
        await self.heartbeat()
    }

    /// One heartbeat: this node's entry, its presence members, dead nodes' cleanup. Returns once
    /// a beat that started after the call has finished: a call during a beat waits for the next
    /// one (calls during the same beat share it), so `start()` returns registered.
    func heartbeat() async {
        let beatHere: Bool = await withCheckedContinuation { waiter in
            let now = self.state.withLockedValue { s -> Bool in
                switch s.heartbeat {
                case .idle:
                    s.heartbeat = .beating(next: [])
                    return true
                case .beating(let next):
                    s.heartbeat = .beating(next: next + [waiter])
                    return false
                }
            }
            if now { waiter.resume(returning: true) }
        }
        guard beatHere else { return }
        var served: [CheckedContinuation<Bool, Never>] = []
        while true {
            await self.beatOnce()
            for waiter in served { waiter.resume(returning: false) }
            served = self.state.withLockedValue { s in
                guard case .beating(let next) = s.heartbeat, !next.isEmpty else {
                    s.heartbeat = .idle
                    return []
                }
                s.heartbeat = .beating(next: [])
                return next
            }
            if served.isEmpty { return }
        }
    }

    private func beatOnce() async {
        let pulse = self.state.withLockedValue { s -> (node: String, address: String?, started: Double, connections: Int)? in
            guard !s.node.isEmpty, s.lifecycle != .shutDown else { return nil }
            return (s.node, s.address, s.startedAt, s.sessions.count)
        }
        guard let pulse else { return }
        await self.beat(pulse.node, address: pulse.address, started: pulse.started, connections: pulse.connections)
    }

    private func beat(_ node: String, address: String?, started: Double, connections: Int) async {
        let deadAfter = Duration.milliseconds(self.deadAfterMs)
        guard self.backend.isConnected else { return }
        self.subscribeControl()
        self.subscribeSessionStreams()
        let start = ContinuousClock.now
        do {
            async let beat = self.run(
                RedisScripts.nodeHeartbeat, keys: [self.nodesKey],
                args: [
                    .string(node), .int(self.deadAfterMs),
                ])
            async let info = self.run(
                RedisScripts.nodeInfo, keys: [self.nodeKey(node)],
                args: [
                    .string(address ?? ""), .int(Int(started * 1000)), .int(connections), .int(self.deadAfterMs),
                ])
            let (beatReply, infoReply) = try await (beat, info)
            let roundTrip = ContinuousClock.now - start
            let interval = Duration.milliseconds(self.heartbeatMs)
            // Others' silence counts only if this node heard Redis all that time itself. A beat
            // that took longer than an interval (retried through a failover) was a gap in its
            // own hearing: it starts counting again.
            let judge = self.state.withLockedValue { s -> Bool in
                s.lastRoundTrip = roundTrip
                guard let since = s.beatingSince, roundTrip <= interval else {
                    s.beatingSince = .now
                    return false
                }
                return ContinuousClock.now - since >= deadAfter
            }
            // This node's entry was gone: Redis lost it, or others declared this node dead and
            // released its sessions and members. Register them again, and announce the members.
            if infoReply.int == 0 {
                await self.restoreSessions()
                await self.restorePresence()
            }
            let dead = (beatReply.array ?? []).compactMap(\.string).filter { $0 != node }
            if judge {
                for id in dead { await self.cleanUp(deadNode: id) }
            } else if !dead.isEmpty {
                self.logger.debug("not judging \(dead.count) silent nodes until this node has been connected for \(deadAfter)")
            }
        } catch {
            self.state.withLockedValue { $0.beatingSince = nil }
            self.logger.debug("heartbeat failed: \(error)")
        }
        // Members expire after `presenceTTL` without a refresh: three refreshes per TTL suffice,
        // whatever the heartbeat interval (each one is a command per stream with members).
        let every = Duration.milliseconds(Int((self.configuration.presenceTTL * 1000 / 3).rounded()))
        let refresh = self.state.withLockedValue { s -> Bool in
            guard s.lastPresenceRefresh.map({ ContinuousClock.now - $0 >= every }) ?? true else { return false }
            s.lastPresenceRefresh = .now
            return true
        }
        if refresh { await self.refreshPresence() }
    }

    /// Releases the sessions of a dead node, unless another survivor is already doing it.
    private func cleanUp(deadNode id: String) async {
        do {
            let lock = try await self.send(
                RESPCommand(
                    "SET", .string(self.nodeKey(id) + ":cleanup"), .string(self.nodeID),
                    "NX", "PX", .int(30_000)))
            guard lock.string == "OK" else { return }
            let sessions = (try await self.send(RESPCommand("SMEMBERS", .string(self.nodeSessionsKey(id)))).array ?? []).compactMap(\.string)
            await withTaskGroup(of: Void.self) { group in
                for session in sessions {
                    group.addTask {
                        let count = try? await self.run(
                            RedisScripts.touchSession, keys: [self.sessionKey(session)],
                            args: [
                                .int(-1), .int(max(1, Int((self.configuration.sessionTTL * 1000).rounded()))), .string(id),
                            ])
                        if count?.int == 0 { await self.endHolds(ofSession: session) }
                    }
                }
            }
            await self.removePresence(ofDeadNode: id)
            _ = try await self.send(RESPCommand("DEL", .string(self.nodeSessionsKey(id)), .string(self.nodeKey(id))))
            _ = try await self.send(RESPCommand("ZREM", .string(self.nodesKey), .string(id)))
            self.logger.notice("node \(id) is gone: released its \(sessions.count) sessions")
        } catch {
            self.logger.debug("cleanup of node \(id) failed: \(error)")
        }
    }

    /// Leaves the cluster (on drain): the entry goes at once, sessions were closed by the drain.
    func deregister() async {
        let node = self.nodeID
        guard !node.isEmpty, self.backend.isConnected else { return }
        _ = try? await self.send(RESPCommand("ZREM", .string(self.nodesKey), .string(node)))
        _ = try? await self.send(
            RESPCommand("DEL", .string(self.nodeKey(node)), .string(self.nodeSessionsKey(node)), .string(self.nodePresenceKey(node))))
    }

    public func nodes() async throws -> [NodeInfo] {
        let reply = try await self.run(RedisScripts.liveNodes, keys: [self.nodesKey], args: [.int(self.deadAfterMs)])
        var ids: [(String, Double)] = []
        var items = (reply.array ?? [])[...]
        while let id = items.popFirst()?.string, let seen = items.popFirst()?.double { ids.append((id, seen / 1000)) }
        return try await withThrowingTaskGroup(of: NodeInfo?.self) { group in
            for (id, seen) in ids {
                group.addTask {
                    let fields = try await self.backend.hgetall(self.nodeKey(id))
                    guard !fields.isEmpty else { return nil }
                    let address = fields["address"].map { String(buffer: $0) }
                    return NodeInfo(
                        id: id, address: address?.isEmpty == false ? address : nil,
                        startedAt: (fields["started"].flatMap { Double(String(buffer: $0)) } ?? 0) / 1000,
                        lastSeen: seen, connections: fields["connections"].flatMap { Int(String(buffer: $0)) } ?? 0
                    )
                }
            }
            var out: [NodeInfo] = []
            for try await node in group { if let node { out.append(node) } }
            return out.sorted { $0.id < $1.id }
        }
    }

    // MARK: control messages

    struct ControlEnvelope: Codable {
        var kind: String
        var target: String
        var code: UInt16
        var reason: String

        init(_ message: ControlMessage) {
            switch message {
            case .closeSession(let session, let code, let reason): (kind, target, self.code, self.reason) = ("closeSession", session, code, reason)
            case .closeUser(let user, let code, let reason): (kind, target, self.code, self.reason) = ("closeUser", user, code, reason)
            }
        }

        var message: ControlMessage? {
            switch self.kind {
            case "closeSession": .closeSession(self.target, code: self.code, reason: self.reason)
            case "closeUser": .closeUser(self.target, code: self.code, reason: self.reason)
            default: nil
            }
        }
    }

    public func send(_ message: ControlMessage, to node: String) async throws {
        if node == self.nodeID {
            self.state.withLockedValue { $0.delivery }?.control(message)
            return
        }
        let payload = String(decoding: try JSONEncoder().encode(ControlEnvelope(message)), as: UTF8.self)
        let command = self.backend.sharded ? "SPUBLISH" : "PUBLISH"
        let receivers = try await self.send(RESPCommand(command, .string(self.controlChannel(node)), .string(payload)))
        guard (receivers.int ?? 0) > 0 else { throw EngineError.unknownNode(node) }
    }

    /// Subscribes to this node's control channel (once; the backend restores it after outages).
    private func subscribeControl() {
        let (node, start) = self.state.withLockedValue { s -> (String, Bool) in
            guard s.control == nil, !s.node.isEmpty, s.lifecycle != .shutDown else { return (s.node, false) }
            return (s.node, true)
        }
        guard start else { return }
        let backend = self.backend
        let channel = self.controlChannel(node)
        let task = Task<RESPSubscription, any Error> {
            try await backend.subscribe(channel) { [weak self] payload in
                guard let self, let envelope = try? JSONDecoder().decode(ControlEnvelope.self, from: Data(payload.readableBytesView)),
                    let message = envelope.message
                else { return }
                self.state.withLockedValue { $0.delivery }?.control(message)
            }
        }
        self.state.withLockedValue { $0.control = task }
        Task { [weak self] in
            if case .failure(let error) = await task.result {
                // Try again with the next heartbeat.
                self?.logger.debug("control channel subscription failed: \(error)")
                self?.state.withLockedValue { $0.control = nil }
            }
        }
    }
}

/// Heartbeats run one at a time: while one runs, callers queue for the next.
enum HeartbeatState {
    case idle
    /// `next`: callers waiting for the beat after this one.
    case beating(next: [CheckedContinuation<Bool, Never>])
}
