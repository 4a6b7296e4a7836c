import Foundation
import NIOConcurrencyHelpers
import NIOCore
import RedisTestSupport
import Testing

@testable import RESP

@Suite(.timeLimit(.minutes(2)))
struct ClusterTests {
    @Test func slotHashing() {
        #expect(RESPClusterSlot.crc16(Array("123456789".utf8)) == 0x31C3)
        #expect(RESPClusterSlot.slot(for: "foo") == 12182)
        #expect(RESPClusterSlot.slot(for: "bar") == 5061)
        #expect(RESPClusterSlot.slot(for: "{user1000}.following") == RESPClusterSlot.slot(for: "{user1000}.followers"))
        #expect(RESPClusterSlot.slot(for: "{user1000}.following") == RESPClusterSlot.slot(for: "user1000"))
        #expect(RESPClusterSlot.slot(for: "foo{}{bar}") == RESPClusterSlot.slot(for: "foo{}{bar}"))  // empty tag: whole key
        #expect(RESPClusterSlot.slot(for: "foo{{bar}}zap") == RESPClusterSlot.slot(for: "{bar"))
        #expect(RESPClusterSlot.slot(for: ByteBuffer(string: "foo")) == 12182)
        #expect(RESPClusterSlot.routingKey(RESPCommand("EVALSHA", "abc", 1, "k")).map(RESPClusterSlot.slot(for:)) == RESPClusterSlot.slot(for: "k"))
        #expect(RESPClusterSlot.routingKey(RESPCommand("PING")) == nil)
        #expect(RESPClusterClient.redirect("3999 127.0.0.1:7001", from: .init(host: "h", port: 1))?.1 == .init(host: "127.0.0.1", port: 7001))
        #expect(RESPClusterClient.redirect("3999 :7001", from: .init(host: "h", port: 1))?.1 == .init(host: "h", port: 7001))
        #expect(RESPClusterClient.redirect("garbage", from: .init(host: "h", port: 1)) == nil)
    }

    @Test func routingMovedAfterMigrationAndAsk() async throws {
        try await withRedisCluster { cluster in
            let client = try await RESPClusterClient.connect(seeds: cluster.seeds, configuration: cluster.configuration)
            defer { Task { await client.close() } }
            for i in 0..<200 { try await client.set("key:\(i)", .int(i)) }
            for i in 0..<200 { #expect(try await client.get("key:\(i)")?.text == String(i)) }
            var total = 0
            for server in cluster.servers {
                let c = try await cluster.connect(server)
                let n = try await c.send("DBSIZE").int ?? 0
                #expect(n > 0)
                total += n
                await c.close()
            }
            #expect(total == 200)
            for key in ["foo", "bar", "{a}b", "zzz"] {
                let c = try await cluster.connect(cluster.servers[0])
                #expect(try await c.send("CLUSTER", "KEYSLOT", .string(key)).int == RESPClusterSlot.slot(for: key))
                await c.close()
            }
            #expect(try await client.run(RESPScript(source: "return redis.call('GET', KEYS[1])"), keys: ["key:7"]).string == "7")

            // MOVED after a real migration: the slot and its keys go to another node; the client,
            // whose map still names the old owner, follows the redirect and learns the new one.
            let slot = RESPClusterSlot.slot(for: "key:7")
            let source = try await cluster.server(owning: slot)
            let target = cluster.servers.first { $0 !== source }!
            try await cluster.migrate(slot: slot, to: target)
            #expect(client.node(forSlot: slot)?.port == source.port)
            #expect(try await client.get("key:7")?.text == "7")
            #expect(client.node(forSlot: slot)?.port == target.port)
            try await client.set("key:7", "moved")
            let direct = try await cluster.connect(target)
            #expect(try await direct.send("GET", "key:7").string == "moved")
            await direct.close()

            // ASK: "{mig}x"'s slot is half-way between two nodes; a new key lands on the target.
            let migSlot = RESPClusterSlot.slot(for: "{mig}x")
            let migration = try await cluster.beginMigration(slot: migSlot)
            let (src, srcConn, dstConn) = (migration.source, migration.sourceConnection, migration.targetConnection)
            defer {
                Task {
                    await srcConn.close()
                    await dstConn.close()
                }
            }
            try await client.set("{mig}x", "moved-by-ask")
            #expect(try await dstConn.send("CLUSTER", "COUNTKEYSINSLOT", .int(migSlot)) == .integer(1))
            #expect(try await srcConn.send("CLUSTER", "COUNTKEYSINSLOT", .int(migSlot)) == .integer(0))
            #expect(try await client.get("{mig}x")?.text == "moved-by-ask")
            #expect(client.node(forSlot: migSlot)?.port == src.port)  // ASK does not change the map
        }
    }

    /// A redirect naming a slot or port out of range (a broken or hostile server) is refused,
    /// not used as an index or an address.
    @Test func redirectsOutOfRangeAreRefused() {
        let node = RESPClusterClient.Node(host: "10.0.0.1", port: 7000)
        #expect(RESPClusterClient.redirect("3999 127.0.0.1:7002", from: node).map { "\($0.0) \($0.1)" } == "3999 127.0.0.1:7002")
        #expect(RESPClusterClient.redirect("3999 :7002", from: node)?.1 == RESPClusterClient.Node(host: "10.0.0.1", port: 7002))
        for bad in ["16384 127.0.0.1:7002", "-1 127.0.0.1:7002", "99999999999999999999 h:1", "1 h:0", "1 h:65536", "1 h:-5", "1 h", "1"] {
            #expect(RESPClusterClient.redirect(bad, from: node) == nil, "\(bad)")
        }
    }

    @Test func tryAgainDuringMigrationIsRetried() async throws {
        try await withRedisCluster { cluster in
            // Retries long enough to outlast a migration on a busy machine (about 10 s).
            let client = try await RESPClusterClient.connect(
                seeds: cluster.seeds, configuration: cluster.configuration,
                retryPolicy: .init(initialDelay: .milliseconds(100), maxDelay: .milliseconds(500)), retryBudget: .seconds(20))
            defer { Task { await client.close() } }
            try await client.set("{t}a", "1")
            try await client.set("{t}b", "2")
            // Start a migration and move only one of the two keys: a command on both now gets
            // TRYAGAIN from the source until the migration finishes.
            let slot = RESPClusterSlot.slot(for: "{t}a")
            let migration = try await cluster.beginMigration(slot: slot)
            let (dst, srcConn, dstConn) = (migration.target, migration.sourceConnection, migration.targetConnection)
            defer {
                Task {
                    await srcConn.close()
                    await dstConn.close()
                }
            }
            _ = try await srcConn.send("MIGRATE", "127.0.0.1", .int(dst.port), "{t}a", 0, 5000)
            await #expect(throws: RESPError.self) { _ = try await srcConn.send("MGET", "{t}a", "{t}b") }

            // The migration ends seconds later: TRYAGAIN (and ASK) until then, retried for the time budget.
            let finisher = Task {
                try await Task.sleep(for: .seconds(5))
                try await cluster.migrate(slot: slot, to: dst)
            }
            let started = ContinuousClock.now
            let reply: RESPValue
            do {
                reply = try await client.send(RESPCommand("MGET", "{t}a", "{t}b"))
            } catch {
                Issue.record("MGET during the migration gave up after \(ContinuousClock.now - started): \(error)")
                throw error
            }
            #expect(reply.array?.compactMap(\.string) == ["1", "2"])
            try await finisher.value
        }
    }

    @Test func shardedPubSubFollowsItsSlot() async throws {
        try await withRedisCluster { cluster in
            let client = try await RESPClusterClient.connect(seeds: cluster.seeds, configuration: cluster.configuration)
            let subscriber = RESPClusterSubscriber(cluster: client)
            defer {
                Task {
                    await subscriber.close()
                    await client.close()
                }
            }
            let received = NIOLockedValueBox([String: [String]]())
            // Channels spread over every node.
            let channels = (0..<12).map { "ch:{\($0)}" }
            #expect(Set(channels.map { client.node(forSlot: RESPClusterSlot.slot(for: $0))! }).count == 3)
            let subscription = try await subscriber.subscribe(channels) { message in
                received.withLockedValue { $0[message.channel, default: []].append(message.payload.text) }
            }
            let events = Task { () -> [RESPClientEvent] in
                var seen: [RESPClientEvent] = []
                for await event in subscriber.events {
                    seen.append(event)
                    if event == .reconnected { break }
                }
                return seen
            }
            for channel in channels { _ = try await client.spublish(channel, "one") }
            #expect(try await eventually { received.withLockedValue { $0.values.reduce(0) { $0 + $1.count } } == 12 })

            // Move the slot of one channel: its node drops the subscription, which is made
            // again on the new owner; messages published there arrive.
            let moved = channels[0]
            let slot = RESPClusterSlot.slot(for: moved)
            let source = try await cluster.server(owning: slot)
            let target = cluster.servers.first { $0 !== source }!
            try await cluster.migrate(slot: slot, to: target)
            #expect(try await eventually { subscriber.node(of: moved)?.port == target.port })
            #expect(try await events.value == [.disconnected, .reconnected])
            _ = try await client.spublish(moved, "two")
            #expect(try await eventually { received.withLockedValue { $0[moved] } == ["one", "two"] })

            // One local unsubscribe ends delivery of all its channels.
            try await subscription.unsubscribe()
            #expect(subscriber.subscribedChannels.isEmpty)
            _ = try await client.spublish(channels[1], "after")
            try await Task.sleep(for: .milliseconds(200))
            #expect(received.withLockedValue { $0[channels[1]] } == ["one"])
        }
    }

    @Test func restartedNodeGetsItsSubscriptionsBack() async throws {
        try await withRedisCluster { cluster in
            let client = try await RESPClusterClient.connect(seeds: cluster.seeds, configuration: cluster.configuration)
            let subscriber = RESPClusterSubscriber(cluster: client)
            defer {
                Task {
                    await subscriber.close()
                    await client.close()
                }
            }
            let received = NIOLockedValueBox([String]())
            let channel = "restart:{x}"
            let slot = RESPClusterSlot.slot(for: channel)
            let owner = try await cluster.server(owning: slot)
            _ = try await subscriber.subscribe([channel]) { message in received.withLockedValue { $0.append(message.payload.text) } }
            let events = Task { () -> [RESPClientEvent] in
                var seen: [RESPClientEvent] = []
                for await event in subscriber.events {
                    seen.append(event)
                    if event == .reconnected { break }
                }
                return seen
            }
            // The node crashes: its slots are unserved, commands for them fail after retrying.
            owner.stop()
            await #expect(throws: (any Error).self) { _ = try await client.spublish(channel, "lost") }
            // It comes back with its node id and slots (nodes.conf); the subscription follows.
            try await owner.start()
            #expect(try await cluster.waitUntilOK())
            #expect(try await events.value == [.disconnected, .reconnected])
            #expect(
                try await eventually(timeout: .seconds(20)) {
                    (try? await client.spublish(channel, "back")) != nil && received.withLockedValue { $0.contains("back") }
                })
        }
    }
}
