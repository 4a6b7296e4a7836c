import Foundation
import NIOCore
import Testing

@testable import SwitchboardProxy

@Suite("Receiver mode: one upstream for the proxy", .timeLimit(.minutes(1)))
struct ReceiverTests {
    @Test func upstreamMessagesWaitForALateClient() async throws {
        let upstream = try await TestUpstream { peer in
            for n in 1...20 { try await peer.send("u\(n)") }
            while let message = try await peer.next() {
                if message == "more" {
                    try await Task.sleep(for: .milliseconds(300))
                    for n in 21...25 { try await peer.send("u\(n)") }
                } else {
                    try await peer.send("got:" + message)
                }
            }
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream, { $0.mode = .receiver }) { proxy, port in
            // No client yet: the proxy connects on its own and holds what the upstream sends.
            try await waitFor("the proxy's upstream connection") { upstream.openConnections == 1 }
            try await Task.sleep(for: .milliseconds(200))
            let client = try await TestClient.connect(port: port)
            let got1 = try await client.texts(20)
            #expect(got1 == (1...20).map { "u\($0)" })
            try await client.send("hi")
            let got2 = try await client.texts(1)
            #expect(got2 == ["got:hi"])
            // Once the client's pong confirmed "got:hi", the proxy will not send it again.
            let relay = try #require(proxy.core.session(ProxyCore.receiverID)).toClient
            try await waitFor("got:hi confirmed") { await relay.pending == 0 }
            try await client.send("more")
            await client.drop()
            try await Task.sleep(for: .milliseconds(500))
            let next = try await TestClient.connect(port: port)
            let got3 = try await next.texts(5)
            #expect(got3 == (21...25).map { "u\($0)" })
            #expect(upstream.handshakes.value.count == 1)
        }
    }

    @Test func aFullQueueWithNoClientClosesTheUpstreamWith4508UntilAClientDrainsIt() async throws {
        let connections = Shared(0)
        let upstream = try await TestUpstream { peer in
            if connections.update({
                $0 += 1
                return $0
            }) == 1 {
                for n in 1...20 { try await peer.send("u\(n)") }
            } else {
                try await peer.send("again")
            }
            while try await peer.next() != nil {}
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(
            upstream: upstream,
            {
                $0.mode = .receiver
                $0.maxQueueMessages = 5
            }
        ) { _, port in
            // Five fit; the sixth is refused and the upstream is told.
            try await waitFor("the 4508 upstream") { upstream.closes.value == [ProxyCloseCode.queueFull] }
            try await waitFor("the upstream connection closed") { upstream.openConnections == 0 }
            // The proxy reconnects only once a client drained the queue.
            let client = try await TestClient.connect(port: port)
            let got = try await client.texts(6)
            #expect(got == ["u1", "u2", "u3", "u4", "u5", "again"])
            #expect(upstream.handshakes.value.count == 2)
        }
    }

    @Test func clientMessagesWaitWhileTheUpstreamReconnects() async throws {
        let upstream = try await TestUpstream { peer in
            while let message = try await peer.next() { try await peer.send("got:" + message) }
        }
        defer { Task { await upstream.kill() } }
        try await withProxy(upstream: upstream, { $0.mode = .receiver }) { _, port in
            let client = try await TestClient.connect(port: port)
            try await client.send("a")
            let got4 = try await client.texts(1)
            #expect(got4 == ["got:a"])
            await upstream.kill()
            try await Task.sleep(for: .milliseconds(200))
            try await client.send("b")
            try await client.send("c")
            try await upstream.start()
            let got5 = try await client.texts(2)
            #expect(got5 == ["got:b", "got:c"])
        }
    }
}
