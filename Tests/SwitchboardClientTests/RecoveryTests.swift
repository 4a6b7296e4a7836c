import Foundation
import NIOConcurrencyHelpers
import SwitchboardClient
import SwitchboardWire
import Testing

/// What the client does when the server could not do what it asked (protocol §4.4, §7) and
/// what it names when it resumes (§4.1).
@Suite(.timeLimit(.minutes(1))) struct RecoveryTests {
    @Test func anAckAnsweredWith503IsSentAgain() async throws {
        let acks = NIOLockedValueBox(0)
        let server = FakeServer { connection, frame in
            switch frame.method {
            case .sub:
                subReply(connection, frame)
                connection.send("PUSH200|\(frame.target)|id=1;e=E1;t=aaaaaa|one")
            case .ack:
                // The first ack is lost (the node's engine was away).
                if acks.withLockedValue({
                    $0 += 1
                    return $0
                }) == 1 {
                    connection.send("ACK503|\(frame.target)||{\"error\":\"ack_failed\"}")
                }
            default: break
            }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: testConfiguration())
        try await client.connect()
        _ = try await take(1, from: try await client.subscribe("/rooms/a"))
        try await eventually("the ack again") {
            server.frames(.ack).filter { $0.frame.target == "/rooms/a" && $0.frame.meta["id"] == "1" }.count >= 2
        }
        await client.close()
        await server.stop()
    }

    @Test func requestsLeftUnansweredBy4429AreSentAgainWithTheirKeyAfterAPause() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .post else { return }
            if connection.index == 0 {
                // Kept over the rate limit: closed before answering.
                if frame.meta["r"] == "2" { connection.close(code: 4429, reason: "rate limit") }
            } else {
                connection.send("POST201|\(frame.target)|r=\(frame.meta["r"]!)|{\"k\":\"\(frame.meta["k"] ?? "")\"}")
            }
        }
        try await server.start()
        var configuration = testConfiguration()
        configuration.rateLimitPause = .milliseconds(600)
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: configuration)
        try await client.connect()
        let start = ContinuousClock.now
        async let first = client.request("POST", "/rooms/a/messages", body: "one")
        async let second = client.request("POST", "/rooms/a/messages", body: "two", idempotencyKey: "mine")
        let (a, b) = try await (first, second)
        #expect(ContinuousClock.now - start >= .milliseconds(600), "waited the rate-limit pause")
        #expect(a.status == 201 && b.status == 201)
        // The same keys both times: one made up by the client, one given by the application.
        let posts = server.frames(.post)
        let keys = Dictionary(grouping: posts, by: { $0.frame.bodyString }).mapValues { Set($0.map { $0.frame.meta["k"] ?? "" }) }
        #expect(keys["two"] == ["mine"])
        #expect(keys["one"]?.count == 1 && keys["one"]?.first?.count == 16)
        #expect(posts.filter { $0.connection == 1 }.count == 2)
        #expect(b.body.contains("mine"))
        await client.close()
        await server.stop()
    }

    @Test func aResumeNamesTheTagOfTheLastMessageAndForgetsItAfterANotRecovered() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .sub else { return }
            switch connection.index {
            case 0:
                subReply(connection, frame)
                connection.send("PUSH200|\(frame.target)|id=1;e=E1;t=tag001|one")
                connection.send("PUSH200|\(frame.target)|id=2;e=E1;t=tag002|two")
            case 1:
                // Not recovered: the history was rolled back.
                connection.send("SUB410|\(frame.target)|r=\(frame.meta["r"]!);id=5;e=E1;recovered=0|")
            default:
                subReply(connection, frame)
            }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: testConfiguration())
        try await client.connect()
        let subscription = try await client.subscribe("/rooms/t")
        let messages = try await take(2, from: subscription)
        #expect(messages.map(\.tag) == ["tag001", "tag002"])
        await client.simulateNetworkLoss()
        try await eventually("second SUB") { server.frames(.sub).filter { $0.frame.target == "/rooms/t" }.count == 2 }
        let resume = server.frames(.sub).filter { $0.frame.target == "/rooms/t" }[1].frame
        #expect(resume.meta["since"] == "2" && resume.meta["e"] == "E1" && resume.meta["t"] == "tag002")
        try await eventually("the SUB410 applied") { client.lastOffset(of: "/rooms/t") == 5 }
        await client.simulateNetworkLoss()
        try await eventually("third SUB") { server.frames(.sub).filter { $0.frame.target == "/rooms/t" }.count == 3 }
        let after410 = server.frames(.sub).filter { $0.frame.target == "/rooms/t" }[2].frame
        #expect(after410.meta["since"] == "5" && after410.meta["t"] == nil)
        await client.close()
        await server.stop()
    }

    @Test func anApplicationResumesAfterAMessageItKept() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .sub else { return }
            subReply(connection, frame)
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: testConfiguration())
        try await client.connect()
        let kept = ClientMessage(stream: "/rooms/k", offset: 41, epoch: "E7", tag: "kept41", body: "")
        _ = try await client.subscribe("/rooms/k", after: kept)
        let sub = try #require(server.frames(.sub).first { $0.frame.target == "/rooms/k" }?.frame)
        #expect(sub.meta["since"] == "41" && sub.meta["e"] == "E7" && sub.meta["t"] == "kept41")
        await client.close()
        await server.stop()
    }

    /// A resubscription the server cannot do for now (SUB503: its engine's shard is failing over)
    /// is sent again, not given up: the stream must not silently stop.
    @Test func aResubscriptionAnswered503IsSentAgain() async throws {
        try await Self.resubscriptionAnsweredOnce { r in #"SUB503|/rooms/r|r=\#(r)|{"error":"subscribe_failed"}"# }
    }

    /// The second SUB of `/rooms/r` (the resubscription after a reconnect) is answered with
    /// `refusal(r)`: the client sends it again, and the stream goes on (three SUBs in all).
    static func resubscriptionAnsweredOnce(with refusal: @escaping @Sendable (String) -> String) async throws {
        let subs = NIOLockedValueBox(0)
        let server = FakeServer { connection, frame in
            guard frame.method == .sub, frame.target == "/rooms/r" else { return }
            let n = subs.withLockedValue {
                $0 += 1
                return $0
            }
            if connection.index == 1 && n == 2 {
                connection.send(refusal(frame.meta["r"]!))
            } else {
                subReply(connection, frame, top: 7)
                if connection.index == 1 { connection.send("PUSH200|/rooms/r|id=8;e=E1;t=tag008|after") }
            }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: testConfiguration())
        try await client.connect()
        let subscription = try await client.subscribe("/rooms/r")
        await client.simulateNetworkLoss()
        let after = try await take(1, from: subscription)
        #expect(after.map(\.body) == ["after"])
        #expect(subs.withLockedValue { $0 } == 3)
        await client.close()
        await server.stop()
    }
}
