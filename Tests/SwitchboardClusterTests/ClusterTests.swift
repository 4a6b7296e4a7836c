import Foundation
import NIOConcurrencyHelpers
import RedisTestSupport
import SwitchboardClient
import SwitchboardTesting
import Testing

/// Several `switchboard serve` processes on one Redis (or Redis Cluster), clients spread over
/// them: what one sends, the others get; a client resumes on another node; nodes and Redis
/// die and come back, and nothing accepted is lost.
@Suite("Nodes over Redis", .serialized, .timeLimit(.minutes(5)))
struct ClusterTests {
    // MARK: helpers

    static func client(_ user: String, _ nodes: [NodeProcess]) async throws -> SwitchboardClient {
        let token = try await TestTokens.make(user: user, expiresIn: 3600, secret: NodeProcess.secret)
        var configuration = SwitchboardClientConfiguration()
        configuration.minReconnectDelay = .milliseconds(50)
        configuration.maxReconnectDelay = .milliseconds(500)
        configuration.ackInterval = .milliseconds(200)
        let client = SwitchboardClient(urls: nodes.map(\.url), token: { token }, configuration: configuration)
        try await client.connect()
        return client
    }

    /// The chaos publisher: message i (body "i", idempotency key "mi") is retried on the next
    /// node until one accepts it; `accepted` is the last accepted i.
    static func publisher(_ total: Int, to stream: String, on nodes: [NodeProcess], accepted: NIOLockedValueBox<Int>) -> Task<Void, Error> {
        Task {
            var attempt = 0
            for i in 1...total {
                while true {
                    let node = nodes[attempt % nodes.count]
                    attempt += 1
                    if node.isRunning,
                        let reply = try? await node.api("POST", "/publish", ["stream": stream, "data": "\(i)", "idempotencyKey": "m\(i)"]),
                        reply.status == 201
                    {
                        accepted.withLockedValue { $0 = i }
                        break
                    }
                    try await Task.sleep(for: .milliseconds(20))
                }
                try await Task.sleep(for: .milliseconds(8))
            }
        }
    }

    /// Collects the bodies a subscription hands to the application, in order.
    final class Inbox: @unchecked Sendable {
        private let bodies = NIOLockedValueBox([String]())
        private var task: Task<Void, Never>?

        init(_ subscription: ClientSubscription) {
            self.task = Task { [bodies] in
                for await message in subscription { bodies.withLockedValue { $0.append(message.body) } }
            }
        }

        var received: [String] { self.bodies.withLockedValue { $0 } }

        func waitFor(_ count: Int, timeout: Duration = .seconds(30)) async throws -> [String] {
            _ = try await eventually(timeout: timeout) { self.received.count >= count }
            return self.received
        }

        deinit { self.task?.cancel() }
    }

    static func withNodes<T>(
        _ count: Int, redisArgs: [String] = [], extra: [String] = [], _ body: (RedisServer, [NodeProcess]) async throws -> T
    ) async throws -> T {
        let redis = try await RedisServer(extraArgs: redisArgs)
        defer { redis.stop() }
        var nodes: [NodeProcess] = []
        do {
            for i in 0..<count { nodes.append(try await NodeProcess(id: "node\(i)", redis: redis.url, extra: extra)) }
            let result = try await body(redis, nodes)
            for node in nodes { node.kill() }
            return result
        } catch {
            for node in nodes {
                print("---- \(node.id) log ----\n\(node.output.suffix(4000))")
                node.kill()
            }
            throw error
        }
    }

    // MARK: tests

    @Test func usersOnDifferentNodesExchangeDirectGroupAndBroadcastMessages() async throws {
        try await Self.withNodes(3) { _, nodes in
            // ann has a tab on node 0 and one on node 1; bob is on node 2.
            let annA = try await Self.client("ann", [nodes[0]])
            let annB = try await Self.client("ann", [nodes[1]])
            let bob = try await Self.client("bob", [nodes[2]])
            let annAInbox = Inbox(annA.messages("/users/ann"))
            let annBInbox = Inbox(annB.messages("/users/ann"))
            let bobInbox = Inbox(bob.messages("/users/bob"))
            let broadcasts = [annA, annB, bob].map { Inbox($0.messages("/broadcast")) }
            let room = [Inbox(try await annA.subscribe("/streams/room")), Inbox(try await bob.subscribe("/streams/room"))]

            // Direct, through the server API of a node neither user is on.
            #expect(try await nodes[2].api("POST", "/users/ann/messages", ["data": "for ann"]).status == 201)
            #expect(try await nodes[0].api("POST", "/users/bob/messages", ["data": ["json": true]]).status == 201)
            // Group: bob posts from node 2, ann receives on node 0.
            let posted = try await bob.request("POST", "/streams/room", body: "hello room")
            #expect(posted.status == 201)
            // Everyone.
            #expect(try await nodes[1].api("POST", "/broadcast", ["data": "to all"]).status == 201)

            #expect(try await annAInbox.waitFor(1) == ["for ann"])
            #expect(try await annBInbox.waitFor(1) == ["for ann"])
            #expect(try await bobInbox.waitFor(1) == [#"{"json":true}"#])
            for inbox in room { #expect(try await inbox.waitFor(1) == ["hello room"]) }
            for inbox in broadcasts { #expect(try await inbox.waitFor(1) == ["to all"]) }

            // Every node is listed, with its address.
            let listed = try await nodes[0].api("GET", "/nodes").json as? [String: Any]
            let ids = (listed?["nodes"] as? [[String: Any]])?.compactMap { $0["id"] as? String }
            #expect(ids == ["node0", "node1", "node2"])
            for client in [annA, annB, bob] { await client.close() }
        }
    }

    @Test func aClientResumesOnAnotherNodeWithExactlyWhatItMissed() async throws {
        try await Self.withNodes(2) { _, nodes in
            // Connects to node 0; every reconnect goes to the next node.
            let client = try await Self.client("carol", nodes)
            let session = client.session
            let inbox = Inbox(try await client.subscribe("/streams/resume"))
            for i in 1...3 { _ = try await nodes[1].api("POST", "/publish", ["stream": "/streams/resume", "data": "m\(i)"]) }
            #expect(try await inbox.waitFor(3) == ["m1", "m2", "m3"])

            // Node 0 dies; while the client is away, more is published.
            nodes[0].kill()
            for i in 4...6 { _ = try await nodes[1].api("POST", "/publish", ["stream": "/streams/resume", "data": "m\(i)"]) }
            #expect(try await inbox.waitFor(6) == ["m1", "m2", "m3", "m4", "m5", "m6"])
            #expect(client.session == session)
            _ = try await nodes[1].api("POST", "/publish", ["stream": "/streams/resume", "data": "m7"])
            #expect(try await inbox.waitFor(7).count == 7)
            #expect(inbox.received.last == "m7")
            await client.close()
        }
    }

    @Test func aResumedSessionClosesItsOldConnectionOnTheOtherNode() async throws {
        try await Self.withNodes(2) { _, nodes in
            let first = try await Self.client("dave", [nodes[0]])
            let session = try #require(first.session)
            var closed = first.events.makeAsyncIterator()
            // A second client takes the session over on node 1 (as a page moved to another tab would).
            let token = try await TestTokens.make(user: "dave", secret: NodeProcess.secret)
            let second = SwitchboardClient(url: nodes[1].url + "?sid=\(session)", token: { token })
            try await second.connect()
            #expect(second.session == session)
            var codes: [UInt16?] = []
            while let event = await closed.next() {
                if case .disconnected(let code, _) = event { codes.append(code) }
                if event == .closed { break }
            }
            #expect(codes == [4409])
            await second.close()
        }
    }

    @Test func chaosKillsNodesAndRestartsRedisWithoutLosingAcceptedMessages() async throws {
        let directory = NSTemporaryDirectory() + "switchboard-chaos-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Every accepted write is on disk before Redis answers, so a crash loses nothing accepted.
        let aof = ["--appendonly", "yes", "--appendfsync", "always", "--dir", directory]
        try await Self.withNodes(3, redisArgs: aof) { redis, nodes in
            let total = 600
            let stream = "/streams/chaos"
            // Six subscribers, two starting on each node; each reconnect moves to the next node.
            var subscribers: [(SwitchboardClient, Inbox)] = []
            for i in 0..<6 {
                let order = (0..<3).map { nodes[(i + $0) % 3] }
                let client = try await Self.client("sub\(i)", order)
                subscribers.append((client, Inbox(try await client.subscribe(stream))))
            }
            let notRecovered = NIOLockedValueBox(0)
            let reconnects = NIOLockedValueBox(0)
            let watchers = subscribers.map { client, _ in
                Task {
                    for await event in client.events {
                        switch event {
                        case .notRecovered: notRecovered.withLockedValue { $0 += 1 }
                        case .connected(_, let resumed) where resumed: reconnects.withLockedValue { $0 += 1 }
                        default: break
                        }
                    }
                }
            }

            let accepted = NIOLockedValueBox(0)
            let publisher = Self.publisher(total, to: stream, on: nodes, accepted: accepted)

            // Chaos while the publisher runs: kill and restart each node in turn, and restart
            // Redis (SIGKILL) once.
            var kills = 0
            var acceptedAtRedisRestart = 0
            for round in 0..<4 {
                try await Task.sleep(for: .milliseconds(500))
                if round == 2 {
                    acceptedAtRedisRestart = accepted.withLockedValue { $0 }
                    redis.stop()
                    try await Task.sleep(for: .milliseconds(300))
                    try await redis.start()
                }
                let victim = nodes[round % 3]
                victim.kill()
                kills += 1
                try await Task.sleep(for: .milliseconds(300))
                try await victim.start()
            }
            // The restart really happened mid-run.
            #expect(acceptedAtRedisRestart > 0 && acceptedAtRedisRestart < total)
            try await publisher.value
            #expect(accepted.withLockedValue { $0 } == total)

            let expected = (1...total).map(String.init)
            for (i, (_, inbox)) in subscribers.enumerated() {
                let received = try await inbox.waitFor(total, timeout: .seconds(60))
                #expect(
                    received == expected,
                    "subscriber \(i): \(received.count) messages, first difference at \(Array(zip(received, expected)).firstIndex { $0 != $1 } ?? received.count)"
                )
            }
            #expect(notRecovered.withLockedValue { $0 } == 0)
            print(
                "chaos: \(total) messages to \(subscribers.count) subscribers on 3 nodes; \(kills) node kills, 1 Redis restart, \(reconnects.withLockedValue { $0 }) resumed reconnects"
            )
            for watcher in watchers { watcher.cancel() }
            for (client, _) in subscribers { await client.close() }
        }
    }

    @Test func aNodeJoinsMidRunAndADrainedNodesClientsMoveWithoutLoss() async throws {
        try await Self.withNodes(2) { redis, nodes in
            let stream = "/streams/drain"
            // Two clients on node 0 (moving to node 1 when it drains).
            let clients = [try await Self.client("e1", [nodes[0], nodes[1]]), try await Self.client("e2", [nodes[0], nodes[1]])]
            let inboxes = try await clients.asyncMap { Inbox(try await $0.subscribe(stream)) }
            for i in 1...5 { _ = try await nodes[1].api("POST", "/publish", ["stream": stream, "data": "\(i)"]) }

            // A third node starts with the same Redis URL: nothing else changes, it serves at once.
            let joined = try await NodeProcess(id: "node2", redis: redis.url)
            defer { joined.kill() }
            let late = try await Self.client("e3", [joined])
            let lateInbox = Inbox(try await late.subscribe(stream))
            let listed = try await nodes[0].api("GET", "/nodes").json as? [String: Any]
            #expect((listed?["nodes"] as? [[String: Any]])?.count == 3)

            // Node 0 drains: its clients are told 4503 and resume on node 1.
            var events = clients[0].events.makeAsyncIterator()
            let drained = Task { await nodes[0].terminate() }
            for i in 6...10 { _ = try await nodes[1].api("POST", "/publish", ["stream": stream, "data": "\(i)"]) }
            var code: UInt16?
            while let event = await events.next() {
                if case .disconnected(let c, _) = event {
                    code = c
                    break
                }
            }
            #expect(code == 4503)
            await drained.value
            for inbox in inboxes { #expect(try await inbox.waitFor(10) == (1...10).map(String.init)) }
            #expect(try await lateInbox.waitFor(5) == (6...10).map(String.init))
            // The drained node left the registry.
            let after = try await nodes[1].api("GET", "/nodes").json as? [String: Any]
            #expect((after?["nodes"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == ["node1", "node2"])
            for client in clients + [late] { await client.close() }
        }
    }

    @Test func whileRedisIsAwayClientsStayPublishesFailAndTheNodeIsNotReady() async throws {
        try await Self.withNodes(1) { redis, nodes in
            let node = nodes[0]
            let client = try await Self.client("frank", [node])
            var events = client.events.makeAsyncIterator()
            let inbox = Inbox(try await client.subscribe("/streams/outage"))
            _ = try await node.api("POST", "/publish", ["stream": "/streams/outage", "data": "before"])
            #expect(try await inbox.waitFor(1) == ["before"])

            redis.stop()
            #expect(try await eventually { (try? await node.get("/health/ready").status) == 503 })
            let refused = try await node.api("POST", "/publish", ["stream": "/streams/outage", "data": "refused"])
            #expect(refused.status == 503)
            #expect(try await client.request("POST", "/streams/outage", body: "refused too").status == 503)

            // Redis comes back without its data: the node is ready again, the client (still
            // connected on its first connection) is told its stream's history is gone, and
            // what is published from now on arrives.
            try await redis.start()
            #expect(try await eventually(timeout: .seconds(30)) { await node.isReady() })
            var sawNotRecovered = false
            while let event = await events.next() {
                if case .disconnected = event { Issue.record("the client was disconnected during the outage") }
                if case .notRecovered(let stream) = event, stream == "/streams/outage" {
                    sawNotRecovered = true
                    break
                }
            }
            #expect(sawNotRecovered)
            _ = try await node.api("POST", "/publish", ["stream": "/streams/outage", "data": "after"])
            #expect(try await inbox.waitFor(2) == ["before", "after"])
            await client.close()
        }
    }

    @Test func groupMessagesOnARedisCluster() async throws {
        try await withRedisCluster { cluster in
            let seeds = "redis://" + cluster.seeds.map { "\($0.host):\($0.port)" }.joined(separator: ",")
            var nodes: [NodeProcess] = []
            defer { for node in nodes { node.kill() } }
            do {
                for i in 0..<3 { nodes.append(try await NodeProcess(id: "cnode\(i)", redis: seeds, cluster: true)) }
                let clients = try await (0..<3).asyncMap { try await Self.client("u\($0)", [nodes[$0]]) }
                // Streams land on different masters; every client subscribes to all of them.
                let streams = (0..<6).map { "/streams/shard\($0)" }
                var inboxes: [[Inbox]] = []
                for client in clients { inboxes.append(try await streams.asyncMap { Inbox(try await client.subscribe($0)) }) }
                for (i, stream) in streams.enumerated() {
                    for m in 1...3 { #expect(try await nodes[i % 3].api("POST", "/publish", ["stream": stream, "data": "\(m)"]).status == 201) }
                }
                for row in inboxes {
                    for inbox in row { #expect(try await inbox.waitFor(3) == ["1", "2", "3"]) }
                }
                // Direct messages cross nodes through the cluster too.
                let direct = Inbox(clients[2].messages("/users/u2"))
                #expect(try await nodes[0].api("POST", "/users/u2/messages", ["data": "hi u2"]).status == 201)
                #expect(try await direct.waitFor(1) == ["hi u2"])
                for client in clients { await client.close() }
            } catch {
                for node in nodes { print("---- \(node.id) log ----\n\(node.output.suffix(4000))") }
                throw error
            }
        }
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for element in self { out.append(try await transform(element)) }
        return out
    }
}
