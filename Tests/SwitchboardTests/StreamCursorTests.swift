import NIOCore
import Testing

@testable import Switchboard

/// The stream cursor's decisions, driven without sockets: every transition of subscribe, replay,
/// go live, gap, overflow, epoch change, rollback, duplicates and a superseded replay.
@Suite("Stream cursor state machine")
struct StreamCursorTests {
    static let stream = "/rooms/a"

    /// Message `offset` of epoch `epoch`, chained to the one before (tags "t<offset>").
    static func message(_ offset: Int64, epoch: String = "E1", previousTag: String? = nil) -> StreamMessage {
        StreamMessage(
            stream: Self.stream, offset: offset, epoch: epoch, tag: "t\(offset)", previousTag: previousTag ?? "t\(offset - 1)",
            body: ByteBuffer(string: "m\(offset)")
        )
    }

    static func messages(_ offsets: ClosedRange<Int64>, epoch: String = "E1") -> [StreamMessage] {
        offsets.map { Self.message($0, epoch: epoch) }
    }

    /// The actions of a step that must have been taken (a mutating call cannot sit in `#require`).
    static func step<T>(_ actions: T?, sourceLocation: SourceLocation = #_sourceLocation) throws -> T {
        try #require(actions, sourceLocation: sourceLocation)
    }

    static func cursor(since: Int64? = 2, epoch: String? = "E1", tag: String? = "t2", generation: UInt32 = 1) -> StreamCursor {
        StreamCursor(stream: Self.stream, since: since, epoch: epoch, tag: tag, generation: generation)
    }

    /// A cursor that replayed to `last` and went live.
    static func liveCursor(at last: Int64) -> StreamCursor {
        var cursor = Self.cursor(since: last, tag: "t\(last)")
        _ = cursor.historyRead(.messages([], StreamPosition(epoch: "E1", top: last)), generation: 1, limit: 10, first: true)
        #expect(cursor.isLive)
        return cursor
    }

    @Test func aShortBatchRepliesRecoveredWritesHistoryAndGoesLive() throws {
        var cursor = Self.cursor()
        let actions = try Self.step(
            cursor.historyRead(.messages(Self.messages(3...4), StreamPosition(epoch: "E1", top: 4)), generation: 1, limit: 10, first: true)
        )
        #expect(actions.reply == .recovered(since: 2, StreamPosition(epoch: "E1", top: 4)))
        #expect(actions.history.map(\.offset) == [3, 4])
        #expect(actions.next == .live)
        #expect(cursor.isLive && cursor.last == 4 && cursor.lastTag == "t4")
    }

    @Test func aFullBatchReadsOnAfterItsLastMessageNamingIt() throws {
        var cursor = Self.cursor()
        let actions = try Self.step(
            cursor.historyRead(.messages(Self.messages(3...5), StreamPosition(epoch: "E1", top: 9)), generation: 1, limit: 3, first: true)
        )
        #expect(actions.next == .read(.init(offset: 5, epoch: "E1", tag: "t5")))
        #expect(!cursor.isLive)
        // The next batch answers no SUB again.
        let more = try Self.step(
            cursor.historyRead(.messages(Self.messages(6...9), StreamPosition(epoch: "E1", top: 9)), generation: 1, limit: 10, first: false)
        )
        #expect(more.reply == nil && more.history.map(\.offset) == [6, 7, 8, 9] && more.next == .live)
    }

    @Test func liveMessagesWaitDuringReplayAndFollowTheHistory() throws {
        var cursor = Self.cursor()
        #expect(cursor.live(Self.message(5)) == .init(action: .buffered))
        #expect(cursor.live(Self.message(6)) == .init(action: .buffered))
        let actions = try Self.step(
            cursor.historyRead(.messages(Self.messages(3...5), StreamPosition(epoch: "E1", top: 5)), generation: 1, limit: 10, first: true)
        )
        // 5 came from history; only 6 is written from the live messages that waited.
        #expect(actions.history.map(\.offset) == [3, 4, 5])
        #expect(actions.waited.map(\.offset) == [6])
        #expect(actions.next == .live && cursor.last == 6)
    }

    @Test func aGapAmongTheWaitingMessagesReadsOn() throws {
        var cursor = Self.cursor()
        _ = cursor.live(Self.message(4))
        _ = cursor.live(Self.message(6))  // 5 was lost on the way
        let actions = try Self.step(
            cursor.historyRead(.messages(Self.messages(3...3), StreamPosition(epoch: "E1", top: 3)), generation: 1, limit: 10, first: true)
        )
        #expect(actions.waited.map(\.offset) == [4])
        #expect(actions.next == .read(.init(offset: 4, epoch: "E1", tag: "t4")))
        #expect(!cursor.isLive)
        // The waiting messages were consumed: the next short batch goes live with nothing more.
        let rest = try Self.step(
            cursor.historyRead(.messages(Self.messages(5...6), StreamPosition(epoch: "E1", top: 6)), generation: 1, limit: 10, first: false)
        )
        #expect(rest.history.map(\.offset) == [5, 6] && rest.waited.isEmpty && rest.next == .live)
    }

    @Test func aWaitingMessageOfAnotherEpochOrAnotherChainReadsOn() throws {
        var other = Self.cursor()
        _ = other.live(Self.message(3, epoch: "E2"))
        let epoch = try Self.step(other.historyRead(.messages([], StreamPosition(epoch: "E1", top: 2)), generation: 1, limit: 10, first: true))
        #expect(epoch.waited.isEmpty && epoch.next == .read(.init(offset: 2, epoch: "E1", tag: "t2")))

        var rolledBack = Self.cursor()
        _ = rolledBack.live(Self.message(3, previousTag: "x2"))
        let chain = try Self.step(rolledBack.historyRead(.messages([], StreamPosition(epoch: "E1", top: 2)), generation: 1, limit: 10, first: true))
        #expect(chain.waited.isEmpty && chain.next == .read(.init(offset: 2, epoch: "E1", tag: "t2")))
    }

    @Test func anOverflowingBufferDropsTheWaitingMessagesAndReadsOnceMore() throws {
        var cursor = Self.cursor()
        for offset in 3..<(3 + Int64(StreamCursor.maxBuffered)) {
            #expect(cursor.live(Self.message(offset)).action == .buffered)
        }
        let past = 3 + Int64(StreamCursor.maxBuffered)
        #expect(cursor.live(Self.message(past)).action == .overflowed)
        #expect(cursor.live(Self.message(past + 1)).action == .overflowed)
        // The batch that was under way ends short, yet the cursor reads once more.
        let actions = try Self.step(
            cursor.historyRead(.messages(Self.messages(3...4), StreamPosition(epoch: "E1", top: 4)), generation: 1, limit: 10, first: true)
        )
        #expect(actions.waited.isEmpty)
        #expect(actions.next == .read(.init(offset: 4, epoch: "E1", tag: "t4")))
    }

    @Test func historyThatNoLongerCoversTheResumeIsNotRecovered() throws {
        var cursor = Self.cursor(since: 7, epoch: "E0", tag: "old7")
        _ = cursor.live(Self.message(13))
        let top = StreamPosition(epoch: "E1", top: 12)
        let actions = try Self.step(cursor.historyRead(.gone(top), generation: 1, limit: 10, first: true))
        #expect(actions.reply == .notRecovered(since: 7, top))
        // From the top on: the live message that waited follows it.
        #expect(actions.waited.map(\.offset) == [13])
        #expect(actions.next == .live && cursor.epoch == "E1" && cursor.last == 13)
    }

    @Test func aHistoryGoneMidReplayIsToldToo() throws {
        var cursor = Self.cursor()
        _ = cursor.historyRead(.messages(Self.messages(3...5), StreamPosition(epoch: "E1", top: 9)), generation: 1, limit: 3, first: true)
        let actions = try Self.step(cursor.historyRead(.gone(StreamPosition(epoch: "E1", top: 9)), generation: 1, limit: 3, first: false))
        #expect(actions.reply == .notRecovered(since: 5, StreamPosition(epoch: "E1", top: 9)))
        #expect(actions.next == .live && cursor.last == 9 && cursor.lastTag.isEmpty)
    }

    @Test func liveMessagesAreWrittenInOrderAndDuplicatesIgnored() {
        var cursor = Self.liveCursor(at: 4)
        #expect(cursor.live(Self.message(5)) == .init(action: .write))
        #expect(cursor.live(Self.message(5)) == .init(action: .ignore))
        #expect(cursor.live(Self.message(3)) == .init(action: .ignore))
        #expect(cursor.live(Self.message(6)) == .init(action: .write))
        #expect(cursor.last == 6 && cursor.lastTag == "t6")
    }

    @Test func aMessageTheSocketHasNoRoomForLeavesTheCursorWhereItWas() {
        var cursor = Self.liveCursor(at: 4)
        #expect(cursor.live(Self.message(5), writable: false) == .init(action: .slowConsumer))
        #expect(cursor.last == 4 && cursor.lastTag == "t4")
        // A duplicate or a gap is decided first: neither needs room.
        #expect(cursor.live(Self.message(4), writable: false) == .init(action: .ignore))
        #expect(cursor.live(Self.message(7), writable: false).action == .read(.init(offset: 4, epoch: "E1", tag: "t4")))
    }

    @Test func aLiveGapReadsHistoryAndTheMessageWaitsBehindIt() throws {
        var cursor = Self.liveCursor(at: 4)
        #expect(cursor.live(Self.message(7)) == .init(action: .read(.init(offset: 4, epoch: "E1", tag: "t4"))))
        #expect(!cursor.isLive)
        let actions = try Self.step(
            cursor.historyRead(.messages(Self.messages(5...6), StreamPosition(epoch: "E1", top: 7)), generation: 1, limit: 10, first: false)
        )
        #expect(actions.reply == nil && actions.history.map(\.offset) == [5, 6] && actions.waited.map(\.offset) == [7])
        #expect(actions.next == .live)
    }

    @Test func aLiveMessageThatDoesNotFollowTheLastOneReadsHistory() {
        // Offset 5 is next, but it names another predecessor: the history was rolled back.
        var cursor = Self.liveCursor(at: 4)
        #expect(cursor.live(Self.message(5, previousTag: "other4")).action == .read(.init(offset: 4, epoch: "E1", tag: "t4")))
    }

    @Test func aLiveMessageOfANewEpochIsToldThenFollowed() {
        var cursor = Self.liveCursor(at: 4)
        let decision = cursor.live(Self.message(1, epoch: "E2", previousTag: ""))
        #expect(decision == .init(epochChanged: StreamPosition(epoch: "E2", top: 0), action: .write))
        #expect(cursor.epoch == "E2" && cursor.last == 1)
        // Whatever offset the new epoch is at, the cursor follows from there.
        var later = Self.liveCursor(at: 4)
        #expect(later.live(Self.message(9, epoch: "E3")) == .init(epochChanged: StreamPosition(epoch: "E3", top: 8), action: .write))
        #expect(later.live(Self.message(11, epoch: "E3")).action == .read(.init(offset: 9, epoch: "E3", tag: "t9")))
    }

    @Test func aReplayOfAReplacedSubscriptionChangesNothing() throws {
        // A re-SUB replaced generation 1 with 2: the old replay's read and top are ignored.
        var cursor = Self.cursor(since: 2, generation: 2)
        #expect(
            cursor.historyRead(.messages(Self.messages(3...4), StreamPosition(epoch: "E1", top: 4)), generation: 1, limit: 10, first: true) == nil)
        #expect(cursor.startedLive(at: StreamPosition(epoch: "E1", top: 4), generation: 1) == nil)
        #expect(cursor.last == 2 && !cursor.isLive)
        #expect(cursor.historyRead(.messages([], StreamPosition(epoch: "E1", top: 2)), generation: 2, limit: 10, first: true) != nil)
    }

    @Test func aSubscriptionFromTheTopWritesOnlyWhatWaitedAfterIt() throws {
        var cursor = Self.cursor(since: nil, epoch: nil, tag: nil)
        _ = cursor.live(Self.message(10))
        _ = cursor.live(Self.message(11))
        let actions = try Self.step(cursor.startedLive(at: StreamPosition(epoch: "E1", top: 10), generation: 1))
        #expect(actions.waited.map(\.offset) == [11] && actions.next == .live && cursor.last == 11)
    }

    @Test func theEnginesCatchUpReadsOnlyWhatTheCursorMissed() throws {
        var cursor = Self.liveCursor(at: 4)
        #expect(cursor.engineCaughtUp(to: StreamPosition(epoch: "E1", top: 4)) == nil)
        #expect(cursor.isLive)
        #expect(cursor.engineCaughtUp(to: StreamPosition(epoch: "E1", top: 6)) == .init(offset: 4, epoch: "E1", tag: "t4"))
        #expect(!cursor.isLive)
        // During that replay another catch-up: the replay reads once more before going live.
        #expect(cursor.engineCaughtUp(to: StreamPosition(epoch: "E1", top: 8)) == nil)
        let actions = try Self.step(
            cursor.historyRead(.messages(Self.messages(5...6), StreamPosition(epoch: "E1", top: 6)), generation: 1, limit: 10, first: false)
        )
        #expect(actions.next == .read(.init(offset: 6, epoch: "E1", tag: "t6")))
        // A top below what was written (a rollback) or another epoch also reads.
        var ahead = Self.liveCursor(at: 4)
        #expect(ahead.engineCaughtUp(to: StreamPosition(epoch: "E1", top: 3)) != nil)
        var moved = Self.liveCursor(at: 4)
        #expect(moved.engineCaughtUp(to: StreamPosition(epoch: "E2", top: 4)) != nil)
    }
}
