import Foundation
import Switchboard
import SwitchboardClient
import SwitchboardTesting
import Testing

/// The Swift client against a real in-process node, the way an application's tests use
/// `SwitchboardTesting`: requests, subscriptions, and a resume after a lost network.
@Suite("Swift client against a node", .timeLimit(.minutes(1)))
struct ClientAgainstNodeTests {
    static func take(_ count: Int, from subscription: ClientSubscription) async throws -> [ClientMessage] {
        try await withThrowingTaskGroup(of: [ClientMessage]?.self) { group in
            group.addTask {
                var result: [ClientMessage] = []
                for await message in subscription {
                    result.append(message)
                    if result.count == count { break }
                }
                return result
            }
            group.addTask {
                try await Task.sleep(for: .seconds(10))
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            guard let first else { throw TestFailure("timed out waiting for \(count) messages") }
            return first
        }
    }

    @Test func requestsAndRoutesAnswerTheClient() async throws {
        try await TestApp.withNode { node in
            let client = try await node.connect(user: "ann")
            let hello = try await client.request("GET", "/hello")
            #expect(hello.status == 200)
            #expect(hello.body == "hello ann via ws")
            let missing = try await client.request("GET", "/nowhere")
            #expect(missing.status == 404)
            let admin = try await client.request("GET", "/admin")
            #expect(admin.status == 403)
            await client.close()
        }
    }

    @Test func networkLossResumesWithExactlyTheMissedMessages() async throws {
        try await TestApp.withNode { node in
            var configuration = SwitchboardClientConfiguration()
            configuration.minReconnectDelay = .milliseconds(200)
            configuration.maxReconnectDelay = .milliseconds(400)
            let client = try await node.connect(user: "ann", configuration: configuration)
            let session = client.session
            let room = try await client.subscribe("/rooms/lobby")
            for i in 1...3 { _ = try await node.publisher.publish("m\(i)", to: "/rooms/lobby") }
            let before = try await Self.take(3, from: room)
            #expect(before.map(\.body) == ["m1", "m2", "m3"])

            // Lose the network, publish while the client is away, let it come back.
            await client.simulateNetworkLoss()
            for i in 4...6 { _ = try await node.publisher.publish("m\(i)", to: "/rooms/lobby") }
            let missed = try await Self.take(3, from: room)
            #expect(missed.map(\.body) == ["m4", "m5", "m6"])
            #expect(missed.map(\.offset) == [4, 5, 6])
            #expect(client.session == session)
            // Then live again, with no gap and no duplicate.
            _ = try await node.publisher.publish("m7", to: "/rooms/lobby")
            let live = try await Self.take(1, from: room)
            #expect(live.map(\.offset) == [7])
            await client.close()
        }
    }
}
