import Testing

@testable import SwitchboardClient

@Suite struct BackoffTests {
    @Test func upperBoundGrowsExponentiallyUpToMax() {
        let backoff = Backoff(min: .milliseconds(500), max: .seconds(20))
        #expect(backoff.upperBound(attempt: 0) == .milliseconds(500))
        #expect(backoff.upperBound(attempt: 1) == .seconds(1))
        #expect(backoff.upperBound(attempt: 3) == .seconds(4))
        #expect(backoff.upperBound(attempt: 5) == .seconds(16))
        #expect(backoff.upperBound(attempt: 6) == .seconds(20))
        #expect(backoff.upperBound(attempt: 1000) == .seconds(20))
        #expect(backoff.upperBound(attempt: -3) == .milliseconds(500))
    }

    @Test func fullJitterStaysWithinBounds() {
        let backoff = Backoff(min: .milliseconds(100), max: .seconds(2))
        var generator = SystemRandomNumberGenerator()
        for attempt in 0..<12 {
            let bound = backoff.upperBound(attempt: attempt)
            var sawLowerHalf = false
            for _ in 0..<200 {
                let delay = backoff.delay(attempt: attempt, using: &generator)
                #expect(delay >= .zero && delay <= bound)
                if delay < bound / 2 { sawLowerHalf = true }
            }
            #expect(sawLowerHalf, "full jitter draws from 0, not from bound/2")
        }
    }

    @Test func zeroMinimumMeansNoDelay() {
        let backoff = Backoff(min: .zero, max: .seconds(1))
        #expect(backoff.delay(attempt: 10) == .zero)
    }
}

@Suite struct StreamBookTests {
    @Test func firstSubscribeThenSequentialPushesAndDuplicates() {
        var book = StreamBook()
        let params = book.prepareSubscribe("/rooms/a")
        #expect(params.since == nil && params.epoch == nil)
        #expect(book.subscribeReply("/rooms/a", status: 200, id: 5, epoch: "E1", solicited: true) == .subscribed)
        #expect(book.last(of: "/rooms/a") == 5)
        #expect(book.push("/rooms/a", id: 6, epoch: "E1") == .deliver(notRecovered: false))
        #expect(book.push("/rooms/a", id: 6, epoch: "E1") == .drop)
        #expect(book.push("/rooms/a", id: 3, epoch: "E1") == .drop)
        #expect(book.push("/rooms/a", id: 7, epoch: "E1") == .deliver(notRecovered: false))
        #expect(book.last(of: "/rooms/a") == 7)
    }

    @Test func gapResubscribesOnceWithSinceLast() {
        var book = StreamBook()
        _ = book.prepareSubscribe("/s")
        _ = book.subscribeReply("/s", status: 200, id: 0, epoch: "E", solicited: true)
        #expect(book.push("/s", id: 1, epoch: "E") == .deliver(notRecovered: false))
        #expect(book.push("/s", id: 3, epoch: "E") == .resubscribe(notRecovered: false))
        let params = book.prepareSubscribe("/s")
        #expect(params.since == 1 && params.epoch == "E")
        // While the resubscription is pending, further jumps are dropped, not re-requested.
        #expect(book.push("/s", id: 4, epoch: "E") == .drop)
        // SUB200 for a resume echoes since: the position is kept.
        #expect(book.subscribeReply("/s", status: 200, id: 1, epoch: "E", solicited: true) == .subscribed)
        #expect(book.last(of: "/s") == 1)
        #expect(book.push("/s", id: 2, epoch: "E") == .deliver(notRecovered: false))
    }

    @Test func notRecoveredResetsPosition() {
        var book = StreamBook()
        _ = book.prepareSubscribe("/s")
        _ = book.subscribeReply("/s", status: 200, id: 10, epoch: "E1", solicited: true)
        _ = book.prepareSubscribe("/s")
        #expect(book.subscribeReply("/s", status: 410, id: 50, epoch: "E2", solicited: true) == .notRecovered)
        #expect(book.last(of: "/s") == 50)
        #expect(book["/s"]?.epoch == "E2")
        #expect(book.push("/s", id: 51, epoch: "E2") == .deliver(notRecovered: false))
    }

    @Test func epochChangeOnPushIsNotRecoveredAndDelivers() {
        var book = StreamBook()
        _ = book.prepareSubscribe("/s")
        _ = book.subscribeReply("/s", status: 200, id: 10, epoch: "E1", solicited: true)
        #expect(book.push("/s", id: 1, epoch: "E2") == .deliver(notRecovered: true))
        #expect(book.last(of: "/s") == 1)
        #expect(book.push("/s", id: 2, epoch: "E2") == .deliver(notRecovered: false))
    }

    @Test func unsolicitedReplyKeepsAKnownPosition() {
        var book = StreamBook()
        // Built-in stream of a new session: starts from the top.
        #expect(book.subscribeReply("/broadcast", status: 200, id: 7, epoch: "E", solicited: false) == .subscribed)
        #expect(book.last(of: "/broadcast") == 7)
        _ = book.push("/broadcast", id: 8, epoch: "E")
        // After a reconnect the server resumes from its acked offset; ours is kept.
        book.connectionLost()
        #expect(book.subscribeReply("/broadcast", status: 200, id: 5, epoch: "E", solicited: false) == .subscribed)
        #expect(book.last(of: "/broadcast") == 8)
        #expect(book.push("/broadcast", id: 6, epoch: "E") == .drop)
    }

    /// The server moved a known stream to a new epoch unasked (its history was lost): told, and
    /// repositioned. While our own SUB is on its way, the server's reply is left to ours.
    @Test func anUnsolicitedReplyInANewEpochIsNotRecoveredUnlessOurSUBIsPending() {
        var book = StreamBook()
        #expect(book.subscribeReply("/broadcast", status: 200, id: 7, epoch: "E", solicited: false) == .subscribed)
        _ = book.push("/broadcast", id: 8, epoch: "E")
        book.connectionLost()
        #expect(book.subscribeReply("/broadcast", status: 200, id: 3, epoch: "F", solicited: false) == .notRecovered)
        #expect(book.last(of: "/broadcast") == 3)
        _ = book.prepareSubscribe("/broadcast")
        #expect(book.subscribeReply("/broadcast", status: 200, id: 1, epoch: "G", solicited: false) == .subscribed)
        #expect(book.last(of: "/broadcast") == 3)
    }

    /// A route's refusal relayed as SUB410 carries no `id`: no subscription is held.
    @Test func aSUB410WithoutAnIdIsARefusal() {
        var book = StreamBook()
        _ = book.prepareSubscribe("/rooms/gone")
        #expect(book.subscribeReply("/rooms/gone", status: 410, id: nil, epoch: nil, solicited: true) == .refused)
        #expect(book.last(of: "/rooms/gone") == nil)
    }

    @Test func refusalForgetsUnknownStream() {
        var book = StreamBook()
        _ = book.prepareSubscribe("/private")
        #expect(book.subscribeReply("/private", status: 403, id: nil, epoch: nil, solicited: true) == .refused)
        #expect(book["/private"] == nil)
    }

    @Test func acksOnlyForAdvancedStreams() {
        var book = StreamBook()
        _ = book.subscribeReply("/a", status: 200, id: 0, epoch: "E", solicited: false)
        _ = book.subscribeReply("/b", status: 200, id: 0, epoch: "E", solicited: false)
        _ = book.push("/a", id: 1, epoch: "E")
        _ = book.push("/a", id: 2, epoch: "E")
        let first = book.takeAcks()
        #expect(first.map(\.stream) == ["/a"] && first.map(\.id) == [2])
        #expect(book.takeAcks().isEmpty)
        _ = book.push("/b", id: 1, epoch: "E")
        #expect(book.takeAcks().map(\.stream) == ["/b"])
    }

    @Test func closeDispositions() {
        #expect(CloseDisposition.forCloseCode(4403) == .stop)
        #expect(CloseDisposition.forCloseCode(4409) == .stop)
        #expect(CloseDisposition.forCloseCode(4401) == .reconnect)
        #expect(CloseDisposition.forCloseCode(1001) == .reconnect)
        #expect(CloseDisposition.forCloseCode(4001) == .reconnect)
        #expect(CloseDisposition.forCloseCode(nil) == .reconnect)
        #expect(CloseDisposition.forCloseCode(4503) == .reconnectAfterRandomDelay(max: .seconds(3)))
    }
}
