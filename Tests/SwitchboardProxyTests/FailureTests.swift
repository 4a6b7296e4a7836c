import Foundation
import NIOCore
import NIOHTTP1
import Testing

@testable import SwitchboardProxy

@Suite("Limits, close codes and bad input", .timeLimit(.minutes(1)))
struct FailureTests {
    @Test func aFullQueueClosesTheSenderWith4508AndKeepsWhatItAccepted() async throws {
        let received = Shared<[String]>([])
        let upstream = try await TestUpstream { peer in
            while let message = try await peer.next() {
                received.update { $0.append(message) }
                try await peer.send("echo:" + message)
            }
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream, { $0.maxQueueMessages = 5 }) { proxy, port in
            let client = try await TestClient.connect(port: port)
            let session = try #require(client.session)
            try await client.send("1")
            let got1 = try await client.texts(1)
            #expect(got1 == ["echo:1"])
            await upstream.kill()
            let proxySession = try #require(proxy.core.session(session))
            try await waitFor("the proxy to see the upstream gone") { await !proxySession.upstreamConnected }
            // Five fit in the queue while the upstream is away; the sixth closes the client.
            for n in 2...8 { try await client.send(String(n)) }
            let event = try await client.next()
            guard case .close(let code, let reason) = event else {
                Issue.record("expected a close, got \(event)")
                return
            }
            #expect(code == ProxyCloseCode.queueFull)
            #expect(reason.contains("queue full"))

            // What was accepted reaches the upstream once it is back, in order.
            try await upstream.start()
            let back = try await TestClient.connect(port: port, headers: [ProxyCore.sessionHeader: session])
            #expect(back.resumed)
            let got2 = try await back.texts(5)
            #expect(got2 == ["echo:2", "echo:3", "echo:4", "echo:5", "echo:6"])
            #expect(received.value == ["1", "2", "3", "4", "5", "6"])
        }
    }

    @Test func anUpstreamThatNeverReturnsClosesTheClientWith4502() async throws {
        let upstream = try await echoUpstream()
        try await withProxy(upstream: upstream, { $0.upstreamTimeout = 0.5 }) { _, port in
            let client = try await TestClient.connect(port: port)
            try await client.send("x")
            let got3 = try await client.texts(1)
            #expect(got3 == ["echo:x"])
            await upstream.kill()
            try await client.send("lost")
            let event = try await client.next()
            guard case .close(let code, let reason) = event else {
                Issue.record("expected a close, got \(event)")
                return
            }
            #expect(code == ProxyCloseCode.upstreamUnavailable)
            #expect(reason.contains("unavailable"))

            // A client that arrives while the upstream is down is taken in, then told the same.
            let late = try await TestClient.connect(port: port)
            #expect(!late.resumed)
            guard case .close(ProxyCloseCode.upstreamUnavailable, _) = try await late.next() else {
                Issue.record("expected 4502")
                return
            }
        }
    }

    @Test func bothDirectionsAtFullSpeedThroughSmallQueuesDoNotStall() async throws {
        // Each side floods the other while the queues hold 8 messages: flow control must
        // follow the sockets, never wait for pongs stuck behind the data it is not reading.
        let total = 3000
        let received = Shared(0)
        let upstream = try await TestUpstream { peer in
            let pushing = Task {
                for n in 1...total { try await peer.send("u\(n)") }
            }
            defer { pushing.cancel() }
            var expected = 1
            while let message = try await peer.next() {
                #expect(message == "c\(expected)")
                expected += 1
                received.update { $0 += 1 }
            }
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream, { $0.maxQueueMessages = 8 }) { _, port in
            let client = try await TestClient.connect(port: port)
            let sending = Task {
                for n in 1...total { try await client.send("c\(n)") }
            }
            let texts = try await client.texts(total)
            #expect(texts == (1...total).map { "u\($0)" })
            try await sending.value
            try await waitFor("every client message upstream") { received.value == total }
        }
    }

    @Test func anUpstreamThatAcceptsAndDropsAtOnceStillCountsAsAway() async throws {
        let upstream = try await TestUpstream { peer in
            try await peer.close(code: 1013, reason: "try again later")
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream, { $0.upstreamTimeout = 1 }) { _, port in
            let client = try await TestClient.connect(port: port)
            let event = try await client.next()
            guard case .close(ProxyCloseCode.upstreamUnavailable, _) = event else {
                Issue.record("expected 4502, got \(event)")
                return
            }
            #expect(upstream.handshakes.value.count >= 2)
        }
    }

    @Test func closeCodesPassThroughBothWays() async throws {
        let upstream = try await TestUpstream { peer in
            while let message = try await peer.next() {
                if message == "bye" {
                    try await peer.send("last words")
                    try await peer.close(code: 4000, reason: "bye now")
                }
            }
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream) { proxy, port in
            // Upstream → client: the message before the close arrives first, then the close as sent.
            let client = try await TestClient.connect(port: port)
            try await client.send("bye")
            let got4 = try await client.next()
            #expect(got4 == .text("last words"))
            let got5 = try await client.next()
            #expect(got5 == .close(4000, "bye now"))

            // Client → upstream: a deliberate close reaches the upstream with its code.
            let other = try await TestClient.connect(port: port)
            try await other.close(code: 1000, reason: "done")
            let got6 = try await other.next()
            #expect(got6 == .close(1000, "done"))
            try await waitFor("the upstream to see 1000") { upstream.closes.value.contains(1000) }
            try await waitFor("both sessions gone") { proxy.core.sessionCount == 0 }
            // Neither close is a reason to reconnect.
            #expect(upstream.handshakes.value.count == 2)
        }
    }

    @Test func aCloseCodeNoEndpointMaySendIsAnsweredWith1002() async throws {
        let upstream = try await echoUpstream()
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream) { _, port in
            for code: UInt16 in [1005, 1006, 1016, 999] {
                let client = try await TestClient.connect(port: port)
                try await client.close(code: code)
                let event = try await client.next()
                #expect(event == .close(ProxyCloseCode.protocolError, "invalid frame"), "code \(code)")
            }
            // None of them reached the upstream.
            #expect(!upstream.closes.value.contains { [1005, 1006, 1016, 999].contains($0 ?? 0) })
        }
    }

    @Test func aTransientUpstreamCloseIsReconnected() async throws {
        // The first "restart" closes with 1012 (service restart). If the proxy had no pong for
        // it yet, it sends it again on the next connection: the upstream ignores the repeat.
        let restarted = Shared(false)
        let upstream = try await TestUpstream { peer in
            while let message = try await peer.next() {
                if message == "restart" {
                    if restarted.update({ done in
                        defer { done = true }
                        return !done
                    }) {
                        try await peer.close(code: 1012, reason: "service restart")
                        return
                    }
                } else {
                    try await peer.send("echo:" + message)
                }
            }
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream) { _, port in
            let client = try await TestClient.connect(port: port)
            try await client.send("restart")
            try await waitFor("the reconnect") { upstream.handshakes.value.count == 2 }
            try await client.send("after")
            let got = try await client.texts(1)
            #expect(got == ["echo:after"])
            // The proxy only answered the upstream's 1012; it closed nothing on its own.
            #expect(upstream.closes.value.allSatisfy { $0 == 1012 })
        }
    }

    @Test func pingsPassThroughAndAreAnsweredWhileTheUpstreamIsAway() async throws {
        let upstream = try await echoUpstream()
        try await withProxy(upstream: upstream) { proxy, port in
            let client = try await TestClient.connect(port: port)
            try await client.sendFrame(opcode: .ping, data: ByteBuffer(string: "p1"))
            try await client.send("x")
            let got8 = try await client.texts(1)
            #expect(got8 == ["echo:x"])
            try await waitFor("the pong") { client.pongs.value == ["p1"] }
            await upstream.kill()
            let id = try #require(client.session)
            let session = try #require(proxy.core.session(id))
            try await waitFor("the proxy to see the upstream gone") { await !session.upstreamConnected }
            try await client.sendFrame(opcode: .ping, data: ByteBuffer(string: "p2"))
            try await waitFor("the proxy's own pong") { client.pongs.value == ["p1", "p2"] }
        }
    }

    @Test func anUpstreamThatRefusesTheClientRefusesItAtTheProxy() async throws {
        let upstream = try await echoUpstream()
        defer { Task { await upstream.kill() } }
        upstream.refuseWith.update { $0 = .unauthorized }
        try await withProxy(upstream: upstream) { proxy, port in
            await #expect(throws: TestClient.Failure.self) { try await TestClient.connect(port: port) }
            do {
                _ = try await TestClient.connect(port: port)
            } catch TestClient.Failure.refused(let status) {
                #expect(status == .unauthorized)
            }
            #expect(proxy.core.sessionCount == 0)
        }
    }

    @Test func aMessageOverTheLimitClosesItsSenderWith1009() async throws {
        let upstream = try await TestUpstream { peer in
            while let message = try await peer.next() {
                try await peer.send(message == "big" ? String(repeating: "z", count: 2000) : "echo:" + message)
            }
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream, { $0.maxMessageSize = 1000 }) { _, port in
            let client = try await TestClient.connect(port: port)
            try await client.send(String(repeating: "x", count: 990))
            #expect(try await client.texts(1).first?.count == 995)
            // Fragments are joined before the limit applies.
            try await client.sendFrame(opcode: .text, data: ByteBuffer(string: String(repeating: "y", count: 600)), fin: false)
            try await client.sendFrame(opcode: .continuation, data: ByteBuffer(string: String(repeating: "y", count: 600)))
            guard case .close(ProxyCloseCode.messageTooBig, _) = try await client.next() else {
                Issue.record("expected 1009")
                return
            }
            // An upstream message over the limit ends the session: resending would fail the same way.
            let other = try await TestClient.connect(port: port)
            try await other.send("big")
            let event = try await other.next()
            #expect(event == .close(ProxyCloseCode.messageTooBig, "upstream sent a message over the proxy's size limit"))
            #expect(upstream.handshakes.value.count == 2)
        }
    }

    @Test func badSettingsAreRefusedWithTheOptionNamed() throws {
        #expect(throws: ProxyConfigurationError.self) { try UpstreamURL("http://example.com/") }
        #expect(throws: ProxyConfigurationError.self) { try UpstreamURL("ws:///nohost") }
        var configuration = ProxyConfiguration(upstream: try UpstreamURL("ws://127.0.0.1:9/x"))
        configuration.maxQueueBytes = 10
        #expect { try configuration.validate() } throws: { ($0 as? ProxyConfigurationError)?.description.contains("--max-queue-bytes") == true }
        configuration = ProxyConfiguration(upstream: try UpstreamURL("ws://127.0.0.1:9/x"))
        configuration.transientCloseCodes = [70]
        #expect(throws: ProxyConfigurationError.self) { try configuration.validate() }
        configuration = ProxyConfiguration(upstream: try UpstreamURL("wss://example.com/a?b=c"))
        #expect(configuration.upstream.port == 443)
        #expect(configuration.upstream.target == "/a?b=c")
    }
}
