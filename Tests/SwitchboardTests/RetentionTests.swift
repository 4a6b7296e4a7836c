import Foundation
import Switchboard
import SwitchboardTesting
import Testing

/// protocol.md §4.4: history is trimmed by acks only once every session subscribed to the
/// stream acked it. Whoever may SUB must never shrink what others can resume.
@Suite("Retention by acks (memory engine)", .timeLimit(.minutes(1)))
struct RetentionTests {
    static func published(_ node: TestNode, _ stream: String, count: Int) async throws {
        for i in 1...count { _ = try await node.publisher.publish("m\(i)", to: stream) }
    }

    /// Offsets the history holds after 0 (empty when it no longer reaches back to 0).
    static func history(_ node: TestNode, _ stream: String) async throws -> [Int64] {
        switch try await node.publisher.history(of: stream, after: 0, limit: 100) {
        case .messages(let messages, _): messages.map(\.offset)
        case .gone: []
        }
    }

    /// The memory engine trims by acks once a second.
    static func afterSweep() async throws { try await Task.sleep(for: .milliseconds(1300)) }

    @Test func aLaterSubscriberDoesNotTrimWhatAConnectedOneHasNotRead() async throws {
        try await TestApp.withNode { node in
            let (a, sessionA) = try await node.raw(user: "ann")
            try await a.send("SUB|/rooms/x|r=1|")
            #expect(Parsed(try await a.nextText()).head == "SUB200")
            try await Self.published(node, "/rooms/x", count: 3)
            let (b, _) = try await node.raw(user: "bob")
            try await b.send("SUB|/rooms/x|r=1|")
            #expect(Parsed(try await b.nextText(where: { $0.hasPrefix("SUB") })).head == "SUB200")
            try await b.send("ACK|/rooms/x|r=2;id=3|")
            try await Self.afterSweep()
            #expect(try await Self.history(node, "/rooms/x") == [1, 2, 3])
            // A, reconnecting with its session from 0, gets everything.
            await a.close()
            let (again, _) = try await node.raw(user: "ann", session: sessionA)
            try await again.send("SUB|/rooms/x|r=3;since=0|")
            let sub = Parsed(try await again.nextText(where: { $0.hasPrefix("SUB") && $0.contains("r=3") }))
            #expect(sub.head == "SUB200")
            #expect(sub.meta["recovered"] == "1")
            for offset in 1...3 { #expect(Parsed(try await again.nextText()).meta["id"] == String(offset)) }
        }
    }

    @Test func aDisconnectedSessionHoldsHistoryForItsTTLAndNoLonger() async throws {
        try await TestApp.withNode(engine: MemoryEngine(configuration: .init(sessionTTL: 6))) { node in
            let (a, _) = try await node.raw(user: "ann")
            try await a.send("SUB|/rooms/y|r=1|")
            #expect(Parsed(try await a.nextText()).head == "SUB200")
            await a.close()
            let closed = ContinuousClock.now
            try await Self.published(node, "/rooms/y", count: 3)
            let (b, _) = try await node.raw(user: "bob")
            try await b.send("SUB|/rooms/y|r=1|")
            #expect(Parsed(try await b.nextText(where: { $0.hasPrefix("SUB") })).head == "SUB200")
            try await b.send("ACK|/rooms/y|r=2;id=3|")
            try await Self.afterSweep()
            // Ann's session is within its TTL: it still holds 1-3.
            #expect(try await Self.history(node, "/rooms/y") == [1, 2, 3])
            // Once it expired, Bob's ack trims them.
            try await Task.sleep(until: closed + .milliseconds(6500))
            try await b.send("ACK|/rooms/y|r=3;id=3|")
            try await Self.afterSweep()
            #expect(try await Self.history(node, "/rooms/y") == [])
        }
    }
}
