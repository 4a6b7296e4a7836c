import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire
import Testing

@testable import SwitchboardClient

/// A `ClientState` past its HELLO on connection 1, and the frames it sends.
struct ConnectedState {
    var state: ClientState
    private var outbound: AsyncStream<OutboundItem>

    init(retryBackoff: Backoff = Backoff(min: .seconds(1), max: .seconds(8))) throws {
        let (_, events) = AsyncStream.makeStream(of: ClientEvent.self)
        var state = ClientState(events: events, logger: Logger(label: "test"))
        state.retryBackoff = retryBackoff
        state.phase = .connecting(id: 1)
        let (outbound, continuation) = AsyncStream.makeStream(of: OutboundItem.self)
        state.outbound = continuation
        self.state = state
        self.outbound = outbound
        try self.receive("HELLO200|/|s=S1;resumed=0|{}")
    }

    /// A frame from the server.
    mutating func receive(_ text: String) throws {
        let frame = try Frame(parsing: ByteBuffer(string: text))
        self.state.receive(frame, connectionID: 1)
    }

    /// The frames sent since the last call.
    mutating func sent() async -> [Frame] {
        let (next, continuation) = AsyncStream.makeStream(of: OutboundItem.self)
        self.state.outbound?.finish()
        self.state.outbound = continuation
        var frames: [Frame] = []
        for await item in self.outbound {
            if case .text(let text) = item, let frame = try? Frame(parsing: ByteBuffer(string: text)) {
                frames.append(frame)
            }
        }
        self.outbound = next
        return frames
    }
}

/// Seeds `book`; the error thrown, nil when the position was taken.
func seedError(_ book: inout StreamBook, last: Int64 = 41, epoch: String?, tag: String?) -> (any Error)? {
    do {
        try book.seed("/s", last: last, epoch: epoch, tag: tag)
        return nil
    } catch {
        return error
    }
}

func isInvalidArgument(_ error: (any Error)?) -> Bool {
    guard let error = error as? SwitchboardClientError, case .invalidArgument = error else { return false }
    return true
}

/// Positions the application gives (`subscribe(_:after:)`), tags and epochs the server sends.
@Suite struct SeedAndTagTests {
    @Test func tagsAreOneTo32LettersDigitsOrUnderscoreDotTildeHyphen() {
        for tag in ["k3f9x0", "a", "A-b_c.d~e", String(repeating: "x", count: 32)] {
            #expect(StreamBook.isValidTag(tag), "\(tag)")
        }
        for tag in ["", String(repeating: "x", count: 33), "not/a/tag", "sp ace", "a+b", "é", "a%20"] {
            #expect(!StreamBook.isValidTag(tag), "\(tag)")
        }
        #expect(StreamBook.validTag("tag001") == "tag001")
        #expect(StreamBook.validTag("not/a/tag") == nil)
        #expect(StreamBook.validTag("") == nil)
        #expect(StreamBook.validTag(nil) == nil)
        #expect(StreamBook.normalizedEpoch("") == nil)
        #expect(StreamBook.normalizedEpoch("E1") == "E1")
    }

    @Test func aSeededPositionCountsAsAcked() throws {
        var book = StreamBook()
        try book.seed("/s", last: 41, epoch: "E7", tag: "kept41")
        #expect(book["/s"]?.acked == 41)
        #expect(book.takeAcks().isEmpty, "no ACK for the seeded offset before the SUB is answered")
        let params = book.prepareSubscribe("/s")
        #expect(params.since == 41 && params.epoch == "E7" && params.tag == "kept41")
        #expect(book.subscribeReply("/s", status: 200, id: 41, epoch: "E7", solicited: true) == .subscribed)
        #expect(book.takeAcks().isEmpty)
        #expect(book.push("/s", id: 42, epoch: "E7", tag: "tag042") == .deliver(notRecovered: false))
        #expect(book.takeAcks().map(\.id) == [42])
    }

    @Test func aSeedWithABadTagEpochOrOffsetThrowsAndChangesNothing() {
        var book = StreamBook()
        let errors = [
            seedError(&book, epoch: "E1", tag: "not/a/tag"),
            seedError(&book, epoch: "E1", tag: String(repeating: "t", count: 33)),
            seedError(&book, epoch: "E;1", tag: "tag001"),
            seedError(&book, epoch: "E 1", tag: "tag001"),
            seedError(&book, last: -1, epoch: "E1", tag: "tag001"),
            seedError(&book, last: StreamOffset.maximum + 1, epoch: "E1", tag: "tag001"),
        ]
        #expect(errors.allSatisfy { isInvalidArgument($0) })
        #expect(book.entries.isEmpty)
        // Empty epoch and tag: not known (never sent as `e=` or `t=`).
        let taken = seedError(&book, epoch: "", tag: "") == nil
        #expect(taken)
        #expect(book["/s"]?.epoch == nil && book["/s"]?.tag == nil && book["/s"]?.last == 41)
        let params = book.prepareSubscribe("/s")
        #expect(params.since == 41 && params.epoch == nil && params.tag == nil)
    }

    @Test func aServerTagThatIsNotATagAndAnEmptyEpochCountAsNone() {
        var book = StreamBook()
        _ = book.subscribeReply("/s", status: 200, id: 0, epoch: "E", solicited: false)
        #expect(book.push("/s", id: 1, epoch: "E", tag: "not/a/tag") == .deliver(notRecovered: false))
        #expect(book["/s"]?.tag == nil)
        // An empty epoch is no epoch: not an epoch change, and not kept.
        #expect(book.push("/s", id: 2, epoch: "", tag: "tag002") == .deliver(notRecovered: false))
        #expect(book["/s"]?.epoch == "E" && book["/s"]?.tag == "tag002")
        var other = StreamBook()
        _ = other.subscribeReply("/t", status: 200, id: 3, epoch: "", solicited: false)
        #expect(other["/t"]?.epoch == nil)
        let params = other.prepareSubscribe("/t")
        #expect(params.epoch == nil)
    }

    @Test func restorePutsBackTheEntryBeforeASeed() throws {
        var book = StreamBook()
        _ = book.subscribeReply("/s", status: 200, id: 7, epoch: "E", solicited: false)
        let before = book["/s"]
        try book.seed("/s", last: 2, epoch: "E0", tag: nil)
        _ = book.prepareSubscribe("/s")
        book.restore("/s", to: before)
        #expect(book["/s"] == before)
        book.restore("/s", to: nil)
        #expect(book["/s"] == nil)
    }

    @Test func aSubAnsweredWithAnErrorNoLongerHoldsBackGaps() {
        var book = StreamBook()
        _ = book.prepareSubscribe("/s")
        _ = book.subscribeReply("/s", status: 200, id: 0, epoch: "E", solicited: true)
        #expect(book.push("/s", id: 1, epoch: "E") == .deliver(notRecovered: false))
        #expect(book.push("/s", id: 3, epoch: "E") == .resubscribe(notRecovered: false))
        _ = book.prepareSubscribe("/s")
        #expect(book.push("/s", id: 4, epoch: "E") == .drop, "awaiting the reply")
        book.subscribeFailed("/s")  // ERR429: no SUB reply comes
        #expect(book.push("/s", id: 5, epoch: "E") == .resubscribe(notRecovered: false))
    }
}

/// Resubscriptions (after HELLO, after a gap, retried) the server refuses, in the client's state.
@Suite struct ResubscriptionStateTests {
    @Test func onlyRateLimitedAndUnavailableRefusalsAreRetried() {
        #expect(ClientState.isTransientRefusal(status: 503, body: #"{"error":"subscribe_failed"}"#))
        #expect(ClientState.isTransientRefusal(status: 429, body: #"{"error":"rate_limited"}"#))
        #expect(ClientState.isTransientRefusal(status: 429, body: #"{"error":"too_many_requests","reason":"at most 64"}"#))
        #expect(ClientState.isTransientRefusal(status: 429, body: "not json"))
        #expect(!ClientState.isTransientRefusal(status: 429, body: #"{"error":"too_many_subscriptions","reason":"at most 2"}"#))
        #expect(!ClientState.isTransientRefusal(status: 403, body: #"{"error":"forbidden"}"#))
        #expect(!ClientState.isTransientRefusal(status: 404, body: ""))
    }

    @Test func aGapResubscriptionAnsweredERR429IsRetriedAfterABackoff() async throws {
        var h = try ConnectedState()
        _ = h.state.slot(for: "/s", explicit: true)
        h.state.resubscribe("/s")  // as after a HELLO
        var sent = await h.sent()
        let r = try #require(sent.first?.meta["r"])
        #expect(h.state.resubscriptions[r] == "/s")
        try h.receive("SUB200|/s|r=\(r);id=0;e=E|")
        #expect(h.state.resubscriptions.isEmpty)
        try h.receive("PUSH200|/s|id=1;e=E;t=tag001|one")
        // A gap: resubscribed with a fresh r, which the server answers ERR429 (rate limited).
        try h.receive("PUSH200|/s|id=3;e=E;t=tag003|three")
        sent = await h.sent()
        #expect(sent.count == 1)
        let gapR = try #require(sent.first?.meta["r"])
        #expect(gapR != r && sent.first?.meta["since"] == "1" && sent.first?.meta["t"] == "tag001")
        try h.receive(#"ERR429|/|r=\#(gapR)|{"error":"rate_limited"}"#)
        #expect(h.state.book["/s"]?.awaitingReply == false)
        #expect(h.state.retrySubscribe == ["/s"])
        #expect(h.state.resubscriptions.isEmpty)
        #expect(h.state.retrySubscribeAttempt == 1)
        // Sent again after the backoff (at least its minimum, 1 s here), not at the next tick.
        let due = try #require(h.state.retrySubscribeAt)
        #expect(due - ContinuousClock.now >= .milliseconds(900))
        h.state.resubscribeDeferred(now: due - .milliseconds(1))
        let early = await h.sent()
        #expect(early.isEmpty)
        h.state.resubscribeDeferred(now: due)
        sent = await h.sent()
        #expect(sent.map(\.target) == ["/s"] && sent.first?.meta["since"] == "1")
        let retryR = try #require(sent.first?.meta["r"])
        #expect(h.state.resubscriptions[retryR] == "/s")
        #expect(h.state.retrySubscribe.isEmpty && h.state.retrySubscribeAt == nil)
        // Deferred again (SUB429 for too many requests in flight): the backoff grows.
        try h.receive(#"SUB429|/s|r=\#(retryR)|{"error":"too_many_requests"}"#)
        #expect(h.state.retrySubscribeAttempt == 2)
        #expect(h.state.retrySubscribe == ["/s"])
        let due2 = try #require(h.state.retrySubscribeAt)
        h.state.resubscribeDeferred(now: due2)
        sent = await h.sent()
        let lastR = try #require(sent.first?.meta["r"])
        try h.receive("SUB200|/s|r=\(lastR);id=1;e=E;recovered=1|")
        #expect(h.state.retrySubscribeAttempt == 0, "a subscription that succeeds resets the backoff")
        #expect(h.state.book["/s"]?.awaitingReply == false)
        let next = h.state.book.push("/s", id: 2, epoch: "E")
        #expect(next == .deliver(notRecovered: false))
    }

    @Test func aResubscriptionRefusedForTooManySubscriptionsEndsTheSubscription() async throws {
        var h = try ConnectedState()
        let slot = h.state.slot(for: "/s", explicit: true)
        h.state.resubscribe("/s")
        let sent = await h.sent()
        let r = try #require(sent.first?.meta["r"])
        try h.receive(#"SUB429|/s|r=\#(r)|{"error":"too_many_subscriptions","reason":"at most 1 subscriptions per connection"}"#)
        #expect(h.state.subscriptions.isEmpty)
        #expect(h.state.book["/s"] == nil)
        #expect(h.state.retrySubscribe.isEmpty && h.state.retrySubscribeAt == nil)
        var iterator = slot.messages.makeAsyncIterator()
        let end = await iterator.next()
        #expect(end == nil, "the subscription ended")
    }

    @Test func reconnectDelaysBackOffAndA4429AddsThePause() {
        var configuration = SwitchboardClientConfiguration()
        configuration.minReconnectDelay = .milliseconds(100)
        configuration.maxReconnectDelay = .seconds(1)
        configuration.rateLimitPause = .seconds(5)
        let (_, events) = AsyncStream.makeStream(of: ClientEvent.self)
        var state = ClientState(events: events, logger: Logger(label: "test"))
        state.phase = .connecting(id: 1)
        let first = state.connectionEnded(connectionID: 1, code: nil, reason: "", error: nil, configuration: configuration)
        #expect(state.attempt == 1)
        #expect(first.map { $0 >= .zero && $0 <= .milliseconds(100) } == true)
        state.phase = .connecting(id: 2)
        let second = state.connectionEnded(connectionID: 2, code: 4429, reason: "rate limit", error: nil, configuration: configuration)
        #expect(state.attempt == 2)
        #expect(second.map { $0 >= .seconds(5) && $0 <= .seconds(5) + .milliseconds(200) } == true)
    }
}

/// The same against a scripted server.
@Suite(.timeLimit(.minutes(1))) struct SubscriptionFailureTests {
    /// ERR429 (rate limited) answering the resubscription sent after a reconnect: sent again,
    /// not left waiting until the next disconnect.
    @Test func aResubscriptionAfterAReconnectAnsweredERR429IsSentAgain() async throws {
        try await RecoveryTests.resubscriptionAnsweredOnce { r in #"ERR429|/|r=\#(r)|{"error":"rate_limited"}"# }
    }

    /// ERR429 answering the resubscription after a gap: retried after a backoff, and the gap is
    /// then filled.
    @Test func aGapResubscriptionAnsweredERR429IsSentAgainAfterABackoff() async throws {
        let subTimes = NIOLockedValueBox<[ContinuousClock.Instant]>([])
        let server = FakeServer { connection, frame in
            guard frame.method == .sub, frame.target == "/rooms/g" else { return }
            let n = subTimes.withLockedValue { times -> Int in
                times.append(ContinuousClock.now)
                return times.count
            }
            switch n {
            case 1:
                subReply(connection, frame)
                connection.send("PUSH200|/rooms/g|id=1;e=E1;t=tag001|one")
                connection.send("PUSH200|/rooms/g|id=3;e=E1;t=tag003|three")  // a gap
            case 2:
                connection.send(#"ERR429|/|r=\#(frame.meta["r"]!)|{"error":"rate_limited"}"#)
            default:
                subReply(connection, frame)
                connection.send("PUSH200|/rooms/g|id=2;e=E1;t=tag002|two")
                connection.send("PUSH200|/rooms/g|id=3;e=E1;t=tag003|three")
            }
        }
        try await server.start()
        var configuration = testConfiguration()
        configuration.minReconnectDelay = .milliseconds(300)
        configuration.maxReconnectDelay = .seconds(1)
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: configuration)
        try await client.connect()
        let subscription = try await client.subscribe("/rooms/g")
        let messages = try await take(3, from: subscription)
        #expect(messages.map(\.offset) == [1, 2, 3])
        let times = subTimes.current
        #expect(times.count == 3)
        if times.count == 3 {
            #expect(times[2] - times[1] >= .milliseconds(250), "backed off, not sent again at the next ack tick")
        }
        let subs = server.frames(.sub).map(\.frame)
        #expect(subs.count == 3)
        if subs.count == 3 {
            #expect(subs[1].meta["since"] == "1" && subs[2].meta["since"] == "1")
            #expect(subs[1].meta["r"] != subs[2].meta["r"])
        }
        await client.close()
        await server.stop()
    }

    /// SUB429 `too_many_subscriptions` is final: the subscription ends, it is not retried.
    @Test func aResubscriptionRefusedForTooManySubscriptionsEndsTheSubscription() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .sub, frame.target == "/rooms/m" else { return }
            if connection.index == 0 {
                subReply(connection, frame, top: 3)
            } else {
                connection.send(
                    #"SUB429|/rooms/m|r=\#(frame.meta["r"]!)|{"error":"too_many_subscriptions","reason":"at most 1 subscriptions per connection"}"#
                )
            }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: testConfiguration())
        try await client.connect()
        let subscription = try await client.subscribe("/rooms/m")
        await client.simulateNetworkLoss()
        let received = try await withTimeout {
            var count = 0
            for await _ in subscription { count += 1 }
            return count
        }
        #expect(received == 0)
        #expect(client.lastOffset(of: "/rooms/m") == nil)
        try await Task.sleep(for: .milliseconds(400))  // several ack ticks
        #expect(server.frames(.sub).filter { $0.frame.target == "/rooms/m" }.count == 2)
        await client.close()
        await server.stop()
    }

    /// A seeded subscribe() that fails (refused, ERR429, timed out) leaves no slot and no
    /// position behind: nothing acked, nothing resubscribed at the next HELLO, and a late
    /// answer is not taken up.
    @Test func aSeededSubscriptionThatFailsLeavesNothingBehind() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .sub, let r = frame.meta["r"] else { return }
            switch frame.target {
            case "/rooms/denied": connection.send(#"SUB403|/rooms/denied|r=\#(r)|{"error":"forbidden"}"#)
            case "/rooms/limited": connection.send(#"ERR429|/|r=\#(r)|{"error":"rate_limited"}"#)
            default: break  // "/rooms/silent": not answered in time
            }
        }
        try await server.start()
        var configuration = testConfiguration()
        configuration.requestTimeout = .milliseconds(300)
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: configuration)
        try await client.connect()
        for stream in ["/rooms/denied", "/rooms/limited", "/rooms/silent"] {
            let kept = ClientMessage(stream: stream, offset: 41, epoch: "E7", tag: "kept41", body: "")
            await #expect(throws: SwitchboardClientError.self) {
                _ = try await client.subscribe(stream, after: kept)
            }
            #expect(client.lastOffset(of: stream) == nil, "\(stream)")
        }
        // The answer to the subscription that timed out comes late: not taken up. (On a busy
        // machine the server may read the SUB after the client gave up on it.)
        try await eventually("the silent SUB reached the server") { server.frames(.sub).contains { $0.frame.target == "/rooms/silent" } }
        let silent = try #require(server.frames(.sub).first { $0.frame.target == "/rooms/silent" }?.frame)
        let r = try #require(silent.meta["r"])
        server.connections.current[0].send("SUB200|/rooms/silent|r=\(r);id=41;e=E7;recovered=1|")
        try await Task.sleep(for: .milliseconds(300))  // several ack ticks
        #expect(client.lastOffset(of: "/rooms/silent") == nil)
        #expect(server.frames(.ack).isEmpty)
        // Nor resubscribed after a reconnect.
        await client.simulateNetworkLoss()
        try await eventually("second connection") { server.connections.current.count == 2 }
        try await Task.sleep(for: .milliseconds(300))
        #expect(server.frames(.sub).filter { $0.connection == 1 }.isEmpty)
        await client.close()
        await server.stop()
    }

    /// The offset the application resumes after is not acked: the SUB records it.
    @Test func aSeededPositionIsNotAcked() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .sub else { return }
            // Answered late: several ack ticks go by first.
            Task {
                try? await Task.sleep(for: .milliseconds(250))
                subReply(connection, frame, epoch: "E7")
                connection.send("PUSH200|\(frame.target)|id=42;e=E7;t=tag042|next")
            }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: testConfiguration())
        try await client.connect()
        let kept = ClientMessage(stream: "/rooms/k", offset: 41, epoch: "E7", tag: "kept41", body: "")
        let subscription = try await client.subscribe("/rooms/k", after: kept)
        let next = try await take(1, from: subscription)
        #expect(next.map(\.offset) == [42])
        try await eventually("the ack of 42") { server.frames(.ack).contains { $0.frame.meta["id"] == "42" } }
        #expect(!server.frames(.ack).contains { $0.frame.meta["id"] == "41" })
        await client.close()
        await server.stop()
    }

    /// A tag or epoch the application gives that is not one is refused before anything is sent;
    /// an empty epoch or tag is not known, and not sent.
    @Test func anApplicationTagOrEpochThatIsNotOneIsRefused() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .sub else { return }
            subReply(connection, frame)
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: testConfiguration())
        try await client.connect()
        let bad = [
            ClientMessage(stream: "/rooms/v", offset: 5, epoch: "E1", tag: "not/a/tag", body: ""),
            ClientMessage(stream: "/rooms/v", offset: 5, epoch: "E1", tag: String(repeating: "t", count: 33), body: ""),
            ClientMessage(stream: "/rooms/v", offset: 5, epoch: "E;1", tag: "tag005", body: ""),
            ClientMessage(stream: "/rooms/v", offset: -1, epoch: "E1", tag: "tag005", body: ""),
        ]
        for message in bad {
            await #expect {
                _ = try await client.subscribe("/rooms/v", after: message)
            } throws: { error in
                if case SwitchboardClientError.invalidArgument = error { return true }
                return false
            }
        }
        #expect(client.lastOffset(of: "/rooms/v") == nil)
        #expect(server.frames(.sub).filter { $0.frame.target == "/rooms/v" }.isEmpty)
        let unknown = ClientMessage(stream: "/rooms/v", offset: 5, epoch: "", tag: "", body: "")
        _ = try await client.subscribe("/rooms/v", after: unknown)
        let sub = try #require(server.frames(.sub).first { $0.frame.target == "/rooms/v" }?.frame)
        #expect(sub.meta["since"] == "5" && sub.meta["e"] == nil && sub.meta["t"] == nil)
        await client.close()
        await server.stop()
    }

    /// A `t` from the server that is not a tag is taken as none (not handed over, not named on
    /// resume); an empty `e` as no epoch (never sent as `e=`).
    @Test func aServerTagThatIsNotATagAndAnEmptyEpochAreNotSentBack() async throws {
        let server = FakeServer { connection, frame in
            guard frame.method == .sub else { return }
            switch frame.target {
            case "/rooms/x":
                subReply(connection, frame)
                if connection.index == 0 { connection.send("PUSH200|/rooms/x|id=1;e=E1;t=not/a/tag|one") }
            case "/rooms/y":
                subReply(connection, frame, epoch: "")
                if connection.index == 0 { connection.send("PUSH200|/rooms/y|id=1;e=;t=tag001|one") }
            default:
                break
            }
        }
        try await server.start()
        let client = SwitchboardClient(url: server.url, token: { "tok" }, configuration: testConfiguration())
        try await client.connect()
        let x = try await take(1, from: try await client.subscribe("/rooms/x"))
        let y = try await take(1, from: try await client.subscribe("/rooms/y"))
        #expect(x.map(\.tag) == [""] && x.map(\.epoch) == ["E1"])
        #expect(y.map(\.tag) == ["tag001"] && y.map(\.epoch) == [""])
        await client.simulateNetworkLoss()
        try await eventually("the resubscriptions") { server.frames(.sub).filter { $0.connection == 1 }.count == 2 }
        let resumes = server.frames(.sub).filter { $0.connection == 1 }.map(\.frame)
        let resumeX = try #require(resumes.first { $0.target == "/rooms/x" })
        let resumeY = try #require(resumes.first { $0.target == "/rooms/y" })
        #expect(resumeX.meta["since"] == "1" && resumeX.meta["e"] == "E1" && resumeX.meta["t"] == nil)
        #expect(resumeY.meta["since"] == "1" && resumeY.meta["e"] == nil && resumeY.meta["t"] == "tag001")
        await client.close()
        await server.stop()
    }
}
