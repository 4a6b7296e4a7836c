import Foundation
import Hummingbird
import Switchboard
import SwitchboardTesting
import Testing

/// Each limit of docs/operations.md answers with its documented status or close code.
@Suite("Limits", .timeLimit(.minutes(1)))
struct LimitsTests {
    @Test func originAllowListRefusesOtherSitesWith403() async throws {
        try await TestApp.withNode({ $0.allowedOrigins = ["https://chat.example.com"] }) { node in
            let token = try await node.token(user: "ann")
            let evil = try await RawSocket.connect(port: node.port)
            let refused = try await evil.upgrade(token: token, headers: ["Origin": "https://evil.example.net"])
            #expect(refused.status == 403)
            #expect(refused.body.contains("origin https://evil.example.net is not allowed"))
            let good = try await RawSocket.connect(port: node.port)
            #expect(try await good.upgrade(token: token, headers: ["Origin": "https://chat.example.com"]).status == 101)
            // Not a browser (no Origin): the allow-list does not apply.
            let tool = try await RawSocket.connect(port: node.port)
            #expect(try await tool.upgrade(token: token).status == 101)
            await good.close()
            await tool.close()
        }
    }

    @Test func connectionRateRefusesUpgradesOverTheBurstWith429() async throws {
        try await TestApp.withNode({
            $0.connectionRate = 0.01
            $0.connectionBurst = 2
        }) { node in
            let token = try await node.token(user: "ann")
            var statuses: [Int] = []
            var sockets: [RawSocket] = []
            for _ in 0..<3 {
                let socket = try await RawSocket.connect(port: node.port)
                let reply = try await socket.upgrade(token: token)
                statuses.append(reply.status)
                if reply.status == 429 { #expect(reply.headers["retry-after"] == "1") }
                sockets.append(socket)
            }
            #expect(statuses == [101, 101, 429])
            // HTTP requests are not connections: they still get through.
            let http = try await RawSocket.connect(port: node.port)
            #expect(try await http.http("GET", "/hello").status == 200)
            for s in sockets { await s.close() }
        }
    }

    @Test func maxConnectionsPerUserRefusesTheNextOneWith429() async throws {
        try await TestApp.withNode({ $0.maxConnectionsPerUser = 2 }) { node in
            let (a, _) = try await node.raw(user: "ann")
            let (b, _) = try await node.raw(user: "ann")
            let third = try await RawSocket.connect(port: node.port)
            let reply = try await third.upgrade(token: try await node.token(user: "ann"))
            #expect(reply.status == 429)
            #expect(reply.body.contains("already holds 2 connections"))
            // Another user is not affected, and a slot frees when a connection closes.
            let (bob, _) = try await node.raw(user: "bob")
            await a.close()
            var admitted = false
            for _ in 0..<50 where !admitted {
                let socket = try await RawSocket.connect(port: node.port)
                admitted = try await socket.upgrade(token: try await node.token(user: "ann")).status == 101
                if !admitted { try await Task.sleep(for: .milliseconds(20)) }
                await socket.close()
            }
            #expect(admitted)
            await b.close()
            await bob.close()
        }
    }

    @Test func userRateLimitIsSharedByTheUsersConnectionsAndHTTP() async throws {
        let router = Router(context: SwitchboardRequestContext.self)
        router.add(middleware: IdentityMiddleware(verifier: try await TokenVerifier.hs256(secret: "switchboard-test-secret-of-32-bytes!")))
        router.add(middleware: UserRateLimitMiddleware(rate: 0.01, burst: 3))
        router.get("/ping") { _, _ in "pong" }
        var configuration = GatewayConfiguration()
        configuration.pingInterval = 3600
        try await TestNode.with(router: router, configuration: configuration) { node in
            let token = try await node.token(user: "ann")
            let (ws1, _) = try await node.raw(user: "ann")
            let (ws2, _) = try await node.raw(user: "ann")
            try await ws1.send("GET|/ping|r=1|")
            #expect(Parsed(try await ws1.nextText()).head == "GET200")
            try await ws2.send("GET|/ping|r=2|")
            #expect(Parsed(try await ws2.nextText()).head == "GET200")
            let http = try await RawSocket.connect(port: node.port)
            #expect(try await http.http("GET", "/ping", headers: ["Authorization": "Bearer \(token)"]).status == 200)
            // The fourth request of the user, on any transport, is over the burst.
            try await ws1.send("GET|/ping|r=3|")
            let limited = Parsed(try await ws1.nextText())
            #expect(limited.head == "GET429")
            #expect(limited.body.contains("rate_limited"))
            let http2 = try await RawSocket.connect(port: node.port)
            #expect(try await http2.http("GET", "/ping", headers: ["Authorization": "Bearer \(token)"]).status == 429)
            // Another user has a bucket of their own; anonymous HTTP is not user-limited.
            let (bob, _) = try await node.raw(user: "bob")
            try await bob.send("GET|/ping|r=4|")
            #expect(Parsed(try await bob.nextText()).head == "GET200")
            let anonymous = try await RawSocket.connect(port: node.port)
            #expect(try await anonymous.http("GET", "/ping").status == 200)
            await ws1.close()
            await ws2.close()
            await bob.close()
        }
    }

    @Test func echoEndpointReturnsTextAndBinaryAndIsOffByDefault() async throws {
        try await TestApp.withNode({ $0.echoPath = "/echo" }) { node in
            let socket = try await RawSocket.connect(port: node.port)
            // Anonymous, no session: the echo endpoint speaks no Switchboard protocol.
            #expect(try await socket.upgrade(path: "/echo").status == 101)
            try await socket.send("not|a frame")
            #expect(try await socket.next() == .text("not|a frame"))
            try await socket.sendFrame(opcode: 0x2, payload: [0, 1, 2, 255])
            #expect(try await socket.next() == .binary([0, 1, 2, 255]))
            // Fragmented text is reassembled before it is echoed.
            try await socket.sendFrame(opcode: 0x1, payload: Array("hel".utf8), fin: false)
            try await socket.sendFrame(opcode: 0x0, payload: Array("lo".utf8))
            #expect(try await socket.next() == .text("hello"))
            // Invalid UTF-8 in a text message closes with 1007, as on /ws.
            try await socket.sendFrame(opcode: 0x1, payload: [0xC3, 0x28])
            #expect(try await socket.closeCode() == 1007)
        }
        try await TestApp.withNode { node in
            let socket = try await RawSocket.connect(port: node.port)
            #expect(try await socket.upgrade(path: "/echo").status == 404)
        }
    }
}
