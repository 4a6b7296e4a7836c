import Foundation
import NIOCore
import RedisTestSupport
import Switchboard
import Testing

@testable import RESP
@testable import SwitchboardRedis

@Suite("RedisEngine", .timeLimit(.minutes(1)))
struct RedisEngineTests {
    @Test(.timeLimit(.minutes(1)))
    func offsetsContiguousUnderConcurrentPublishes() async throws {
        try await withEngines(count: 2) { _, engines, _ in
            let results = try await withThrowingTaskGroup(of: PublishResult.self) { group in
                for i in 0..<500 {
                    let engine = engines[i % 2]
                    group.addTask { try await engine.publish("/rooms/a", body: ByteBuffer(text: "m\(i)"), idempotencyKey: nil) }
                }
                var out: [PublishResult] = []
                for try await r in group { out.append(r) }
                return out
            }
            #expect(results.map(\.offset).sorted() == Array(1...500))
            #expect(Set(results.map(\.epoch)).count == 1)
            #expect(results.allSatisfy { !$0.duplicate })
            let position = try await engines[0].position(of: "/rooms/a")
            #expect(position == StreamPosition(epoch: results[0].epoch, top: 500))
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func idempotencyKeyReturnsFirstResult() async throws {
        try await withEngines(count: 2) { _, engines, _ in
            let first = try await engines[0].publish("/s", body: ByteBuffer(text: "x"), idempotencyKey: "k1")
            _ = try await engines[0].publish("/s", body: ByteBuffer(text: "y"), idempotencyKey: nil)
            let again = try await engines[1].publish("/s", body: ByteBuffer(text: "x"), idempotencyKey: "k1")
            #expect(first == PublishResult(offset: 1, epoch: first.epoch, duplicate: false))
            #expect(again == PublishResult(offset: 1, epoch: first.epoch, duplicate: true))
            let other = try await engines[1].publish("/s", body: ByteBuffer(text: "x"), idempotencyKey: "k2")
            #expect(other.offset == 3 && !other.duplicate)
            // Same key on another stream is independent.
            let elsewhere = try await engines[1].publish("/t", body: ByteBuffer(text: "x"), idempotencyKey: "k1")
            #expect(elsewhere.offset == 1 && !elsewhere.duplicate)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: [false, true])
    func publishOnOneNodeIsDeliveredOnTheOtherOnce(sharded: Bool) async throws {
        try await withEngines(count: 2, { $0.useShardedPubSub = sharded }) { _, engines, collectors in
            let (a, b) = (engines[0], engines[1])
            // Two local subscribers on B: still one Redis subscription, one delivery.
            async let s1: Void = b.subscribe("/rooms/x")
            async let s2: Void = b.subscribe("/rooms/x")
            _ = try await (s1, s2)
            let body = ByteBuffer(bytes: [0, 1, 2, 0x2C, 0xFF, 0x7C] + Array("héllo,|".utf8))
            let r = try await a.publish("/rooms/x", body: body, idempotencyKey: nil)
            _ = try await a.publish("/rooms/other", body: ByteBuffer(text: "no"), idempotencyKey: nil)
            try await eventually { collectors[1].messages.count >= 1 }
            try await Task.sleep(for: .milliseconds(100))
            let got = collectors[1].messages
            #expect(got.count == 1)
            #expect(got.first?.stream == "/rooms/x")
            #expect(got.first?.offset == r.offset)
            #expect(got.first?.epoch == r.epoch)
            #expect(got.first?.body == body)
            #expect(collectors[0].messages.isEmpty, "A did not subscribe")
            #expect(b.lastDelivered("/rooms/x")?.offset == 1)

            // One unsubscribe keeps the other local subscriber; the second one stops delivery.
            await b.unsubscribe("/rooms/x")
            _ = try await a.publish("/rooms/x", body: ByteBuffer(text: "2"), idempotencyKey: nil)
            try await eventually { collectors[1].messages.count >= 2 }
            #expect(collectors[1].messages.map(\.offset) == [1, 2])
            await b.unsubscribe("/rooms/x")
            _ = try await a.publish("/rooms/x", body: ByteBuffer(text: "3"), idempotencyKey: nil)
            try await Task.sleep(for: .milliseconds(150))
            #expect(collectors[1].messages.count == 2)
            #expect(b.subscribedStreams.isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func liveMessagesArriveInOrder() async throws {
        try await withEngines(count: 2) { _, engines, collectors in
            try await engines[1].subscribe("/o")
            for i in 1...200 { _ = try await engines[0].publish("/o", body: ByteBuffer(text: "\(i)"), idempotencyKey: nil) }
            try await eventually { collectors[1].messages.count >= 200 }
            #expect(collectors[1].messages.map(\.offset) == Array(1...200))
            #expect(collectors[1].messages.map(\.body.text) == (1...200).map(String.init))
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func readAfterOffsetAndGone() async throws {
        try await withEngines({
            $0.historySize = 5
            $0.approximateTrimming = false
        }) { _, engines, _ in
            let e = engines[0]
            // Unknown stream: empty, with an epoch that stays.
            guard case .messages(let none, let p0) = try await e.read("/h", after: 0, epoch: nil, limit: 10) else {
                Issue.record("fresh stream should read empty")
                return
            }
            #expect(none.isEmpty && p0.top == 0)
            #expect(try await e.position(of: "/h") == p0)
            var epoch = ""
            for i in 1...3 { epoch = try await e.publish("/h", body: ByteBuffer(text: "m\(i)"), idempotencyKey: nil).epoch }
            #expect(epoch == p0.epoch, "publish keeps the epoch created by read")
            guard case .messages(let msgs, let p) = try await e.read("/h", after: 1, epoch: epoch, limit: 10) else {
                Issue.record("expected messages")
                return
            }
            #expect(msgs.map(\.offset) == [2, 3])
            #expect(msgs.map(\.body.text) == ["m2", "m3"])
            #expect(msgs.allSatisfy { $0.epoch == epoch && $0.stream == "/h" })
            #expect(p == StreamPosition(epoch: epoch, top: 3))
            // limit
            guard case .messages(let one, _) = try await e.read("/h", after: 0, epoch: nil, limit: 1) else {
                Issue.record("expected messages")
                return
            }
            #expect(one.map(\.offset) == [1])
            // at the top: nothing, not gone
            guard case .messages(let empty, _) = try await e.read("/h", after: 3, epoch: epoch, limit: 10) else {
                Issue.record("expected messages")
                return
            }
            #expect(empty.isEmpty)
            // beyond the top / other epoch: gone
            guard case .gone(let g1) = try await e.read("/h", after: 4, epoch: nil, limit: 10) else {
                Issue.record("after > top must be gone")
                return
            }
            #expect(g1.top == 3)
            guard case .gone = try await e.read("/h", after: 1, epoch: "other", limit: 10) else {
                Issue.record("epoch mismatch must be gone")
                return
            }
            // trimmed by count: 10 published, 5 kept (6…10)
            for i in 4...10 { _ = try await e.publish("/h", body: ByteBuffer(text: "m\(i)"), idempotencyKey: nil) }
            guard case .gone = try await e.read("/h", after: 4, epoch: epoch, limit: 10) else {
                Issue.record("trimmed history must be gone")
                return
            }
            guard case .messages(let kept, _) = try await e.read("/h", after: 5, epoch: epoch, limit: 10) else {
                Issue.record("after 5 is still covered")
                return
            }
            #expect(kept.map(\.offset) == [6, 7, 8, 9, 10])
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func historyAgeTrims() async throws {
        try await withEngines({ $0.historyAge = 2 }) { _, engines, _ in
            let e = engines[0]
            _ = try await e.publish("/age", body: ByteBuffer(text: "old"), idempotencyKey: nil)
            try await Task.sleep(for: .milliseconds(2500))
            _ = try await e.publish("/age", body: ByteBuffer(text: "new"), idempotencyKey: nil)
            guard case .gone = try await e.read("/age", after: 0, epoch: nil, limit: 10) else {
                Issue.record("aged-out history must be gone")
                return
            }
            guard case .messages(let m, _) = try await e.read("/age", after: 1, epoch: nil, limit: 10) else {
                Issue.record("expected the young message")
                return
            }
            #expect(m.map(\.body.text) == ["new"])
            try await Task.sleep(for: .milliseconds(2500))
            // Nothing published since: the read itself applies the age.
            guard case .gone = try await e.read("/age", after: 1, epoch: nil, limit: 10) else {
                Issue.record("read must apply age trimming")
                return
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func acksTrimHistory() async throws {
        try await withEngines { _, engines, _ in
            let e = engines[0]
            try await e.saveSession(SessionRecord(id: "s1", user: "ann"))
            for i in 1...10 { _ = try await e.publish("/ack", body: ByteBuffer(text: "\(i)"), idempotencyKey: nil) }
            try await e.ack(session: "s1", stream: "/ack", offset: 0)
            try await e.ack(session: "s2", stream: "/ack", offset: 0)
            try await e.ack(session: "s1", stream: "/ack", offset: 6)
            guard case .messages(let all, _) = try await e.read("/ack", after: 0, epoch: nil, limit: 100) else {
                Issue.record("s2 acked nothing: history kept")
                return
            }
            #expect(all.count == 10)
            try await e.ack(session: "s2", stream: "/ack", offset: 4)
            try await e.ack(session: "s2", stream: "/ack", offset: 2)  // never goes back
            guard case .gone = try await e.read("/ack", after: 3, epoch: nil, limit: 100) else {
                Issue.record("acked by all must be trimmed")
                return
            }
            guard case .messages(let rest, _) = try await e.read("/ack", after: 4, epoch: nil, limit: 100) else {
                Issue.record("not acked by s2 must stay")
                return
            }
            #expect(rest.map(\.offset) == Array(5...10))
            // release s2: s1's ack (6) now rules
            try await e.release(session: "s2", stream: "/ack")
            try await e.ack(session: "s1", stream: "/ack", offset: 6)
            guard case .gone = try await e.read("/ack", after: 5, epoch: nil, limit: 100) else {
                Issue.record("after release s1's ack trims")
                return
            }
            // acking beyond the top counts as acking the top
            try await e.ack(session: "s1", stream: "/ack", offset: 1000)
            guard case .messages(let none, let p) = try await e.read("/ack", after: 10, epoch: nil, limit: 100) else {
                Issue.record("at the top is not gone")
                return
            }
            #expect(none.isEmpty && p.top == 10)
            // the session remembers its cursor
            let s1 = try await e.loadSession("s1")
            #expect(s1?.cursors["/ack"] == 1000)
        }
    }

    /// protocol.md §4.4 on Redis: a session that subscribed before the stream had a message holds
    /// its history against a later subscriber's acks, while connected and for its TTL after its
    /// connection closed; an expired session no longer does.
    @Test(.timeLimit(.minutes(1)))
    func aSubscriberHoldsHistoryFromBeforeTheFirstMessageUntilItsSessionExpires() async throws {
        try await withEngines({ $0.sessionTTL = 1.5 }) { _, engines, _ in
            let e = engines[0]
            func held() async throws -> [Int64] {
                if case .messages(let m, _) = try await e.read("/hold", after: 0, epoch: nil, limit: 100) { return m.map(\.offset) }
                return []
            }
            for session in ["a", "b"] {
                try await e.saveSession(SessionRecord(id: session, user: session))
                try await e.touchSession(session, user: session, connected: true)
            }
            // A subscribes live to a stream with no message yet (the gateway acks the top, 0).
            try await e.ack(session: "a", stream: "/hold", offset: 0)
            for i in 1...3 { _ = try await e.publish("/hold", body: ByteBuffer(text: "\(i)"), idempotencyKey: nil) }
            // B subscribes at the top and acks it: A (connected) has read nothing.
            try await e.ack(session: "b", stream: "/hold", offset: 3)
            #expect(try await held() == [1, 2, 3])
            // A's connection closes: its session holds 1-3 for its TTL.
            try await e.touchSession("a", user: "a", connected: false)
            try await e.ack(session: "b", stream: "/hold", offset: 3)
            #expect(try await held() == [1, 2, 3])
            // Expired: B's next ack trims.
            try await Task.sleep(for: .seconds(2))
            try await e.ack(session: "b", stream: "/hold", offset: 3)
            #expect(try await held() == [])
        }
    }

    /// A connected subscriber holds the history from its SUB until its UNSUB, however long the
    /// stream stays quiet: its hold does not run out between two messages.
    @Test(.timeLimit(.minutes(1)))
    func aConnectedSubscribersHoldOutlastsAQuietStream() async throws {
        try await withEngines({
            $0.sessionTTL = 0.5
            $0.historyAge = 0.5
        }) { _, engines, _ in
            let e = engines[0]
            for session in ["a", "b"] {
                try await e.saveSession(SessionRecord(id: session, user: session))
                try await e.touchSession(session, user: session, connected: true)
                try await e.ack(session: session, stream: "/quiet-hold", offset: 0)
            }
            // Quiet for longer than age and TTL (a finite hold of twice them would have ended).
            try await Task.sleep(for: .milliseconds(1500))
            for i in 1...3 { _ = try await e.publish("/quiet-hold", body: ByteBuffer(text: "\(i)"), idempotencyKey: nil) }
            // A read them all and acks; B (connected, at 0) still has them to read.
            try await e.ack(session: "a", stream: "/quiet-hold", offset: 3)
            guard case .messages(let left, _) = try await e.read("/quiet-hold", after: 0, epoch: nil, limit: 100) else {
                Issue.record("B's history was trimmed by A's ack: B's hold ran out while it was connected")
                return
            }
            #expect(left.map(\.offset) == [1, 2, 3])
        }
    }

    /// `historySize` is exact on both engines, whatever `MAXLEN ~` leaves in the log.
    @Test(.timeLimit(.minutes(1)))
    func historySizeIsExactLikeTheMemoryEngine() async throws {
        try await withEngines({ $0.historySize = 5 }) { _, engines, _ in
            let e = engines[0]
            for i in 1...8 { _ = try await e.publish("/size", body: ByteBuffer(text: "\(i)"), idempotencyKey: nil) }
            guard case .gone = try await e.read("/size", after: 0, epoch: nil, limit: 100) else {
                Issue.record("offsets 1-3 are beyond the history size")
                return
            }
            guard case .messages(let kept, _) = try await e.read("/size", after: 3, epoch: nil, limit: 100) else {
                Issue.record("the last five are kept")
                return
            }
            #expect(kept.map(\.offset) == [4, 5, 6, 7, 8])
        }
        let memory = MemoryEngine(configuration: .init(historySize: 5))
        for i in 1...8 { _ = try await memory.publish("/size", body: ByteBuffer(text: "\(i)"), idempotencyKey: nil) }
        guard case .gone = try await memory.read("/size", after: 0, epoch: nil, limit: 100) else {
            Issue.record("the memory engine agrees")
            return
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func sessionsSaveLoadExpire() async throws {
        try await withEngines(count: 2, { $0.sessionTTL = 2 }) { _, engines, _ in
            let (a, b) = (engines[0], engines[1])
            #expect(try await a.loadSession("nope") == nil)
            try await a.saveSession(SessionRecord(id: "s", user: "ann", cursors: ["/users/ann": 41, "/broadcast": 7]))
            try await a.saveSession(SessionRecord(id: "anon", user: nil))
            #expect(try await b.loadSession("s") == SessionRecord(id: "s", user: "ann", cursors: ["/users/ann": 41, "/broadcast": 7]))
            #expect(try await b.loadSession("anon") == SessionRecord(id: "anon", user: nil))
            try await a.touchSession("s", user: "ann", connected: true)
            try await Task.sleep(for: .milliseconds(2600))
            #expect(try await b.loadSession("s") != nil, "connected sessions do not expire")
            #expect(try await b.loadSession("anon") == nil, "never-connected session expired")
            // Two connections: expiry starts after the last one closes.
            try await b.touchSession("s", user: "ann", connected: true)
            try await a.touchSession("s", user: "ann", connected: false)
            // Saving keeps the connection count and the node of the live connection.
            try await b.saveSession(SessionRecord(id: "s", user: "ann", cursors: ["/users/ann": 42]))
            try await Task.sleep(for: .milliseconds(2600))
            #expect(try await a.loadSession("s") == SessionRecord(id: "s", user: "ann", cursors: ["/users/ann": 42], node: "node1"))
            try await b.touchSession("s", user: "ann", connected: false)
            #expect(try await a.loadSession("s")?.node == nil)
            try await Task.sleep(for: .milliseconds(2600))
            #expect(try await a.loadSession("s") == nil)
            // touching a missing session is a no-op
            try await a.touchSession("s", user: "ann", connected: true)
            #expect(try await a.loadSession("s") == nil)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func presenceJoinLeaveListAndNodeDeath() async throws {
        try await withEngines(count: 2, { $0.presenceTTL = 1.5 }) { _, engines, _ in
            let (a, b) = (engines[0], engines[1])
            let ann = PresenceMember(user: "ann", session: "s1", connection: "node0/1")
            let anon = PresenceMember(user: nil, session: "s2", connection: "node0/2")
            let bob = PresenceMember(user: "bob", session: "s3", connection: "node1/1")
            #expect(try await a.presenceJoin("/p", member: ann))
            #expect(try await !a.presenceJoin("/p", member: ann))  // already there
            try await a.presenceJoin("/p", member: anon)
            try await b.presenceJoin("/p", member: bob)
            #expect(Set(try await b.presence(of: "/p")) == [ann, anon, bob])
            #expect(try await a.presenceLeave("/p", member: anon))
            #expect(try await !a.presenceLeave("/p", member: anon))
            #expect(Set(try await a.presence(of: "/p")) == [ann, bob])
            #expect(try await a.presence(of: "/empty").isEmpty)
            // Heartbeats keep members alive past the TTL. (A TTL long enough that a busy machine
            // refreshes in time: a refresh runs every TTL/3.)
            try await Task.sleep(for: .milliseconds(3000))
            #expect(Set(try await a.presence(of: "/p")) == [ann, bob])
            // Node B dies without leaving: its member disappears after the TTL.
            await b.shutdown()
            try await Task.sleep(for: .milliseconds(2500))
            #expect(Set(try await a.presence(of: "/p")) == [ann])
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func redisDownAndBack() async throws {
        try await withEngines(count: 2) { server, engines, collectors in
            let (a, b) = (engines[0], engines[1])
            let watcher = Task { () -> [RedisEngineEvent] in
                var seen: [RedisEngineEvent] = []
                for await ev in b.events {
                    seen.append(ev)
                    if case .reconnected = ev { break }
                }
                return seen
            }
            try await b.subscribe("/live")
            let before = try await a.publish("/live", body: ByteBuffer(text: "1"), idempotencyKey: nil)
            try await eventually { collectors[1].messages.count == 1 }
            #expect(a.isAvailable)

            server.stop()
            try await eventually { !a.isAvailable && !b.isAvailable }
            #expect(!a.isAvailable)
            let start = ContinuousClock.now
            await #expect(throws: EngineError.self) {
                _ = try await a.publish("/live", body: ByteBuffer(text: "lost"), idempotencyKey: nil)
            }
            do {
                _ = try await a.publish("/live", body: ByteBuffer(text: "lost"), idempotencyKey: nil)
            } catch let e as EngineError {
                guard case .unavailable = e else {
                    Issue.record("wrong error \(e)")
                    return
                }
            }
            await #expect(throws: EngineError.self) { try await b.subscribe("/other") }
            await #expect(throws: EngineError.self) { _ = try await b.read("/live", after: 0, epoch: nil, limit: 1) }
            await #expect(throws: EngineError.self) { _ = try await b.loadSession("x") }
            #expect(ContinuousClock.now - start < .milliseconds(500), "fails fast")

            try await server.start()
            #expect(try await eventually(timeout: .seconds(20)) { a.isAvailable && b.isAvailable })
            // The pub/sub side reconnects with the command side; wait for B's event.
            let events = await watcher.value
            #expect(events.first == .disconnected)
            let after = try await a.publish("/live", body: ByteBuffer(text: "2"), idempotencyKey: nil)
            // Redis lost everything (no persistence): a new epoch starts at 1.
            #expect(after.epoch != before.epoch && after.offset == 1)
            try await eventually { collectors[1].messages.count == 2 }
            #expect(collectors[1].messages.last?.epoch == after.epoch)
            #expect(collectors[1].messages.last?.body.text == "2")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func reconnectReportsLaggingStreams() async throws {
        try await withEngines(count: 2) { server, engines, collectors in
            let (a, b) = (engines[0], engines[1])
            try await b.subscribe("/lag")
            try await b.subscribe("/quiet")
            _ = try await a.publish("/lag", body: ByteBuffer(text: "1"), idempotencyKey: nil)
            _ = try await a.publish("/quiet", body: ByteBuffer(text: "1"), idempotencyKey: nil)
            try await eventually { collectors[1].messages.count == 2 }
            let watcher = Task { () -> [String: StreamPosition]? in
                for await ev in b.events { if case .reconnected(let lagging) = ev { return lagging } }
                return nil
            }
            server.stop()
            try await eventually { !b.isAvailable }
            try await server.start()
            // Before B notices: publish from a fresh connection so B misses it.
            try await eventually(timeout: .seconds(20)) { a.isAvailable }
            let lagging = await watcher.value
            // Everything was lost in Redis, so both streams have a new epoch by now.
            #expect(Set(lagging?.keys ?? [:].keys) == ["/lag", "/quiet"])
            let positions = try await b.positions(of: ["/lag", "/quiet"])
            #expect(positions.count == 2)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func nodesAreListedAndADeadNodesSessionsAndPresenceAreReleased() async throws {
        try await withEngines(
            count: 2,
            {
                $0.heartbeatInterval = 0.5
                $0.sessionTTL = 60
            }
        ) { server, engines, collectors in
            let (a, b) = (engines[0], engines[1])
            await a.announce(address: "127.0.0.1:1111")
            #expect(try await a.nodes().map(\.id) == ["node0", "node1"])
            #expect(try await b.nodes().first?.address == "127.0.0.1:1111")

            // Listening before the crash is staged: a survivor may clean up at its next heartbeat.
            try await b.subscribe("/presence/room")
            // A node that crashed: its heartbeat is old, it held session "gone" and a member of /room.
            let redis = try await RESPConnection.connect(configuration: server.configuration)
            defer { Task { await redis.close() } }
            _ = try await redis.send("ZADD", "sb:nodes", 1, "crashed")
            _ = try await redis.send("HSET", "sb:session:gone", "n", 1, "o", "crashed", "u", "zed")
            _ = try await redis.send("SADD", "sb:node:{crashed}:sessions", "gone")
            let member = PresenceMember(user: "zed", session: "gone", connection: "crashed/1")
            let encoded = try RedisEngine.encode(member)
            _ = try await redis.send("HSET", "sb:{/room}:presence", .string(encoded), 99_999_999_999_999)
            _ = try await redis.send("SADD", "sb:node:{crashed}:presence", .string("/room\t" + encoded))

            // A survivor releases the session (it now expires), removes the member with a leave event.
            #expect(try await eventually { (try? await redis.send("EXISTS", "sb:node:{crashed}:sessions").int) == 0 })
            #expect(try await redis.send("HGET", "sb:session:gone", "n").string == "0")
            #expect(try await redis.send("PTTL", "sb:session:gone").int ?? -1 > 0)
            #expect(try await a.loadSession("gone")?.node == nil)
            #expect(try await a.presence(of: "/room").isEmpty)
            #expect(try await eventually { collectors[1].messages.contains { $0.stream == "/presence/room" } })
            let last = try #require(collectors[1].messages.last)
            let event = try JSONDecoder().decode(PresenceEvents.Event.self, from: Data(last.body.readableBytesView))
            #expect(event == PresenceEvents.Event(event: .leave, user: "zed", session: "gone", connection: "crashed/1"))
            #expect(try await a.nodes().map(\.id) == ["node0", "node1"])
        }
    }

    /// A short Redis outage must not make nodes declare each other dead (false "leave" events
    /// for members still connected), and nodes are ready again soon after Redis is back.
    @Test(.timeLimit(.minutes(1)))
    func aRedisOutageDoesNotMakeLiveNodesLookDead() async throws {
        try await withEngines(count: 2, redisArgs: try durableRedisArgs(), { $0.heartbeatInterval = 0.3 }) { server, engines, _ in
            let (a, b) = (engines[0], engines[1])
            // A member on each node: whichever node is back first must not remove the other's.
            let ann = PresenceMember(user: "ann", session: "s-ann", connection: "node0/1")
            let bob = PresenceMember(user: "bob", session: "s-bob", connection: "node1/1")
            try await a.presenceJoin("/p", member: ann)
            try await b.presenceJoin("/p", member: bob)
            // Down for several times a dead node's silence (0.9 s), then back with its data.
            server.stop()
            try await eventually { !a.isAvailable && !b.isAvailable }
            try await Task.sleep(for: .seconds(2))
            try await server.start()
            let back = ContinuousClock.now
            #expect(
                try await eventually(timeout: .seconds(20)) {
                    let (ha, hb) = (await a.health(), await b.health())
                    return ha.isReady && hb.isReady
                })
            let ready = ContinuousClock.now - back
            #expect(ready < .seconds(4), "ready \(ready) after Redis came back")
            // Several heartbeats later nobody was declared dead.
            try await Task.sleep(for: .seconds(2))
            // No event was published on the presence stream (a live subscriber might have missed
            // it while resubscribing: read its history).
            if case .messages(let events, _) = try await a.read("/presence/p", after: 0, epoch: nil, limit: 10) {
                #expect(events.isEmpty, "\(events.map(\.body.text))")
            }
            #expect(Set(try await a.presence(of: "/p")) == [ann, bob])
            #expect(try await a.nodes().map(\.id) == ["node0", "node1"])
        }
    }

    /// A node that others declared dead while it was alive (a partition) restores its members
    /// and announces them with a join, after the leave the survivor published.
    @Test(.timeLimit(.minutes(1)))
    func aNodeWronglyDeclaredDeadRestoresAndAnnouncesItsMembers() async throws {
        try await withEngines(count: 2, { $0.heartbeatInterval = 0.3 }) { server, engines, collectors in
            let (a, b) = (engines[0], engines[1])
            let bob = PresenceMember(user: "bob", session: "s-bob", connection: "node1/1")
            try await b.presenceJoin("/p", member: bob)
            try await a.subscribe("/presence/p")
            // What a survivor does to a node it believes dead.
            let redis = try await RESPConnection.connect(configuration: server.configuration)
            defer { Task { await redis.close() } }
            _ = try await redis.send("HDEL", "sb:{/p}:presence", .string(try RedisEngine.encode(bob)))
            _ = try await a.publish(PresenceEvents.stream(for: "/p"), body: PresenceEvents.body(.leave, bob), idempotencyKey: nil)
            _ = try await redis.send("DEL", "sb:node:{node1}", "sb:node:{node1}:sessions", "sb:node:{node1}:presence")
            // Node B finds its entry gone at its next heartbeat.
            #expect(
                try await eventually {
                    collectors[0].messages.filter { $0.stream == "/presence/p" }.map(\.body.text).last?.contains("join") == true
                })
            let events = collectors[0].messages.filter { $0.stream == "/presence/p" }
            let last = try JSONDecoder().decode(PresenceEvents.Event.self, from: Data(events.last!.body.readableBytesView))
            #expect(last == PresenceEvents.Event(event: .join, user: "bob", session: "s-bob", connection: "node1/1"))
            #expect(try await a.presence(of: "/p") == [bob])
            // Indexed under its node again, so a real death later releases it.
            #expect(try await redis.send("SCARD", "sb:node:{node1}:presence").int == 1)
        }
    }

    /// Redis restarted from a snapshot older than the last acknowledged writes (a crash with
    /// `appendfsync everysec`, or a failover to a replica that lagged): the same offsets are handed
    /// out again in the same epoch. A node that received the lost offsets starts a new epoch and
    /// catches its subscribers up (SUB410); a reader that names the tag of its last message is
    /// not recovered even when no node saw anything.
    @Test(.timeLimit(.minutes(1)))
    func aRollbackOfTheHistoryIsANewEpochNeverAReusedOffset() async throws {
        let dir = NSTemporaryDirectory() + "switchboard-rollback-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try await withEngines(count: 2, redisArgs: ["--dir", dir, "--dbfilename", "snapshot.rdb"]) { server, engines, collectors in
            let (a, b) = (engines[0], engines[1])
            try await b.subscribe("/rb")
            var published: [PublishResult] = []
            for i in 1...10 { published.append(try await a.publish("/rb", body: ByteBuffer(text: "m\(i)"), idempotencyKey: nil)) }
            let epoch = published[0].epoch
            let redis = try await RESPConnection.connect(configuration: server.configuration)
            _ = try await redis.send("SAVE")
            await redis.close()
            for i in 11...20 { published.append(try await a.publish("/rb", body: ByteBuffer(text: "m\(i)"), idempotencyKey: nil)) }
            #expect(try await eventually { collectors[1].messages.count == 20 })
            let seen = collectors[1].messages[19]
            #expect(seen.offset == 20 && seen.epoch == epoch && seen.tag.count == 6)
            // The crash: Redis comes back with offsets 1-10 only, in the same epoch.
            server.stop()
            try await server.start()
            #expect(try await eventually(timeout: .seconds(20)) { await b.health().isReady })
            // B had received 20: the stream moved to a new epoch, B's subscribers are told.
            #expect(try await eventually { collectors[1].catchUps["/rb"].map { $0.epoch != epoch } ?? false })
            #expect(b.rollbacksDetected == 1)
            let position = try await retrying { try await a.position(of: "/rb") }
            #expect(position.epoch != epoch && position.top == 10)
            let next = try await retrying { try await a.publish("/rb", body: ByteBuffer(text: "after"), idempotencyKey: "after") }
            #expect(next.epoch == position.epoch && next.offset == 11)
            // A resume in the old epoch is gone.
            guard case .gone = try await a.read("/rb", after: 20, epoch: epoch, tag: seen.tag, limit: 10) else {
                Issue.record("a resume in the rolled-back epoch must not be recovered")
                return
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aReaderNamingItsLastMessageSeesARollbackNoNodeSaw() async throws {
        let dir = NSTemporaryDirectory() + "switchboard-rollback-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try await withEngines(redisArgs: ["--dir", dir, "--dbfilename", "snapshot.rdb"]) { server, engines, _ in
            let e = engines[0]
            for i in 1...10 { _ = try await e.publish("/quiet", body: ByteBuffer(text: "m\(i)"), idempotencyKey: nil) }
            let redis = try await RESPConnection.connect(configuration: server.configuration)
            _ = try await redis.send("SAVE")
            await redis.close()
            for i in 11...20 { _ = try await e.publish("/quiet", body: ByteBuffer(text: "m\(i)"), idempotencyKey: nil) }
            guard case .messages(let before, let position) = try await e.read("/quiet", after: 0, epoch: nil, limit: 100) else {
                Issue.record("history")
                return
            }
            let (m10, m20) = (before[9], before[19])
            server.stop()
            try await server.start()
            // Nobody subscribed: the same epoch goes on, and offsets 11-30 are handed out again.
            // (Retried with a key while the engine reconnects: each is appended once.)
            for i in 11...30 {
                #expect(
                    try await eventually(timeout: .seconds(20)) {
                        (try? await e.publish("/quiet", body: ByteBuffer(text: "n\(i)"), idempotencyKey: "n\(i)")) != nil
                    })
            }
            #expect(try await e.position(of: "/quiet") == StreamPosition(epoch: position.epoch, top: 30))
            // A reader that stopped at the lost 20 names it: not recovered.
            guard case .gone = try await e.read("/quiet", after: 20, epoch: position.epoch, tag: m20.tag, limit: 100) else {
                Issue.record("the message at 20 is another one: not recovered")
                return
            }
            // One that stopped at 10 (kept as it was) is recovered, with the new 11-30.
            guard case .messages(let after10, _) = try await e.read("/quiet", after: 10, epoch: position.epoch, tag: m10.tag, limit: 100) else {
                Issue.record("10 survived: recovered")
                return
            }
            #expect(after10.map(\.body.text) == (11...30).map { "n\($0)" })
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func controlMessagesReachTheirNode() async throws {
        try await withEngines(count: 2) { _, engines, collectors in
            let (a, b) = (engines[0], engines[1])
            try await a.send(.closeSession("s1", code: 4409, reason: "taken over"), to: "node1")
            try await a.send(.closeUser("ann", code: 4403, reason: "bye"), to: "node0")  // itself
            #expect(try await eventually { collectors[1].controls == [.closeSession("s1", code: 4409, reason: "taken over")] })
            #expect(collectors[0].controls == [.closeUser("ann", code: 4403, reason: "bye")])
            await #expect(throws: EngineError.unknownNode("nobody")) { try await b.send(.closeUser("x", code: 4403, reason: ""), to: "nobody") }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func messagesPublishedWhileThePubSubConnectionWasDownAreCaughtUp() async throws {
        try await withEngines(count: 2) { server, engines, collectors in
            let (a, b) = (engines[0], engines[1])
            try await b.subscribe("/cut")
            _ = try await a.publish("/cut", body: ByteBuffer(text: "1"), idempotencyKey: nil)
            try await eventually { collectors[1].messages.count == 1 }
            // Redis drops B's pub/sub connection (only that one); A publishes meanwhile.
            let redis = try await RESPConnection.connect(configuration: server.configuration)
            defer { Task { await redis.close() } }
            let clients = try await redis.send("CLIENT", "LIST", "TYPE", "pubsub").string ?? ""
            let id = try #require(
                clients.split(separator: "\n").first { $0.contains("name=node1") }?
                    .split(separator: " ").first { $0.hasPrefix("id=") }?.dropFirst(3))
            _ = try await redis.send("CLIENT", "KILL", "ID", .string(String(id)))
            let missed = try await a.publish("/cut", body: ByteBuffer(text: "2"), idempotencyKey: nil)
            // B reconnects and resubscribes. Message 2 reaches the gateway either live (B was back
            // in time) or as a catch-up to offset 2 (it was published while B was away).
            #expect(
                try await eventually {
                    collectors[1].messages.contains { $0.offset == missed.offset } || (collectors[1].catchUps["/cut"]?.top ?? 0) >= missed.offset
                })
            #expect(try await eventually { b.isAvailable })
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aSilentlyDeadSubscriptionIsFoundAndReplaced() async throws {
        try await withEngines(count: 2, { $0.liveCheckInterval = 0.2 }) { _, engines, collectors in
            let (a, b) = (engines[0], engines[1])
            try await b.subscribe("/silent")
            // Unsubscribe behind the engine's back: Redis stops sending, nothing says so.
            let backend = try #require(b.backend as? StandaloneBackend)
            let connection = try #require(backend.client.subscriber.connection)
            let unsubscribe = connection.enqueue(
                RESPCommand("UNSUBSCRIBE", .string(b.keys("/silent").channel)), expectedPushes: 1, pushKind: "unsubscribe")
            _ = try await RESPConnection.wait(unsubscribe, timeout: .seconds(5))
            let lost = try await a.publish("/silent", body: ByteBuffer(text: "lost"), idempotencyKey: nil)
            // Two checks later the engine knows: the gateway catches up, the subscription is new.
            #expect(try await eventually { collectors[1].catchUps["/silent"]?.top == lost.offset })
            try await Task.sleep(for: .milliseconds(300))
            _ = try await a.publish("/silent", body: ByteBuffer(text: "live again"), idempotencyKey: nil)
            #expect(try await eventually { collectors[1].messages.last?.body.text == "live again" })
        }
    }

    @Test
    func urlParsing() throws {
        let c = try RedisEngineConfiguration.parse(url: "redis://user:p%40ss@redis.example:6380/2")
        #expect(c.host == "redis.example" && c.port == 6380 && c.database == 2)
        #expect(c.username == "user" && c.password == "p@ss")
        let d = try RedisEngineConfiguration.parse(url: "redis://:secret@[::1]")
        #expect(d.host == "::1" && d.port == 6379 && d.username == nil && d.password == "secret")
        let e = try RedisEngineConfiguration.parse(url: "redis://localhost")
        #expect(e.host == "localhost" && e.port == 6379 && e.database == 0 && e.password == nil)
        #expect(throws: RedisEngineConfiguration.URLError.self) { try RedisEngineConfiguration.parse(url: "http://x") }
        #expect(throws: RedisEngineConfiguration.URLError.self) { try RedisEngineConfiguration.parse(url: "redis://x:99999") }
        #expect(throws: RedisEngineConfiguration.URLError.self) { try RedisEngineConfiguration.parse(url: "redis://x/db") }
    }

    @Test
    func decodesLivePayload() {
        var buf = ByteBuffer(string: "xx42,abc,t1x2y3,p0p0p0,hello,world")
        buf.moveReaderIndex(forwardBy: 2)
        let m = RedisEngine.decode(stream: "/s", payload: buf)
        #expect(m?.offset == 42 && m?.epoch == "abc" && m?.tag == "t1x2y3" && m?.previousTag == "p0p0p0" && m?.body.text == "hello,world")
        #expect(RedisEngine.decode(stream: "/s", payload: ByteBuffer(string: "4a,b,t,p,c")) == nil)
        #expect(RedisEngine.decode(stream: "/s", payload: ByteBuffer(string: "4,b,t,c")) == nil)
        #expect(RedisEngine.decode(stream: "/s", payload: ByteBuffer(string: "4,b,t,,"))?.body.readableBytes == 0)
        #expect(RedisEngine.decode(stream: "/s", payload: ByteBuffer(string: "99999999999999999999,b,t,p,x")) == nil)
    }
}
