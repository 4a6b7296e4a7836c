import Foundation
import NIOCore
import Switchboard
import SwitchboardTesting
import Testing

@Suite("Gateway over real sockets", .timeLimit(.minutes(1)))
struct GatewayTests {
    @Test func oneRouteAnswersOverHTTPAndWebSocket() async throws {
        try await TestApp.withNode { node in
            let http = try await RawSocket.connect(port: node.port)
            let token = try await node.token(user: "ann")
            let reply = try await http.http("GET", "/hello", headers: ["Authorization": "Bearer \(token)"])
            #expect(reply.status == 200)
            // No IdentityMiddleware on this router: HTTP has no identity, WebSocket has the upgrade's.
            #expect(reply.body == "hello anonymous via http")
            await http.close()

            let (ws, _) = try await node.raw(user: "ann")
            try await ws.send("GET|/hello|r=1|")
            let frame = Parsed(try await ws.nextText())
            #expect(frame.head == "GET200")
            #expect(frame.meta["r"] == "1")
            #expect(frame.body == "hello ann via ws")
            await ws.close()
        }
    }

    @Test func middlewareAppliesToBothTransports() async throws {
        try await TestApp.withNode { node in
            let (ann, _) = try await node.raw(user: "ann")
            try await ann.send("GET|/admin|r=1|")
            #expect(Parsed(try await ann.nextText()).head == "GET403")
            let (boss, _) = try await node.raw(user: "boss", roles: ["admin"])
            try await boss.send("GET|/admin|r=2|")
            let ok = Parsed(try await boss.nextText())
            #expect(ok.head == "GET200")
            #expect(ok.body == "welcome, admin")
            let http = try await RawSocket.connect(port: node.port)
            #expect(try await http.http("GET", "/admin").status == 401)
            await ann.close()
            await boss.close()
        }
    }

    @Test func upgradeRefusesBadTokensWith401() async throws {
        try await TestApp.withNode { node in
            let expired = try await TestTokens.make(user: "ann", expiresIn: -60, secret: node.secret)
            let wrongKey = try await TestTokens.make(user: "ann", secret: "another-secret-that-is-32-bytes-long!")
            // alg:none token: header {"alg":"none","typ":"JWT"}, no signature.
            let header = Data(#"{"alg":"none","typ":"JWT"}"#.utf8).base64URL
            let payload = Data(#"{"sub":"ann","exp":9999999999}"#.utf8).base64URL
            let unsigned = "\(header).\(payload)."
            for token in [nil, expired, wrongKey, unsigned, "garbage"] as [String?] {
                let socket = try await RawSocket.connect(port: node.port)
                let reply = try await socket.upgrade(token: token)
                #expect(reply.status == 401, "token \(token ?? "none")")
                #expect(reply.body.contains("unauthorized"))
                await socket.close()
            }
            // Tokens travel in the query string and the subprotocol too.
            let token = try await node.token(user: "ann")
            let viaQuery = try await RawSocket.connect(port: node.port)
            #expect(try await viaQuery.upgrade(path: "/ws?access_token=\(token)").status == 101)
            let viaProtocol = try await RawSocket.connect(port: node.port)
            let reply = try await viaProtocol.upgrade(headers: ["Sec-WebSocket-Protocol": "switchboard.v1, bearer.\(token)"])
            #expect(reply.status == 101)
            #expect(reply.headers["sec-websocket-protocol"] == "switchboard.v1")
            // Wrong path: 404, not an upgrade.
            let wrongPath = try await RawSocket.connect(port: node.port)
            #expect(try await wrongPath.upgrade(path: "/elsewhere", token: token).status == 404)
        }
    }

    @Test func routesToStreamUserSessionAndBroadcast() async throws {
        try await TestApp.withNode { node in
            let (ann1, annSession) = try await node.raw(user: "ann")
            let (ann2, _) = try await node.raw(user: "ann")
            let (bob, _) = try await node.raw(user: "bob")

            // A stream, subscribed through the SUB route.
            try await bob.send("SUB|/rooms/lobby|r=1|")
            let sub = Parsed(try await bob.nextText())
            #expect(sub.head == "SUB200")
            #expect(sub.meta["r"] == "1")
            try await ann1.send(#"POST|/rooms/lobby/messages|r=2|{"text":"hi"}"#)
            #expect(Parsed(try await ann1.nextText()).head == "POST201")
            let push = Parsed(try await bob.nextText())
            #expect(push.head == "PUSH200")
            #expect(push.target == "/rooms/lobby")
            #expect(push.meta["id"] == "1")
            #expect(push.body == #"{"text":"hi"}"#)

            // A user: all of their connections.
            try await node.publisher.send("for ann", toUser: "ann")
            for socket in [ann1, ann2] {
                let p = Parsed(try await socket.nextText())
                #expect(p.target == "/users/ann")
                #expect(p.body == "for ann")
            }
            // One connection, by session.
            try await node.publisher.send("just you", toSession: annSession)
            let direct = Parsed(try await ann1.nextText())
            #expect(direct.target == "/sessions/\(annSession)")
            #expect(direct.body == "just you")
            // Everyone.
            try await node.publisher.broadcast("all")
            for socket in [ann1, ann2, bob] {
                let p = Parsed(try await socket.nextText())
                #expect(p.target == "/broadcast")
                #expect(p.body == "all")
            }
            // Nobody got what was not theirs: the next frame each sees is a reply to a probe.
            for socket in [ann2, bob] {
                try await socket.send("GET|/hello|r=9|")
                #expect(Parsed(try await socket.nextText()).head == "GET200")
            }
        }
    }

    @Test func subscriptionsAreAuthorisedByRoutes() async throws {
        try await TestApp.withNode { node in
            let (ann, _) = try await node.raw(user: "ann")
            try await ann.send("SUB|/rooms/secret|r=1|")
            #expect(Parsed(try await ann.nextText()).head == "SUB403")
            try await ann.send("SUB|/nowhere|r=2|")
            #expect(Parsed(try await ann.nextText()).head == "SUB404")
            try await ann.send("SUB|/users/bob|r=3|")
            #expect(Parsed(try await ann.nextText()).head == "SUB403")
            try await ann.send("UNSUB|/rooms/lobby|r=4|")
            #expect(Parsed(try await ann.nextText()).head == "UNSUB404")
            let (admin, _) = try await node.raw(user: "root", roles: ["admin"])
            try await admin.send("SUB|/rooms/secret|r=5|")
            #expect(Parsed(try await admin.nextText()).head == "SUB200")
        }
    }

    @Test func presenceJoinsAndLeavesAreEventsOfTheirOwnStream() async throws {
        try await TestApp.withNode { node in
            let (watcher, _) = try await node.raw(user: "wendy")
            // Whoever may subscribe to a room may follow its presence; others may not.
            try await watcher.send("SUB|/presence/rooms/lobby|r=1|")
            #expect(Parsed(try await watcher.nextText()).head == "SUB200")
            try await watcher.send("SUB|/presence/rooms/secret|r=2|")
            #expect(Parsed(try await watcher.nextText()).head == "SUB403")

            let (ann, annSession) = try await node.raw(user: "ann")
            try await ann.send("SUB|/rooms/lobby|r=1|")
            #expect(Parsed(try await ann.nextText()).head == "SUB200")
            let join = Parsed(try await watcher.nextText())
            #expect(join.head == "PUSH200" && join.target == "/presence/rooms/lobby" && join.meta["id"] == "1")
            let joined = try JSONSerialization.jsonObject(with: Data(join.body.utf8)) as? [String: String]
            #expect(joined?["event"] == "join" && joined?["user"] == "ann" && joined?["session"] == annSession)
            #expect(try await node.publisher.presence(of: "/rooms/lobby").map(\.user) == ["ann"])
            // Subscribing again (a reposition) is not a second join.
            try await ann.send("SUB|/rooms/lobby|r=2;since=0|")
            #expect(Parsed(try await ann.nextText()).head == "SUB200")

            // Closing the connection (a TCP close, no close frame) is a leave.
            await ann.close()
            let leave = Parsed(try await watcher.nextText())
            #expect(leave.meta["id"] == "2")
            #expect((try JSONSerialization.jsonObject(with: Data(leave.body.utf8)) as? [String: String])?["event"] == "leave")
            #expect(try await node.publisher.presence(of: "/rooms/lobby").isEmpty)
        }
    }

    @Test func resumeReplaysExactlyWhatWasMissedThenLive() async throws {
        try await TestApp.withNode { node in
            let (ann, session) = try await node.raw(user: "ann")
            try await ann.send("SUB|/rooms/r1|r=1|")
            let sub = Parsed(try await ann.nextText())
            let epoch = try #require(sub.meta["e"])
            for i in 1...3 { try await node.publisher.publish("m\(i)", to: "/rooms/r1") }
            for i in 1...3 { #expect(Parsed(try await ann.nextText()).body == "m\(i)") }
            await ann.close()
            // Published while the client is away.
            for i in 4...8 { try await node.publisher.publish("m\(i)", to: "/rooms/r1") }

            let socket = try await RawSocket.connect(port: node.port)
            let reply = try await socket.upgrade(path: "/ws?sid=\(session)", token: try await node.token(user: "ann"))
            #expect(reply.status == 101)
            let hello = Parsed(try await socket.nextText())
            #expect(hello.meta["s"] == session)
            #expect(hello.meta["resumed"] == "1")
            try await socket.send("SUB|/rooms/r1|r=2;since=3;e=\(epoch)|")
            let resumed = Parsed(try await socket.nextText(where: { $0.hasPrefix("SUB") && $0.contains("r=2") }))
            #expect(resumed.head == "SUB200")
            #expect(resumed.meta["recovered"] == "1")
            var bodies: [String] = []
            var offsets: [String] = []
            while bodies.count < 5 {
                let p = Parsed(try await socket.nextText())
                if p.target == "/rooms/r1" {
                    bodies.append(p.body)
                    offsets.append(p.meta["id"] ?? "")
                }
            }
            #expect(bodies == ["m4", "m5", "m6", "m7", "m8"])
            #expect(offsets == ["4", "5", "6", "7", "8"])
            // Then live, without gap or duplicate.
            try await node.publisher.publish("m9", to: "/rooms/r1")
            let live = Parsed(try await socket.nextText(where: { $0.contains("/rooms/r1") }))
            #expect(live.meta["id"] == "9")
            #expect(live.body == "m9")
        }
    }

    @Test func expiredHistoryIsReportedNotSilent() async throws {
        let engine = MemoryEngine(configuration: .init(historySize: 3))
        try await TestApp.withNode(engine: engine) { node in
            let (ann, _) = try await node.raw(user: "ann")
            try await ann.send("SUB|/rooms/r2|r=1|")
            let epoch = try #require(Parsed(try await ann.nextText()).meta["e"])
            for i in 1...10 { try await node.publisher.publish("m\(i)", to: "/rooms/r2") }
            // Offsets 1-7 are gone (only 3 kept): resuming after 2 cannot be recovered.
            try await ann.send("SUB|/rooms/r2|r=2;since=2;e=\(epoch)|")
            let reply = Parsed(try await ann.nextText(where: { $0.contains("r=2") }))
            #expect(reply.head == "SUB410")
            #expect(reply.meta["recovered"] == "0")
            #expect(reply.meta["id"] == "10")
            #expect(reply.body.contains("history_gone"))
            // A different epoch is not recovered either.
            try await ann.send("SUB|/rooms/r2|r=3;since=9;e=otherepoch|")
            #expect(Parsed(try await ann.nextText(where: { $0.contains("r=3") })).head == "SUB410")
        }
    }

    @Test func acksTrimHistory() async throws {
        let engine = MemoryEngine()
        try await TestApp.withNode(engine: engine) { node in
            let (ann, _) = try await node.raw(user: "ann")
            try await ann.send("SUB|/rooms/r3|r=1|")
            _ = try await ann.nextText()
            for i in 1...5 { try await node.publisher.publish("m\(i)", to: "/rooms/r3") }
            for _ in 1...5 { _ = try await ann.nextText() }
            guard case .messages(let before, _) = try await engine.read("/rooms/r3", after: 0, epoch: nil, limit: 100) else {
                Issue.record("history should cover offset 0 before the ack")
                return
            }
            #expect(before.count == 5)
            try await ann.send("ACK|/rooms/r3|r=2;id=4|")
            #expect(Parsed(try await ann.nextText()).head == "ACK200")
            // The only consumer acked 1-4: they are trimmed (by the engine's sweep, within a
            // second or two), 5 stays.
            var trimmed = false
            for _ in 0..<50 where !trimmed {
                if case .gone = try await engine.read("/rooms/r3", after: 0, epoch: nil, limit: 100) {
                    trimmed = true
                } else {
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            #expect(trimmed, "acked messages should be trimmed")
            guard case .messages(let after, _) = try await engine.read("/rooms/r3", after: 4, epoch: nil, limit: 100) else {
                Issue.record("offset 5 should still be readable")
                return
            }
            #expect(after.map(\.offset) == [5])
            // Bad acks are answered.
            try await ann.send("ACK|/rooms/r3|r=3|")
            #expect(Parsed(try await ann.nextText()).head == "ACK400")
            try await ann.send("ACK|/rooms/other|id=1|")
            #expect(Parsed(try await ann.nextText()).head == "ACK404")
        }
    }

    @Test func tokenCanBeRefreshedOverTheSocket() async throws {
        try await TestApp.withNode { node in
            let (ann, _) = try await node.raw(user: "ann")
            let fresh = try await node.token(user: "ann", expiresIn: 7200)
            try await ann.send("AUTH|/|r=1|\(fresh)")
            #expect(Parsed(try await ann.nextText()).head == "AUTH200")
            let other = try await node.token(user: "bob")
            try await ann.send("AUTH|/|r=2|\(other)")
            #expect(Parsed(try await ann.nextText()).head == "AUTH403")
            try await ann.send("AUTH|/|r=3|not-a-token")
            #expect(Parsed(try await ann.nextText()).head == "AUTH401")
        }
    }

    @Test func newerConnectionTakesOverTheSession() async throws {
        try await TestApp.withNode { node in
            let (first, session) = try await node.raw(user: "ann")
            let (_, resumed) = try await node.raw(user: "ann", session: session)
            #expect(resumed == session)
            #expect(try await first.closeCode() == 4409)
            // Another user cannot take the session: they get a new one.
            let (_, bobs) = try await node.raw(user: "bob", session: session)
            #expect(bobs != session)
        }
    }

    @Test func idempotentPublishIsAppliedOnce() async throws {
        try await TestApp.withNode { node in
            let (ann, _) = try await node.raw(user: "ann")
            for r in 1...2 {
                try await ann.send("POST|/rooms/r4/messages|r=\(r);k=abc|once")
                let reply = Parsed(try await ann.nextText())
                #expect(reply.head == "POST201")
                #expect(reply.body == #"{"offset":1}"#)
            }
        }
    }
}

extension Data {
    var base64URL: String {
        self.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
