import Foundation
import Hummingbird
import JWTKit
import Switchboard
import SwitchboardTesting
import Testing

/// What hostile, unlucky and careless clients found (the hardening issue): each test fails on
/// the code before its fix.
@Suite("Hardening", .timeLimit(.minutes(2)))
struct HardeningTests {
    /// Claims as an attacker may sign them: any numbers, not the clamped ones `SwitchboardClaims`
    /// writes.
    struct RawClaims: JWTPayload {
        var sub: String
        var exp: Double
        var nbf: Double?
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    static func token(_ claims: RawClaims, secret: String) async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return try await keys.sign(claims)
    }

    static func upgraded(_ node: TestNode, token: String) async throws -> (RawSocket, RawSocket.HTTPReply) {
        let socket = try await RawSocket.connect(port: node.port)
        return (socket, try await socket.upgrade(token: token))
    }

    // MARK: tokens

    @Test func aTokenThatExpiresAfterTheYear9999NeitherCrashesNorOverflows() async throws {
        try await TestApp.withNode { node in
            let huge = try await Self.token(RawClaims(sub: "ann", exp: 1e19), secret: node.secret)
            let (ws, reply) = try await Self.upgraded(node, token: huge)
            #expect(reply.status == 101)
            for _ in 0..<4 { _ = try await ws.nextText() }  // HELLO and the built-in SUBs
            try await ws.send("AUTH|/|r=1|\(huge)")
            let auth = Parsed(try await ws.nextText())
            #expect(auth.head == "AUTH200")
            #expect(auth.body == #"{"expiresAt":253402300799}"#)
            // The node is still there and serves the same connection.
            try await ws.send("GET|/hello|r=2|")
            #expect(Parsed(try await ws.nextText()).head == "GET200")
            // The verifier HTTP routes use reads it the same way.
            let identity = try await TokenVerifier.hs256(secret: node.secret).verify(huge)
            #expect(identity.expiresAtSeconds == 253_402_300_799)
        }
    }

    @Test func aTokenNotValidYetIsRefusedAtTheUpgradeAndOnAuth() async throws {
        try await TestApp.withNode { node in
            let now = Date().timeIntervalSince1970
            let early = try await Self.token(RawClaims(sub: "ann", exp: now + 3600, nbf: now + 600), secret: node.secret)
            let (_, refused) = try await Self.upgraded(node, token: early)
            #expect(refused.status == 401)
            #expect(refused.body.contains("not valid yet"))
            let valid = try await Self.token(RawClaims(sub: "ann", exp: now + 3600, nbf: now - 10), secret: node.secret)
            let (ws, accepted) = try await Self.upgraded(node, token: valid)
            #expect(accepted.status == 101)
            for _ in 0..<4 { _ = try await ws.nextText() }
            try await ws.send("AUTH|/|r=1|\(early)")
            let auth = Parsed(try await ws.nextText())
            #expect(auth.head == "AUTH401")
            #expect(auth.body.contains("not valid yet"))
        }
    }

    @Test func anExpiredTokenIsEnforcedAtItsExpiryNotAtThePingTick() async throws {
        // Pings every hour: only the expiry itself can close these connections.
        try await TestApp.withNode { node in
            // Open with a long-lived token, then refresh both to a short one: the expiry then
            // starts after the connections are open, however slow the machine is to open them.
            let long = try await Self.token(RawClaims(sub: "ann", exp: Date().timeIntervalSince1970 + 3600), secret: node.secret)
            let (busy, _) = try await Self.upgraded(node, token: long)
            let (idle, _) = try await Self.upgraded(node, token: long)
            for _ in 0..<4 {
                _ = try await busy.nextText()
                _ = try await idle.nextText()
            }
            let expiry = Date().timeIntervalSince1970 + 3
            let token = try await Self.token(RawClaims(sub: "ann", exp: expiry), secret: node.secret)
            for ws in [busy, idle] {
                try await ws.send("AUTH|/|r=0|\(token)")
                #expect(Parsed(try await ws.nextText()).head == "AUTH200")
            }
            try await Task.sleep(for: .seconds(max(0, expiry - Date().timeIntervalSince1970) + 0.05))
            // A request right after the expiry is not served: the connection closes with 4401.
            try await busy.send("POST|/rooms/lobby/messages|r=1|{\"text\":\"late\"}")
            #expect(try await busy.closeCode() == 4401)
            // An idle one is closed within a second of its expiry, without a ping.
            let start = ContinuousClock.now
            #expect(try await idle.closeCode() == 4401)
            #expect(ContinuousClock.now - start < .seconds(2))
            // Nothing was published by the late request.
            let history = try await node.publisher.history(of: "/rooms/lobby", after: 0, limit: 10)
            if case .messages(let messages, _) = history { #expect(messages.isEmpty) }
        }
    }

    // MARK: HTTP

    @Test func aMalformedOrOversizedFirstRequestIsAnsweredAndClosed() async throws {
        try await TestApp.withNode { node in
            let cases: [(String, [UInt8], Int)] = [
                ("garbage", Array("HELLO\r\n\r\n".utf8), 400),
                (
                    "100 KB header",
                    Array("GET /hello HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(String(repeating: "a", count: 100_000))\r\n\r\n".utf8), 431
                ),
                ("bad Content-Length", Array("POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".utf8), 400),
                (
                    "Content-Length and Transfer-Encoding",
                    Array("POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".utf8), 400
                ),
            ]
            for (name, bytes, status) in cases {
                let socket = try await RawSocket.connect(port: node.port)
                try await socket.write(bytes)
                let answer = try await socket.readUntilClosed(timeout: .seconds(5))
                #expect(answer.hasPrefix("HTTP/1.1 \(status) "), "\(name): \(answer.prefix(80))")
                #expect(answer.lowercased().contains("connection: close"), "\(name)")
            }
            // After a valid keep-alive request the same bytes are answered too.
            let socket = try await RawSocket.connect(port: node.port)
            #expect(try await socket.http("GET", "/hello").status == 200)
            try await socket.write(Array("HELLO\r\n\r\n".utf8))
            #expect(try await socket.readUntilClosed(timeout: .seconds(5)).hasPrefix("HTTP/1.1 400 "))
        }
    }

    @Test func silentSlowAndIdleConnectionsAreClosedAfterTheirTimeouts() async throws {
        try await TestApp.withNode({
            $0.handshakeTimeout = 0.5
            $0.requestTimeout = 0.5
            $0.idleTimeout = 0.5
        }) { node in
            // A silent TCP connection.
            let silent = try await RawSocket.connect(port: node.port)
            #expect(try await silent.readUntilClosed(timeout: .seconds(5)).isEmpty)
            // Slowloris: a header line now and then, never the end of the head.
            let slow = try await RawSocket.connect(port: node.port)
            try await slow.write(Array("GET /hello HTTP/1.1\r\nHost: x\r\n".utf8))
            let trickle = Task {
                for i in 0..<20 {
                    try? await Task.sleep(for: .milliseconds(200))
                    try? await slow.write(Array("X-\(i): y\r\n".utf8))
                }
            }
            #expect(try await slow.readUntilClosed(timeout: .seconds(5)).isEmpty)
            trickle.cancel()
            // A body that never arrives.
            let upload = try await RawSocket.connect(port: node.port)
            try await upload.write(Array("POST /rooms/x/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc".utf8))
            _ = try await upload.readUntilClosed(timeout: .seconds(5))
            // A kept-alive connection that asks nothing more.
            let idle = try await RawSocket.connect(port: node.port)
            #expect(try await idle.http("GET", "/hello").status == 200)
            #expect(try await idle.readUntilClosed(timeout: .seconds(5)).isEmpty)
            // A WebSocket upgrade is not subject to them: it lives on.
            let (ws, _) = try await node.raw(user: "ann")
            try await Task.sleep(for: .seconds(1))
            try await ws.send("GET|/hello|r=1|")
            #expect(Parsed(try await ws.nextText()).head == "GET200")
        }
    }

    /// An upgrade to anything but a WebSocket (`Upgrade: h2c`, what `curl --http2` sends) is
    /// served as the plain HTTP/1.1 request it also is, with the request timeout for its body
    /// (not the handshake timeout).
    @Test func aNonWebSocketUpgradeIsServedAsAPlainRequest() async throws {
        try await TestApp.withNode({
            $0.handshakeTimeout = 2
            $0.requestTimeout = 10
        }) { node in
            let h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
            let get = try await RawSocket.connect(port: node.port)
            try await get.write(Array("GET /hello HTTP/1.1\r\nHost: x\r\n\(h2c)\r\n".utf8))
            let hello = try await get.readHTTPReply()
            #expect(hello.status == 200 && hello.body == "hello anonymous via http")

            // Its body may arrive after the handshake timeout: only the request timeout applies.
            let post = try await RawSocket.connect(port: node.port)
            try await post.write(Array("POST /echo HTTP/1.1\r\nHost: x\r\n\(h2c)Content-Length: 3\r\n\r\n".utf8))
            try await Task.sleep(for: .seconds(3))
            try await post.write(Array("abc".utf8))
            let echoed = try await post.readHTTPReply()
            #expect(echoed.status == 200 && echoed.body == "abc", "\(echoed.status) \(echoed.body)")
        }
    }

    /// A client that stops reading a response cannot hold the connection (and the task
    /// writing it) forever: once the socket is full it gets the request timeout to make room.
    @Test func aClientThatStopsReadingItsResponseIsClosed() async throws {
        try await TestApp.withNode({
            $0.requestTimeout = 0.5
            $0.idleTimeout = 60
        }) { node in
            let socket = try await RawSocket.connect(port: node.port, receiveBuffer: 4096, autoRead: false)
            try await socket.write(Array("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            try await Task.sleep(for: .seconds(3))
            try await socket.setReading(true)
            let received = try await socket.readUntilClosed(timeout: .seconds(20))
            #expect(received.hasPrefix("HTTP/1.1 200"))
            #expect(received.utf8.count < 16 * 1024 * 1024, "the whole response was written: the connection was held")
        }
    }

    @Test func connectionsInTheirHandshakeAreBounded() async throws {
        try await TestApp.withNode({ $0.maxHandshakes = 2 }) { node in
            let first = try await RawSocket.connect(port: node.port)
            let second = try await RawSocket.connect(port: node.port)
            try await Task.sleep(for: .milliseconds(100))
            // A third is closed at once, without an answer.
            let third = try await RawSocket.connect(port: node.port)
            #expect(try await third.readUntilClosed(timeout: .seconds(2)).isEmpty)
            // Once the first two are past their handshake, there is room again.
            #expect(try await first.http("GET", "/hello").status == 200)
            await second.close()
            try await Task.sleep(for: .milliseconds(100))
            let fourth = try await RawSocket.connect(port: node.port)
            #expect(try await fourth.http("GET", "/hello").status == 200)
        }
    }

    @Test func anUpgradeOverHTTP10IsRefused() async throws {
        try await TestApp.withNode { node in
            let socket = try await RawSocket.connect(port: node.port)
            let token = try await node.token(user: "ann")
            try await socket.write(
                Array(
                    ("GET /ws HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer \(token)\r\n\r\n").utf8))
            let reply = try await socket.readHTTPReply()
            #expect(reply.status == 400)
            #expect(reply.body.contains("HTTP/1.1"))
        }
    }

    // MARK: offsets

    @Test func offsetsOutOfRangeAreBadInput() async throws {
        try await TestApp.withNode { node in
            let (ws, sid) = try await node.raw(user: "ann")
            _ = try await node.publisher.publish("one", to: "/rooms/lobby")
            try await ws.send("SUB|/rooms/lobby|r=1;since=9007199254740992|")
            #expect(Parsed(try await ws.nextText()).head == "SUB400")
            try await ws.send("SUB|/rooms/lobby|r=2;since=18446744073709551616|")
            #expect(Parsed(try await ws.nextText()).head == "SUB400")
            try await ws.send("SUB|/rooms/lobby|r=3|")
            let sub = Parsed(try await ws.nextText())
            #expect(sub.head == "SUB200")
            try await ws.send("ACK|/rooms/lobby|r=4;id=9223372036854775807|")
            #expect(Parsed(try await ws.nextText()).head == "ACK400")
            // Beyond the top, in the stream's epoch or without one: what a client sees after a
            // failover lost writes. Not recovered, subscribed from the top, and the session's
            // position is the top, never the offset the client named.
            for (r, meta) in [("5", "since=99;e=\(sub.meta["e"]!)"), ("7", "since=99")] {
                try await ws.send("SUB|/rooms/lobby|r=\(r);\(meta)|")
                let beyond = Parsed(try await ws.nextText())
                #expect(beyond.head == "SUB410")
                #expect(beyond.meta["id"] == "1")
            }
            await ws.close()
            let again = try await RawSocket.connect(port: node.port)
            #expect(try await again.upgrade(path: "/ws?sid=\(sid)", token: try await node.token(user: "ann")).status == 101)
            let hello = Parsed(try await again.nextText())
            #expect(hello.meta["resumed"] == "1")
            #expect(hello.body.contains(#""/rooms/lobby":1"#), "\(hello.body)")
        }
    }

    // MARK: limits and replies

    @Test func builtInStreamsDoNotCountTowardMaxSubscriptions() async throws {
        try await TestApp.withNode({ $0.maxSubscriptions = 2 }) { node in
            let (ws, _) = try await node.raw(user: "ann")
            try await ws.send("SUB|/rooms/a|r=1|")
            #expect(Parsed(try await ws.nextText()).head == "SUB200")
            try await ws.send("SUB|/rooms/b|r=2|")
            #expect(Parsed(try await ws.nextText()).head == "SUB200")
            try await ws.send("SUB|/rooms/c|r=3|")
            #expect(Parsed(try await ws.nextText()).head == "SUB429")
        }
    }

    @Test func jsonRepliesDoNotEscapeSlashes() async throws {
        try await TestNode.with(
            router: {
                let router = Router(context: SwitchboardRequestContext.self)
                StandardRoutes.add(to: router, options: .init(apiKeys: ["k"], openStreams: true))
                return router
            }()
        ) { node in
            let socket = try await RawSocket.connect(port: node.port)
            let reply = try await socket.http("POST", "/api/publish", headers: ["X-API-Key": "k"], body: #"{"stream":"/streams/lobby","data":"hi"}"#)
            #expect(reply.status == 201)
            #expect(reply.body.contains(#""stream":"/streams/lobby""#), "\(reply.body)")
            let missing = try await socket.http("GET", "/api/history?stream=/streams/none&after=5", headers: ["X-API-Key": "k"])
            #expect(!missing.body.contains(#"\/"#), "\(missing.body)")
        }
    }
}
