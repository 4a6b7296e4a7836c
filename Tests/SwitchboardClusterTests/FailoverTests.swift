import Foundation
import NIOConcurrencyHelpers
import RESP
import RedisTestSupport
import SwitchboardClient
import SwitchboardTesting
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A real Redis Cluster (3 masters, 3 replicas) under real nodes, failed over as an operator
/// would see it: a master whose replica lagged dies, the replica takes over.
@Suite("Redis Cluster failover", .serialized, .timeLimit(.minutes(5)))
struct FailoverTests {
    /// A stream whose keys live on the master `owner` says (or on any other master).
    static func stream(_ prefix: String, in cluster: RedisCluster, where keep: (RedisServer) -> Bool) async throws -> (String, RedisServer) {
        for i in 0..<1000 {
            let stream = "/streams/\(prefix)\(i)"
            let owner = try await cluster.server(owning: RESPClusterSlot.slot(for: "sb:{\(stream)}:meta"))
            if keep(owner) { return (stream, owner) }
        }
        throw ClusterTestFailure("no stream found")
    }

    /// Collects what a client hands over and the streams it was told were not recovered.
    final class Watch: @unchecked Sendable {
        private let box = NIOLockedValueBox<(messages: [ClientMessage], notRecovered: [String])>(([], []))
        private var tasks: [Task<Void, Never>] = []

        init(_ client: SwitchboardClient, _ subscription: ClientSubscription) {
            self.tasks.append(
                Task { [box] in
                    for await message in subscription { box.withLockedValue { $0.messages.append(message) } }
                })
            self.tasks.append(
                Task { [box] in
                    for await event in client.events {
                        if case .notRecovered(let stream) = event { box.withLockedValue { $0.notRecovered.append(stream) } }
                    }
                })
        }

        var messages: [ClientMessage] { self.box.withLockedValue { $0.messages } }
        var notRecovered: [String] { self.box.withLockedValue { $0.notRecovered } }

        deinit { for task in self.tasks { task.cancel() } }
    }

    /// Publishes through `node`, retrying while the stream's slot fails over (503).
    static func publish(_ node: NodeProcess, _ stream: String, _ data: String, key: String) async throws -> NodeProcess.Reply {
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            let reply = try await node.api("POST", "/publish", ["stream": stream, "data": data, "idempotencyKey": key])
            if reply.status != 503 || ContinuousClock.now > deadline { return reply }
            #expect(!reply.body.contains("127.0.0.1") && !reply.body.contains("Failure"), "a 503 names no internals: \(reply.body)")
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    @Test func aFailoverThatLostWritesIsAnEpochChangeAndAPartialOutageStaysPartial() async throws {
        try await withRedisCluster(masters: 3, replicas: 1) { cluster in
            let seeds = "redis://" + cluster.seeds.map { "\($0.host):\($0.port)" }.joined(separator: ",")
            var nodes: [NodeProcess] = []
            defer { for node in nodes { node.kill() } }
            do {
                for i in 0..<2 { nodes.append(try await NodeProcess(id: "fnode\(i)", redis: seeds, cluster: true)) }
                let (stream, master) = try await Self.stream("failover", in: cluster) { _ in true }
                let (healthy, _) = try await Self.stream("healthy", in: cluster) { $0 !== master }
                let replica = try #require(cluster.replicas(of: master).first)

                let live = try await ClusterTests.client("live", [nodes[0]])
                // Connected before the failover (an upgrade whose session lives on the failing
                // master would get 503 and retry).
                let other = try await ClusterTests.client("other", [nodes[1]])
                let returning = try await ClusterTests.client("returning", [nodes[1]])
                let watch = Watch(live, try await live.subscribe(stream))
                for i in 1...10 { #expect(try await Self.publish(nodes[1], stream, "m\(i)", key: "m\(i)").status == 201) }
                #expect(try await eventually { watch.messages.count == 10 })

                // The replica stops replicating: what the master acknowledges from now on is lost
                // when it dies.
                let r = try await cluster.connect(replica)
                let m = try await cluster.connect(master)
                _ = try await r.send("CONFIG", "SET", "masterauth", "wrong")
                _ = try await m.send("CLIENT", "KILL", "TYPE", "replica")
                #expect(try await eventually { (try? await r.send("INFO", "replication").string)?.contains("master_link_status:down") == true })
                for i in 11...20 { #expect(try await Self.publish(nodes[1], stream, "m\(i)", key: "m\(i)").status == 201) }
                #expect(try await eventually { watch.messages.count == 20 })
                let seen = watch.messages[19]
                #expect(seen.offset == 20 && seen.tag.count == 6)

                // Watch readiness on every node and the healthy shard while the master fails over.
                let readiness = NIOLockedValueBox<[Int]>([])
                let healthyStatuses = NIOLockedValueBox<[Int]>([])
                let polled = nodes
                // Stopped by a flag, never cancelled: cancelling a task inside URLSession's
                // `data(for:)` can deadlock swift-corelibs-foundation (the task's status lock
                // against URLSession's queue), which hung a whole test run here.
                let polling = NIOLockedValueBox(true)
                let poller = Task {
                    var n = 0
                    while polling.withLockedValue({ $0 }) {
                        for node in polled {
                            if let reply = try? await node.get("/health/ready") { readiness.withLockedValue { $0.append(reply.status) } }
                        }
                        n += 1
                        if let reply = try? await polled[n % 2].api("POST", "/publish", ["stream": healthy, "data": "h\(n)"]) {
                            healthyStatuses.withLockedValue { $0.append(reply.status) }
                            if reply.status != 201 { print("healthy publish \(n): \(reply.status) \(reply.body)") }
                        }
                        try? await Task.sleep(for: .milliseconds(100))
                    }
                }
                await m.close()
                master.stop()
                #expect(
                    try await eventually(timeout: .seconds(60)) {
                        (try? await r.send("INFO", "replication").string)?.contains("role:master") == true
                    })
                await r.close()
                // A subscription to a healthy shard is served during and after the failover.
                let otherWatch = Watch(other, try await other.subscribe(healthy))
                // The stream's offsets 11-20 were lost: the promoted replica hands them out again.
                for i in 1...20 { #expect(try await Self.publish(nodes[1], stream, "n\(i)", key: "n\(i)").status == 201) }
                polling.withLockedValue { $0 = false }
                _ = await poller.value

                // The live client was told (SUB410), and never took a new 11-20 for the lost ones.
                // (What was published before the new epoch started is skipped: not recovered
                // means the client refetches its state.) It follows the stream from there.
                #expect(try await eventually(timeout: .seconds(30)) { watch.notRecovered.contains(stream) })
                #expect(try await Self.publish(nodes[1], stream, "final", key: "final").status == 201)
                #expect(try await eventually(timeout: .seconds(30)) { watch.messages.last?.body == "final" })
                // n1-n10 took the lost offsets 11-20 (dropped as already seen: the client has m11-m20
                // there); n11 at offset 21 follows n10, not m20, so it is where the client is told.
                // Handed over as if it followed m20, it would be the silent gap.
                let inOldEpoch = watch.messages.filter { $0.epoch == seen.epoch }
                #expect(Array(inOldEpoch.prefix(20)).map(\.body) == (1...20).map { "m\($0)" })
                #expect(!inOldEpoch.contains { $0.body == "n11" }, "\(inOldEpoch.map(\.body))")
                // A client that resumes after the lost message 20, on a node that never saw it, is told too.
                let returningWatch = Watch(returning, try await returning.subscribe(stream, after: seen))
                #expect(try await eventually { returningWatch.notRecovered.contains(stream) })
                #expect(!returningWatch.messages.contains { $0.epoch == seen.epoch && $0.offset > 20 })

                // A partial outage stayed partial: every node stayed ready, the healthy shard served.
                #expect(!readiness.withLockedValue { $0 }.isEmpty)
                #expect(readiness.withLockedValue { $0 }.allSatisfy { $0 == 200 }, "\(readiness.withLockedValue { $0 })")
                #expect(healthyStatuses.withLockedValue { $0 }.allSatisfy { $0 == 201 }, "\(healthyStatuses.withLockedValue { $0 })")
                if !healthyStatuses.withLockedValue({ $0 }).allSatisfy({ $0 == 201 }) {
                    for node in nodes { print("---- \(node.id) log ----\n\(node.output.suffix(6000))") }
                }
                _ = try await nodes[0].api("POST", "/publish", ["stream": healthy, "data": "after"])
                #expect(try await eventually { otherWatch.messages.last?.body == "after" })
                for client in [live, other, returning] { await client.close() }
            } catch {
                for node in nodes { print("---- \(node.id) log ----\n\(node.output.suffix(6000))") }
                throw error
            }
        }
    }

    /// Readiness on a cluster: a shard away leaves a node ready (above); no node of the
    /// cluster answering makes it not-ready, and it is ready again once they are back.
    @Test func aNodeThatReachesNoNodeOfItsClusterIsNotReady() async throws {
        try await withRedisCluster(masters: 3) { cluster in
            let seeds = "redis://" + cluster.seeds.map { "\($0.host):\($0.port)" }.joined(separator: ",")
            let node = try await NodeProcess(id: "lonely", redis: seeds, cluster: true)
            defer { node.kill() }
            for server in cluster.servers { server.stop() }
            #expect(try await eventually(timeout: .seconds(30)) { (try? await node.get("/health/ready"))?.status == 503 })
            for server in cluster.servers { try await server.start() }
            #expect(try await cluster.waitUntilOK())
            #expect(try await eventually(timeout: .seconds(60)) { await node.isReady() })
        }
    }

    /// The chaos suite on a cluster: nodes SIGKILLed and restarted in turn, and the master of the
    /// stream's slot SIGKILLed mid-run (its replica takes over). Every subscriber gets every
    /// accepted message once, in order; or, where the failover lost writes the master had
    /// acknowledged (asynchronous replication), it is told (not recovered) and what it got is
    /// still in order, without duplicates.
    @Test func chaosOnARedisClusterLosesNothingSilently() async throws {
        try await withRedisCluster(masters: 3, replicas: 1) { cluster in
            let seeds = "redis://" + cluster.seeds.map { "\($0.host):\($0.port)" }.joined(separator: ",")
            var nodes: [NodeProcess] = []
            defer { for node in nodes { node.kill() } }
            do {
                for i in 0..<3 { nodes.append(try await NodeProcess(id: "chaos\(i)", redis: seeds, cluster: true)) }
                let (stream, master) = try await Self.stream("chaos", in: cluster) { _ in true }
                let total = 600
                var subscribers: [(SwitchboardClient, Watch)] = []
                for i in 0..<6 {
                    let client = try await ClusterTests.client("csub\(i)", (0..<3).map { nodes[(i + $0) % 3] })
                    subscribers.append((client, Watch(client, try await client.subscribe(stream))))
                }
                let accepted = NIOLockedValueBox(0)
                let publisher = ClusterTests.publisher(total, to: stream, on: nodes, accepted: accepted)
                var acceptedAtFailover = 0
                for round in 0..<4 {
                    try await Task.sleep(for: .milliseconds(600))
                    if round == 1 {
                        acceptedAtFailover = accepted.withLockedValue { $0 }
                        master.stop()
                    }
                    let victim = nodes[round % 3]
                    victim.kill()
                    try await Task.sleep(for: .milliseconds(300))
                    try await victim.start()
                }
                try await publisher.value
                #expect(acceptedAtFailover > 0 && acceptedAtFailover < total)
                #expect(accepted.withLockedValue { $0 } == total)
                let expected = (1...total).map(String.init)
                for (i, (_, watch)) in subscribers.enumerated() {
                    _ = try await eventually(timeout: .seconds(20)) { watch.messages.last?.body == "\(total)" }
                    let received = watch.messages.map(\.body)
                    print(
                        "subscriber \(i): \(received.count) messages, last \(received.last ?? "-"), first gap after \(Array(zip(received, expected)).firstIndex { $0 != $1 }.map { received[max(0, $0 - 1)] } ?? "none"), notRecovered \(watch.notRecovered)"
                    )
                    let numbers = received.compactMap(Int.init)
                    #expect(numbers == numbers.sorted() && Set(numbers).count == numbers.count, "subscriber \(i): out of order or twice")
                    if received != expected {
                        #expect(watch.notRecovered.contains(stream), "subscriber \(i) missed \(total - received.count) messages without being told")
                    }
                }
                print(
                    "cluster chaos: \(total) messages, 6 subscribers on 3 nodes, 4 node kills, 1 master failover; "
                        + "\(subscribers.filter { $0.1.messages.count == total }.count) subscribers got every message")
                for (client, _) in subscribers { await client.close() }
            } catch {
                for node in nodes { print("---- \(node.id) log ----\n\(node.output.suffix(6000))") }
                throw error
            }
        }
    }
}
