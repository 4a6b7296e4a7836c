import Foundation
import Switchboard
import SwitchboardTesting
import Testing

@Suite("Pings, dead peers and token expiry", .timeLimit(.minutes(1)))
struct KeepaliveTests {
    @Test func deadPeerIsClosedLivePeerStays() async throws {
        try await TestApp.withNode({ $0.pingInterval = 2 }) { node in
            let (silent, _) = try await node.raw(user: "ann")
            let (alive, _) = try await node.raw(user: "bob")
            // `alive` answers every ping while `silent` never does.
            let answering = Task { () -> (pongs: Int, other: [String]) in
                var pongs = 0
                var other: [String] = []
                while pongs < 3, let event = try await alive.next() {
                    guard case .ping = event else {
                        other.append("\(event)")
                        continue
                    }
                    try await alive.sendFrame(opcode: 0xA, payload: [])
                    pongs += 1
                }
                return (pongs, other)
            }
            // After a ping goes unanswered for one interval, the silent socket is dropped.
            var pings = 0
            while let event = try await silent.next() {
                if case .ping = event { pings += 1 }
            }
            #expect(pings >= 1)
            // `alive` is still served after several intervals.
            let answered = try await answering.value
            #expect(answered.pongs == 3, "besides pings: \(answered.other)")
            try await alive.send("GET|/hello|r=1|")
            #expect(try await alive.nextAnsweringPings().hasPrefix("GET200"))
        }
    }

    @Test func aPeerThatClosesTCPWithoutACloseFrameIsGoneAtOnce() async throws {
        // Ping interval an hour: only the FIN can tell the node.
        try await TestApp.withNode { node in
            let (socket, session) = try await node.raw(user: "ann")
            #expect(node.publisher.connections.map(\.session) == [session])
            await socket.close()
            var gone = false
            for _ in 0..<200 where !gone {
                gone = node.publisher.connections.isEmpty
                if !gone { try await Task.sleep(for: .milliseconds(10)) }
            }
            #expect(gone)
        }
    }

    @Test func expiredTokenCloses4401() async throws {
        try await TestApp.withNode({ $0.pingInterval = 2 }) { node in
            let socket = try await RawSocket.connect(port: node.port)
            let token = try await TestTokens.make(user: "ann", expiresIn: 2, secret: node.secret)
            #expect(try await socket.upgrade(token: token).status == 101)
            var code: UInt16?
            while let event = try await socket.next() {
                switch event {
                // The pong may race the server's close; that is fine here.
                case .ping: try? await socket.sendFrame(opcode: 0xA, payload: [])
                case .close(let c, _): code = c
                default: continue
                }
                if code != nil { break }
            }
            #expect(code == 4401)
        }
    }

    @Test func drainClosesClientsWith4503() async throws {
        let (socket, ready): (RawSocket, Bool) = try await TestApp.withNode { node in
            let (socket, _) = try await node.raw(user: "ann")
            let http = try await RawSocket.connect(port: node.port)
            let ready = try await http.http("GET", "/hello").status == 200
            return (socket, ready)
        }
        #expect(ready)
        // The node shut down gracefully: its client was told to reconnect elsewhere.
        #expect(try await socket.closeCode() == 4503)
    }
}

extension RawSocket {
    /// Next text frame, answering pings on the way.
    func nextAnsweringPings() async throws -> String {
        while let event = try await self.next() {
            switch event {
            case .text(let t): return t
            case .ping: try await self.sendFrame(opcode: 0xA, payload: [])
            default: continue
            }
        }
        throw TestFailure("closed")
    }
}
