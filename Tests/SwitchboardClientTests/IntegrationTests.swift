import Foundation
import Logging
import NIOConcurrencyHelpers
import SwitchboardWire
import Testing

@testable import SwitchboardClient

struct TimeoutError: Error, CustomStringConvertible {
    let description: String
}

/// Polls `condition` until it holds (or fails after `timeout`).
func eventually(_ what: String, timeout: Duration = .seconds(10), _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else { throw TimeoutError(description: "timed out waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(10))
    }
}

/// Runs `body`, failing if it takes longer than `timeout`.
func withTimeout<T: Sendable>(_ timeout: Duration = .seconds(10), _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        guard let first = try await group.next(), let value = first else {
            group.cancelAll()
            throw TimeoutError(description: "operation timed out")
        }
        group.cancelAll()
        return value
    }
}

func take(_ count: Int, from subscription: ClientSubscription) async throws -> [ClientMessage] {
    try await withTimeout {
        var result: [ClientMessage] = []
        for await message in subscription {
            result.append(message)
            if result.count == count { break }
        }
        return result
    }
}

/// Fast reconnects for tests.
func testConfiguration() -> SwitchboardClientConfiguration {
    var configuration = SwitchboardClientConfiguration()
    configuration.minReconnectDelay = .milliseconds(10)
    configuration.maxReconnectDelay = .milliseconds(100)
    configuration.ackInterval = .milliseconds(50)
    configuration.requestTimeout = .seconds(5)
    return configuration
}

/// Collects client events in the background.
final class EventLog: Sendable {
    let events = NIOLockedValueBox<[ClientEvent]>([])
    let task: Task<Void, Never>

    init(_ client: SwitchboardClient) {
        let events = self.events
        self.task = Task {
            for await event in client.events { events.withLockedValue { $0.append(event) } }
        }
    }

    var current: [ClientEvent] { self.events.current }
}

/// Answers SUB with SUB200 (id = since, or `top`), no pushes.
func subReply(_ connection: FakeConnection, _ frame: Frame, top: Int64 = 0, epoch: String = "E1") {
    let r = frame.meta["r"].map { "r=\($0);" } ?? ""
    let id = frame.meta["since"].flatMap { Int64($0) } ?? top
    connection.send("SUB200|\(frame.target)|\(r)id=\(id);e=\(epoch)|")
}

@Suite(.timeLimit(.minutes(1))) struct IntegrationTests {
    @Test func connectSendsTokenAndReceivesHelloAndBuiltInStreams() async throws {
        let server = FakeServer(
            onConnect: { server, connection in
                server.sendHello(connection)
                connection.send("SUB200|/users/ann|id=3;e=U|")
                connection.send("PUSH200|/users/ann|id=4;e=U|{\"n\":4}")
                connection.send("PUSH200|/users/ann|id=5;e=U|{\"n\":5}")
            },
            onFrame: { _, _ in }
        )
        try await server.start()
        let client = SwitchboardClient(url: server.url, token: { "tok-1" }, configuration: testConfiguration())
        let log = EventLog(client)
        try await client.connect()
        #expect(client.session == "S1")
        #expect(server.connections.current.first?.headers["Authorization"] == ["Bearer tok-1"])
        let messages = try await take(2, from: client.messages("/users/ann"))
        #expect(messages.map(\.offset) == [4, 5])
        #expect(messages.map(\.body) == ["{\"n\":4}", "{\"n\":5}"])
        #expect(messages.allSatisfy { $0.epoch == "U" && $0.stream == "/users/ann" })
        #expect(client.lastOffset(of: "/users/ann") == 5)
        // Acks the processed offset on the timer.
        try await eventually("ACK") { server.frames(.ack).contains { $0.frame.target == "/users/ann" && $0.frame.meta["id"] == "5" } }
        await client.close()
        try await eventually("close 1000") { server.closeCodes.current == [1000] }
        try await eventually("events") { log.current.last == .closed }
        #expect(log.current.first == .connected(session: "S1", resumed: false))
        await server.stop()
    }

    @Test func reconnectResumesWithSinceAndSid() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .sub else { return }
            subReply(connection, frame)
            if connection.index == 0 {
                connection.send("PUSH200|\(frame.target)|id=1;e=E1|one")
                connection.send("PUSH200|\(frame.target)|id=2;e=E1|two")
            } else {
                // Replay after since, including a duplicate.
                connection.send("PUSH200|\(frame.target)|id=2;e=E1|two")
                connection.send("PUSH200|\(frame.target)|id=3;e=E1|three")
            }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: testConfiguration())
        let log = EventLog(client)
        try await client.connect()
        let subscription = try await client.subscribe("/rooms/lobby")
        let first = try await take(2, from: subscription)
        #expect(first.map(\.body) == ["one", "two"])
        await client.simulateNetworkLoss()
        try await eventually("second connection") { server.connections.current.count == 2 }
        let rest = try await take(1, from: subscription)
        #expect(rest.map(\.body) == ["three"])
        #expect(rest.map(\.offset) == [3])

        let second = server.connections.current[1]
        #expect(second.uri.contains("sid=S1"))
        #expect(second.headers["Authorization"] == ["Bearer tok"])
        let subs = server.frames(.sub).filter { $0.frame.target == "/rooms/lobby" }
        #expect(subs.count == 2)
        #expect(subs[0].frame.meta["since"] == nil)
        #expect(subs[1].connection == 1)
        #expect(subs[1].frame.meta["since"] == "2")
        #expect(subs[1].frame.meta["e"] == "E1")
        // The first connection ended without a close handshake from the client.
        #expect(server.closeCodes.current.isEmpty)
        try await eventually("resumed event") { log.current.contains(.connected(session: "S1", resumed: true)) }
        #expect(log.current.contains { if case .disconnected = $0 { true } else { false } })
        await client.close()
        await server.stop()
    }

    @Test func duplicatePushesAreDroppedAndGapsResubscribe() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .sub else { return }
            subReply(connection, frame)
            if frame.meta["since"] == nil {
                for id in [1, 2, 2, 1, 3, 5] { connection.send("PUSH200|/s|id=\(id);e=E1|m\(id)") }
            } else {
                // The resubscription after the gap replays from since.
                for id in [4, 5, 6] { connection.send("PUSH200|/s|id=\(id);e=E1|m\(id)") }
            }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, configuration: testConfiguration())
        try await client.connect()
        let subscription = try await client.subscribe("/s")
        let messages = try await take(6, from: subscription)
        #expect(messages.map(\.offset) == [1, 2, 3, 4, 5, 6])
        let subs = server.frames(.sub)
        #expect(subs.count == 2)
        #expect(subs.last?.frame.meta["since"] == "3")
        await client.close()
        await server.stop()
    }

    @Test func concurrentRequestsArePairedByRequestID() async throws {
        let pending = NIOLockedValueBox<[(FakeConnection, Frame)]>([])
        let server = FakeServer { connection, frame in
            guard frame.method == .post else { return }
            let all: [(FakeConnection, Frame)]? = pending.withLockedValue { list in
                list.append((connection, frame))
                return list.count == 20 ? list : nil
            }
            // Answer all at once, in reverse order.
            for (c, f) in (all ?? []).reversed() {
                c.send("POST201|\(f.target)|r=\(f.meta["r"]!)|\(f.bodyString)-reply")
            }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, configuration: testConfiguration())
        try await client.connect()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<20 {
                group.addTask {
                    let response = try await client.request("POST", "/items/\(i)", body: "body\(i)")
                    #expect(response.status == 201)
                    #expect(response.body == "body\(i)-reply")
                    #expect(response.meta["r"] != nil)
                }
            }
            try await group.waitForAll()
        }
        #expect(Set(server.frames(.post).compactMap { $0.frame.meta["r"] }).count == 20)
        await client.close()
        await server.stop()
    }

    @Test func requestTimesOut() async throws {
        let server = FakeServer { _, _ in }
        try await server.start()
        let client = SwitchboardClient(url: server.url, configuration: testConfiguration())
        try await client.connect()
        let start = ContinuousClock.now
        await #expect(throws: SwitchboardClientError.timeout) {
            _ = try await client.request("GET", "/slow", timeout: .milliseconds(200))
        }
        let elapsed = ContinuousClock.now - start
        #expect(elapsed >= .milliseconds(150) && elapsed < .seconds(3))
        await client.close()
        await server.stop()
    }

    @Test func pendingRequestIsResentAfterReconnect() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .post else { return }
            if connection.index == 0 {
                connection.drop()  // lost before the answer
            } else {
                connection.send("POST201|\(frame.target)|r=\(frame.meta["r"]!)|done")
            }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, configuration: testConfiguration())
        try await client.connect()
        let response = try await client.request("POST", "/pay", body: "{}", idempotencyKey: "key-42")
        #expect(response.status == 201 && response.body == "done")
        let posts = server.frames(.post)
        #expect(posts.count == 2)
        #expect(posts.map(\.connection) == [0, 1])
        #expect(posts[0].frame.meta["r"] == posts[1].frame.meta["r"])
        #expect(posts.allSatisfy { $0.frame.meta["k"] == "key-42" })
        await client.close()
        await server.stop()
    }

    @Test func refusedFirstConnectThrows() async throws {
        let server = FakeServer { _, _ in }
        server.refuseStatus.withLockedValue { $0 = .unauthorized }
        try await server.start()
        let client = SwitchboardClient(url: server.url, token: { "bad" }, configuration: testConfiguration())
        await #expect {
            try await client.connect()
        } throws: { error in
            if case SwitchboardClientError.refused = error { return true }
            return false
        }
        await #expect(throws: SwitchboardClientError.closed) {
            _ = try await client.request("GET", "/x")
        }
        await server.stop()
    }

    @Test func close4403StopsReconnecting() async throws {
        let server = FakeServer { connection, frame in
            if frame.method == .post { connection.close(code: 4403, reason: "kicked") }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, configuration: testConfiguration())
        let log = EventLog(client)
        try await client.connect()
        await #expect(throws: SwitchboardClientError.closed) {
            _ = try await client.request("POST", "/kick-me")
        }
        try await eventually("closed event") { log.current.last == .closed }
        #expect(log.current.contains(.disconnected(code: 4403, reason: "kicked")))
        try await Task.sleep(for: .milliseconds(300))
        #expect(server.connections.current.count == 1)
        await server.stop()
    }

    @Test func subscribeRefusedAndNotRecovered() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .sub, let r = frame.meta["r"] else { return }
            switch frame.target {
            case "/private": connection.send("SUB403|/private|r=\(r)|{\"error\":\"forbidden\"}")
            default: connection.send("SUB410|\(frame.target)|r=\(r);id=9;e=E2;recovered=0|trimmed")
            }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, configuration: testConfiguration())
        let log = EventLog(client)
        try await client.connect()
        await #expect(throws: SwitchboardClientError.refused(status: 403, body: "{\"error\":\"forbidden\"}")) {
            _ = try await client.subscribe("/private")
        }
        _ = try await client.subscribe("/old")
        #expect(client.lastOffset(of: "/old") == 9)
        try await eventually("notRecovered") { log.current.contains(.notRecovered(stream: "/old")) }
        await #expect(throws: SwitchboardClientError.self) { _ = try await client.subscribe("bad target") }
        await client.close()
        await server.stop()
    }
}
