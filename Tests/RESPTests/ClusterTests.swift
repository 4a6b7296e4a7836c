import Foundation
import NIOCore
import Testing
@testable import RESP

@Suite(.timeLimit(.minutes(1)))
struct ClusterTests {
    @Test func slotHashing() {
        #expect(RESPClusterSlot.crc16(Array("123456789".utf8)) == 0x31C3)
        #expect(RESPClusterSlot.slot(for: "foo") == 12182)
        #expect(RESPClusterSlot.slot(for: "bar") == 5061)
        #expect(RESPClusterSlot.slot(for: "{user1000}.following") == RESPClusterSlot.slot(for: "{user1000}.followers"))
        #expect(RESPClusterSlot.slot(for: "{user1000}.following") == RESPClusterSlot.slot(for: "user1000"))
        #expect(RESPClusterSlot.slot(for: "foo{}{bar}") == RESPClusterSlot.slot(for: "foo{}{bar}")) // empty tag: whole key
        #expect(RESPClusterSlot.slot(for: "foo{{bar}}zap") == RESPClusterSlot.slot(for: "{bar"))
        #expect(RESPClusterSlot.slot(for: ByteBuffer(string: "foo")) == 12182)
        #expect(RESPClusterSlot.routingKey(RESPCommand("EVALSHA", "abc", 1, "k")).map(RESPClusterSlot.slot(for:)) == RESPClusterSlot.slot(for: "k"))
        #expect(RESPClusterSlot.routingKey(RESPCommand("PING")) == nil)
    }

    @Test func clusterRoutingMovedAndAsk() async throws {
        let dir = NSTemporaryDirectory() + "resp-cluster-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var servers: [RedisServer] = []
        var busPorts: [Int] = []
        defer { for s in servers { s.stop() } }
        for i in 0..<3 {
            let busPort = try await freePort()
            busPorts.append(busPort)
            servers.append(try await RedisServer(extraArgs: [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes-\(i)-\(busPort).conf",
                "--cluster-port", String(busPort), "--dir", dir, "--cluster-node-timeout", "5000",
            ]))
        }
        var conns: [RESPConnection] = []
        for s in servers { conns.append(try await RESPConnection.connect(configuration: s.configuration)) }
        defer { for c in conns { Task { await c.close() } } }
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
        for (c, r) in zip(conns, ranges) { _ = try await c.send("CLUSTER", "ADDSLOTSRANGE", .int(r.0), .int(r.1)) }
        for i in 1..<3 { _ = try await conns[0].send("CLUSTER", "MEET", "127.0.0.1", .int(servers[i].port), .int(busPorts[i])) }
        try await eventually(timeout: .seconds(30)) {
            for c in conns {
                guard let info = try? await c.send("CLUSTER", "INFO").string, info.contains("cluster_state:ok"),
                      info.contains("cluster_known_nodes:3") else { return false }
                guard let slots = try? await c.send("CLUSTER", "SLOTS").array, slots.count == 3 else { return false }
            }
            return true
        }

        let cluster = try await RESPClusterClient.connect(seeds: [.init(host: "127.0.0.1", port: servers[0].port)],
                                                          configuration: servers[0].configuration)
        defer { Task { await cluster.close() } }
        for i in 0..<200 { try await cluster.set("key:\(i)", .int(i)) }
        for i in 0..<200 { #expect(try await cluster.get("key:\(i)")?.text == String(i)) }
        var total = 0
        for c in conns {
            let n = try await c.send("DBSIZE").int ?? 0
            #expect(n > 0)
            total += n
        }
        #expect(total == 200)
        for key in ["foo", "bar", "{a}b", "zzz"] {
            #expect(try await conns[0].send("CLUSTER", "KEYSLOT", .string(key)).int == RESPClusterSlot.slot(for: key))
        }
        #expect(try await cluster.run(RESPScript(source: "return redis.call('GET', KEYS[1])"), keys: ["key:7"]).string == "7")

        // MOVED: corrupt the map for "foo"'s slot; the client follows the redirect and fixes it.
        let fooSlot = RESPClusterSlot.slot(for: "foo")
        let owner = try #require(cluster.node(forSlot: fooSlot))
        let wrong = RESPClusterClient.Node(host: "127.0.0.1", port: servers.first { $0.port != owner.port }!.port)
        cluster.setNode(wrong, forSlot: fooSlot)
        try await cluster.set("foo", "bar")
        #expect(cluster.node(forSlot: fooSlot) == owner)
        #expect(try await cluster.get("foo")?.text == "bar")

        // ASK: slot of "{mig}x" is migrating from its owner to another node.
        let migSlot = RESPClusterSlot.slot(for: "{mig}x")
        let src = try #require(cluster.node(forSlot: migSlot))
        let srcIndex = servers.firstIndex { $0.port == src.port }!
        let dstIndex = (srcIndex + 1) % 3
        let srcID = try #require(try await conns[srcIndex].send("CLUSTER", "MYID").string)
        let dstID = try #require(try await conns[dstIndex].send("CLUSTER", "MYID").string)
        _ = try await conns[dstIndex].send("CLUSTER", "SETSLOT", .int(migSlot), "IMPORTING", .string(srcID))
        _ = try await conns[srcIndex].send("CLUSTER", "SETSLOT", .int(migSlot), "MIGRATING", .string(dstID))
        try await cluster.set("{mig}x", "moved-by-ask")
        #expect(try await conns[dstIndex].send("CLUSTER", "COUNTKEYSINSLOT", .int(migSlot)) == .integer(1))
        #expect(try await conns[srcIndex].send("CLUSTER", "COUNTKEYSINSLOT", .int(migSlot)) == .integer(0))
        #expect(try await cluster.get("{mig}x")?.text == "moved-by-ask")
        #expect(cluster.node(forSlot: migSlot) == src) // ASK does not update the map
    }
}

func eventually(timeout: Duration, _ condition: () async -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    Issue.record("condition not met within \(timeout)")
    throw RESPError.timeout
}
