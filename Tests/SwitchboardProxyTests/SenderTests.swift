import Foundation
import NIOCore
import NIOHTTP1
import Testing

@testable import SwitchboardProxy

/// An upstream that echoes every text message.
func echoUpstream() async throws -> TestUpstream {
    try await TestUpstream { peer in
        while let message = try await peer.next() {
            try await peer.send("echo:" + message)
        }
    }
}

@Suite("Sender mode: one upstream per client session", .timeLimit(.minutes(1)))
struct SenderTests {
    @Test func messagesFlowBothWaysAndTheClientsHeadersAreForwarded() async throws {
        let upstream = try await echoUpstream()
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream) { _, port in
            let client = try await TestClient.connect(port: port, headers: ["Authorization": "Bearer abc", "X-Other": "not forwarded"])
            #expect(client.session?.isEmpty == false)
            #expect(!client.resumed)
            try await client.send("a")
            try await client.send("b")
            let got1 = try await client.texts(2)
            #expect(got1 == ["echo:a", "echo:b"])
            let handshake = try #require(upstream.handshakes.value.first)
            #expect(handshake["authorization"] == ["Bearer abc"])
            #expect(handshake["x-other"].isEmpty)
            #expect(handshake["x-forwarded-for"] == ["127.0.0.1"])
            #expect(upstream.handshakes.value.count == 1)
        }
    }

    @Test func binaryAndTextMessagesKeepTheirKindAndBytesBothWays() async throws {
        // The upstream answers each message with the same kind, reversed (bytes of a binary
        // message, characters of a text one).
        let upstream = try await TestUpstream { peer in
            while let message = try await peer.nextMessage() {
                let reversed =
                    message.opcode == .text
                    ? ByteBuffer(string: String(String(buffer: message.data).reversed()))
                    : ByteBuffer(bytes: message.data.readableBytesView.reversed())
                try await peer.send(ProxyMessage(opcode: message.opcode, data: reversed))
            }
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream) { _, port in
            let client = try await TestClient.connect(port: port)
            let bytes: [UInt8] = [0, 1, 2, 0xFF, 0xFE, 0x80, 0x7F]
            try await client.sendFrame(opcode: .binary, data: ByteBuffer(bytes: bytes))
            try await client.send("héllo|👋")
            let first = try await client.next()
            let second = try await client.next()
            #expect(first == .binary(bytes.reversed()))
            #expect(second == .text("👋|olléh"))
        }
    }

    // What the proxy guarantees across an upstream crash: every client message reaches the
    // upstream (what the dead connection did not confirm is sent again; the upstream tells a
    // repeat by the resume id and the number), and every upstream message that reached the
    // proxy reaches the client, in order. An upstream's own writes that die with it are the
    // upstream's to send again: here it resumes after the client's acks.

    @Test func clientMessagesSurviveAnUpstreamRestartMidStream() async throws {
        // The upstream's first message on each connection is its resume id; it accepts client
        // numbers only in sequence (per resume id, across restarts).
        let accepted = Shared<[String: [Int]]>([:])
        let gaps = Shared<[Int]>([])
        let upstream = try await TestUpstream { peer in
            let token = peer.head.headers["x-resume-id"].first ?? UUID().uuidString
            try await peer.send(token)
            while let message = try await peer.next() {
                let n = Int(message)!
                accepted.update { all in
                    let last = all[token]?.last ?? 0
                    if n == last + 1 { all[token, default: []].append(n) } else if n > last + 1 { gaps.update { $0.append(n) } }
                }
            }
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream, { $0.resumeSource = .firstMessage }) { _, port in
            let client = try await TestClient.connect(port: port)
            let total = 300
            let sending = Task {
                for n in 1...total {
                    try await client.send(String(n))
                    try await Task.sleep(for: .milliseconds(2))
                }
            }
            // Kill the upstream once it accepted a third of the stream, restart it shortly after.
            try await waitFor("a third of the stream upstream") { accepted.value.values.first?.count ?? 0 >= total / 3 }
            await upstream.kill()
            try await Task.sleep(for: .milliseconds(300))
            try await upstream.start()
            try await sending.value
            try await waitFor("the whole stream upstream") { accepted.value.values.first?.count == total }
            #expect(gaps.value.isEmpty)
            #expect(accepted.value.count == 1)
            #expect(accepted.value.values.first == Array(1...total))
            // The reconnect carried the resume id the first connection announced; the client
            // never saw it.
            let handshakes = upstream.handshakes.value
            #expect(handshakes.count == 2)
            #expect(handshakes.first?["x-resume-id"].isEmpty == true)
            #expect(handshakes.last?["x-resume-id"].first == accepted.value.keys.first)
        }
    }

    @Test func aNumberedPushSurvivesAnUpstreamRestartWithTheResumeIdFromAResponseHeader() async throws {
        // The upstream names each new conversation in a response header and, on a reconnect
        // that carries the name, goes on after the last number the client acknowledged.
        @Sendable func name(_ head: HTTPRequestHead) -> String {
            head.headers["x-resume-id"].first ?? "conversation-" + head.headers["sec-websocket-key"][0]
        }
        let acked = Shared<[String: Int]>([:])
        let total = 400
        let upstream = try await TestUpstream { peer in
            let token = name(peer.head)
            let pushing = Task {
                for n in (acked.value[token, default: 0] + 1)...total {
                    try await peer.send(String(n))
                    try await Task.sleep(for: .milliseconds(2))
                }
            }
            defer { pushing.cancel() }
            while let message = try await peer.next() {
                let n = Int(message.dropFirst(4))!
                acked.update { $0[token] = max($0[token, default: 0], n) }
            }
        }
        defer { Task { await upstream.kill() } }
        upstream.responseHeaders.update { $0 = { head in ["X-Resume-Id": name(head)] } }
        try await withProxy(upstream: upstream, { $0.resumeSource = .responseHeader }) { _, port in
            let client = try await TestClient.connect(port: port)
            var last = 0
            var restarted = false
            while last < total {
                let event = try await client.next()
                guard case .text(let text) = event, let n = Int(text) else {
                    Issue.record("unexpected \(event) after \(last)")
                    return
                }
                // Never a gap; a number the upstream wrote again after the restart may repeat.
                #expect(n <= last + 1)
                guard n == last + 1 else { continue }
                last = n
                try await client.send("ack:\(n)")
                if n == 100, !restarted {
                    restarted = true
                    await upstream.kill()
                    try await Task.sleep(for: .milliseconds(200))
                    try await upstream.start()
                }
            }
            try await waitFor("the reconnect") { upstream.handshakes.value.count == 2 }
            let handshakes = upstream.handshakes.value
            #expect(acked.value.count == 1)
            #expect(handshakes.last?["x-resume-id"].first == acked.value.keys.first)
        }
    }

    @Test func aClientThatReconnectsWithinTheGraceGetsTheQueueInOrderOnTheSameUpstream() async throws {
        let upstream = try await TestUpstream { peer in
            try await peer.send("hello")
            while let message = try await peer.next() {
                guard message.hasPrefix("burst ") else { continue }
                // Sent while the client is away.
                try await Task.sleep(for: .milliseconds(300))
                for n in 1...Int(message.dropFirst(6))! { try await peer.send("m\(n)") }
            }
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream, { $0.grace = 10 }) { proxy, port in
            let first = try await TestClient.connect(port: port)
            let got2 = try await first.texts(1)
            #expect(got2 == ["hello"])
            let session = try #require(first.session)
            // Once the client's pong confirmed "hello", the proxy will not send it again.
            let relay = try #require(proxy.core.session(session)).toClient
            try await waitFor("hello confirmed") { await relay.pending == 0 }
            try await first.send("burst 5")
            await first.drop()
            try await Task.sleep(for: .milliseconds(600))

            let second = try await TestClient.connect(port: port, headers: [ProxyCore.sessionHeader: session])
            #expect(second.resumed)
            #expect(second.session == session)
            let got3 = try await second.texts(5)
            #expect(got3 == ["m1", "m2", "m3", "m4", "m5"])

            // Again, with the id in the query (what a browser can send), and a takeover: the
            // older connection is closed with 4409.
            let third = try await TestClient.connect(port: port, query: "?proxy_session=\(session)")
            #expect(third.resumed)
            let got4 = try await second.next()
            #expect(got4 == .close(ProxyCloseCode.sessionTakenOver, "session taken over by a newer connection"))
            try await third.send("burst 2")
            let got5 = try await third.texts(2)
            #expect(got5 == ["m1", "m2"])
            #expect(upstream.handshakes.value.count == 1)
            #expect(proxy.core.sessionCount == 1)
        }
    }

    @Test func theSessionIdCanComeAsTheFirstMessageForBrowsers() async throws {
        let upstream = try await TestUpstream { peer in
            try await peer.send("from upstream")
            while try await peer.next() != nil {}
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream, { $0.announceSession = true }) { _, port in
            let client = try await TestClient.connect(port: port)
            let session = try #require(client.session)
            let got = try await client.texts(2)
            #expect(got == [#"{"proxySession":"\#(session)"}"#, "from upstream"])
            // A resumed connection is told again, before anything queued for it.
            let again = try await TestClient.connect(port: port, query: "?proxy_session=\(session)")
            let first = try await again.texts(1)
            #expect(first == [#"{"proxySession":"\#(session)"}"#])
        }
    }

    @Test func anUnknownSessionIdStartsANewSession() async throws {
        let upstream = try await echoUpstream()
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream) { _, port in
            let client = try await TestClient.connect(port: port, headers: [ProxyCore.sessionHeader: "no-such-session"])
            #expect(!client.resumed)
            #expect(client.session != "no-such-session")
            try await client.send("x")
            let got6 = try await client.texts(1)
            #expect(got6 == ["echo:x"])
        }
    }

    @Test func afterTheGracePeriodTheUpstreamIsClosed() async throws {
        let upstream = try await echoUpstream()
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream, { $0.grace = 0.3 }) { proxy, port in
            let client = try await TestClient.connect(port: port)
            let session = try #require(client.session)
            try await client.send("x")
            let got7 = try await client.texts(1)
            #expect(got7 == ["echo:x"])
            await client.drop()
            try await waitFor("the upstream closed with 1001") { upstream.closes.value == [ProxyCloseCode.goingAway] }
            try await waitFor("the session gone") { proxy.core.sessionCount == 0 }
            let again = try await TestClient.connect(port: port, headers: [ProxyCore.sessionHeader: session])
            #expect(!again.resumed)
        }
    }
}
