import Foundation
import Switchboard
import SwitchboardTesting
import Testing

/// A resume names its last message by offset, epoch and tag (protocol §4.1): whatever the
/// server keeps now at that offset must be that message, or the client is told (SUB410).
@Suite("Message identity on resume", .timeLimit(.minutes(1)))
struct MessageIdentityTests {
    @Test func pushesCarryATagAndAResumeNamingAnotherMessageIsNotRecovered() async throws {
        try await TestApp.withNode { node in
            let (ws, _) = try await node.raw(user: "ann")
            try await ws.send("SUB|/rooms/tags|r=1|")
            #expect(Parsed(try await ws.nextText()).head == "SUB200")
            for i in 1...3 { _ = try await node.publisher.publish("m\(i)", to: "/rooms/tags") }
            var pushes: [Parsed] = []
            for _ in 1...3 { pushes.append(Parsed(try await ws.nextText(where: { $0.hasPrefix("PUSH") }))) }
            let (epoch, tag2) = (pushes[1].meta["e"]!, pushes[1].meta["t"]!)
            #expect(pushes.allSatisfy { ($0.meta["t"] ?? "").count == 6 })
            #expect(Set(pushes.map { $0.meta["t"]! }).count == 3)
            // The right message at 2: recovered, 3 follows.
            try await ws.send("SUB|/rooms/tags|r=2;since=2;e=\(epoch);t=\(tag2)|")
            let good = Parsed(try await ws.nextText(where: { $0.contains("r=2") }))
            #expect(good.head == "SUB200")
            #expect(good.meta["recovered"] == "1")
            #expect(Parsed(try await ws.nextText(where: { $0.hasPrefix("PUSH") })).meta["id"] == "3")
            // Another message at 2: not recovered, from the top.
            try await ws.send("SUB|/rooms/tags|r=3;since=2;e=\(epoch);t=zzzzzz|")
            let other = Parsed(try await ws.nextText(where: { $0.contains("r=3") }))
            #expect(other.head == "SUB410")
            #expect(other.meta["id"] == "3")
        }
    }

    /// The memory engine's history lives as long as its process: a restarted node is a new
    /// epoch, so a client resuming there is told, whatever offsets the new node handed out.
    @Test func aRestartedMemoryNodeIsANewEpoch() async throws {
        let (epoch, last, tag) = try await TestApp.withNode { node -> (String, String, String) in
            let (ws, _) = try await node.raw(user: "ann")
            try await ws.send("SUB|/rooms/restart|r=1|")
            _ = try await ws.nextText()
            for i in 1...5 { _ = try await node.publisher.publish("m\(i)", to: "/rooms/restart") }
            var push = Parsed("")
            for _ in 1...5 { push = Parsed(try await ws.nextText(where: { $0.hasPrefix("PUSH") })) }
            return (push.meta["e"]!, push.meta["id"]!, push.meta["t"]!)
        }
        try await TestApp.withNode { node in
            // The new node hands out offsets 1-9 again.
            for i in 1...9 { _ = try await node.publisher.publish("n\(i)", to: "/rooms/restart") }
            let (ws, _) = try await node.raw(user: "ann")
            try await ws.send("SUB|/rooms/restart|r=1;since=\(last);e=\(epoch);t=\(tag)|")
            let reply = Parsed(try await ws.nextText())
            #expect(reply.head == "SUB410")
            #expect(reply.meta["id"] == "9")
            #expect(reply.meta["e"] != epoch)
        }
    }
}
