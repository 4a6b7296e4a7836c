import NIOCore

/// Where a connection stands in one stream it subscribes to, as a state machine: events in (a
/// batch of history read, a live message, the engine's catch-up, the top of the stream), actions
/// out (what to write, whether to read history and from where). It does no I/O:
/// `ConnectionHandler+Streams.swift` carries the actions out. Its invariant is the product's
/// promise: the messages it lets out of a stream are contiguous and each follows the one before
/// (offset, epoch and tag chain); anything else becomes a history read, and a read that cannot
/// bridge it becomes a SUB410.
///
///     subscribed(since:) ──▶ catchingUp ──history (full batch)──▶ catchingUp (read on)
///                               │    ▲
///            history (short) /  │    │ gap in the waiting live messages, overflow,
///            top of stream      ▼    │ a live gap, an engine catch-up behind it
///                               live ┘
///
/// While catching up, live messages wait in a bounded buffer; past `maxBuffered` it overflows
/// (drops them and reads history once more). A re-subscription replaces the cursor with a new
/// `generation`: events meant for the old one find another generation and are ignored.
struct StreamCursor {
    enum Mode {
        /// Live messages are written as they come, in offset order.
        case live
        /// History is being replayed; live messages wait here (bounded) until it is done.
        case catchingUp(buffer: [StreamMessage], overflowed: Bool)
    }

    /// This connection's share of the node-level subscription of the stream (the engine's live
    /// channel): taken once per stream, kept across re-subscriptions, given back once.
    enum EngineShare {
        /// Not taken (yet, or taking it failed).
        case none
        /// Being taken: a later subscription of the stream waits for it before it reads.
        case taking(EventLoopFuture<Void>)
        /// Taken: given back when the stream is unsubscribed or the connection closes.
        case held
    }

    let stream: String
    /// Highest offset written to this connection.
    private(set) var last: Int64
    /// Empty until the stream's epoch is known.
    private(set) var epoch: String
    /// The tag of the message at `last` when it was a message (empty when `last` came from a
    /// position): the next one written must follow it, or the history was rolled back.
    private(set) var lastTag: String
    private(set) var mode: Mode
    /// Unique per subscription of the connection, so work started for an older one stops.
    let generation: UInt32
    var engine: EngineShare

    static let maxBuffered = 1024

    /// A subscription catching up from `since` (or from the top when nil: the cursor waits for
    /// `startedLive`), keeping the connection's engine share of a previous subscription.
    init(stream: String, since: Int64?, epoch: String?, tag: String?, generation: UInt32, engine: EngineShare = .none) {
        self.stream = stream
        self.last = since ?? 0
        self.epoch = epoch ?? ""
        self.lastTag = tag ?? ""
        self.mode = .catchingUp(buffer: [], overflowed: false)
        self.generation = generation
        self.engine = engine
    }

    // MARK: Actions

    /// Where to read history next: after `offset`, in `epoch`, naming the message there.
    struct ReadPoint: Equatable {
        var offset: Int64
        var epoch: String?
        var tag: String?
    }

    /// After a step of catching up: read on, or the cursor is live.
    enum Next: Equatable {
        case read(ReadPoint)
        case live
    }

    /// The SUB reply a batch of history calls for.
    enum Reply: Equatable {
        /// SUB200, recovered from `since`.
        case recovered(since: Int64, StreamPosition)
        /// SUB410: the history no longer covers what came after `since` (trimmed, another epoch,
        /// or rolled back); the cursor continues from `position`'s top.
        case notRecovered(since: Int64, StreamPosition)
    }

    /// What one batch of history asks for, in order: the reply, the history messages, the live
    /// messages that waited behind them, then the next step.
    struct HistoryActions {
        var reply: Reply? = nil
        var history: [StreamMessage] = []
        var waited: [StreamMessage] = []
        var next: Next
    }

    /// What to do with one live message.
    enum LiveAction: Equatable {
        /// Write it (the cursor moved to it).
        case write
        /// It should be written, but the socket is full: the connection closes as a slow consumer
        /// (the cursor did not move).
        case slowConsumer
        /// Already written (a duplicate or older): nothing.
        case ignore
        /// Waits behind the replay.
        case buffered
        /// The buffer was full: the waiting messages were dropped, history is read once more.
        case overflowed
        /// A gap or a broken chain: read from history (the message waits behind the read).
        case read(ReadPoint)
    }

    /// A live message's action; `epochChanged` (when set) is told first with SUB410: the
    /// stream's history was lost and it restarted, and the cursor follows the new epoch.
    struct LiveDecision: Equatable {
        var epochChanged: StreamPosition? = nil
        var action: LiveAction
    }

    /// Where to read after what was written last.
    var readPoint: ReadPoint {
        ReadPoint(offset: self.last, epoch: self.epoch.isEmpty ? nil : self.epoch, tag: self.lastTag.isEmpty ? nil : self.lastTag)
    }

    var isLive: Bool {
        if case .live = self.mode { true } else { false }
    }

    // MARK: Events

    /// A batch of history read for the subscription of `generation` (nil: another generation's).
    /// `first` is the subscription's first read, which the SUB reply answers; a read that asked
    /// for at most `limit` messages and got as many reads on.
    mutating func historyRead(_ read: HistoryRead, generation: UInt32, limit: Int, first: Bool) -> HistoryActions? {
        guard generation == self.generation else { return nil }
        switch read {
        case .gone(let position):
            // Not covered by history: said so (also mid-replay), then continue from the top.
            let since = self.last
            self.moveTo(position)
            var actions = self.finishCatchingUp()
            actions.reply = .notRecovered(since: since, position)
            return actions
        case .messages(let messages, let position):
            let since = self.last
            self.epoch = position.epoch
            var history: [StreamMessage] = []
            history.reserveCapacity(messages.count)
            // One read of one log: each message follows the one before (the first was checked by
            // the read against the tag it was given).
            for message in messages where message.offset == self.last + 1 {
                history.append(message)
                self.last = message.offset
                self.lastTag = message.tag
            }
            var actions = messages.count >= limit ? HistoryActions(next: .read(self.readPoint)) : self.finishCatchingUp()
            actions.reply = first ? .recovered(since: since, position) : nil
            actions.history = history
            return actions
        }
    }

    /// A subscription from the top found the stream at `position`: nothing to replay, only the
    /// live messages that waited (nil: another generation's).
    mutating func startedLive(at position: StreamPosition, generation: UInt32) -> HistoryActions? {
        guard generation == self.generation else { return nil }
        self.moveTo(position)
        return self.finishCatchingUp()
    }

    /// A live message of this stream; `writable`: whether the socket has room for it.
    mutating func live(_ message: StreamMessage, writable: Bool = true) -> LiveDecision {
        switch self.mode {
        case .live:
            var decision = LiveDecision(epochChanged: nil, action: .write)
            if message.epoch != self.epoch {
                let position = StreamPosition(epoch: message.epoch, top: message.offset - 1)
                decision.epochChanged = position
                self.moveTo(position)
            }
            if message.offset <= self.last {
                decision.action = .ignore
            } else if message.offset > self.last + 1 || !message.follows(self.lastTag) {
                // A gap (a message lost on the way), or the next offset naming another
                // predecessor than the message written last (the history was rolled back and
                // written again): read from history, which bridges it or says it cannot.
                self.mode = .catchingUp(buffer: [message], overflowed: false)
                decision.action = .read(self.readPoint)
            } else if !writable {
                decision.action = .slowConsumer
            } else {
                self.last = message.offset
                self.lastTag = message.tag
            }
            return decision
        case .catchingUp(var buffer, let overflowed):
            if overflowed { return LiveDecision(action: .overflowed) }
            self.mode = .live  // drop the array's second reference before appending
            if buffer.count < Self.maxBuffered {
                buffer.append(message)
                self.mode = .catchingUp(buffer: buffer, overflowed: false)
                return LiveDecision(action: .buffered)
            }
            self.mode = .catchingUp(buffer: [], overflowed: true)
            return LiveDecision(action: .overflowed)
        }
    }

    /// The engine says live messages up to `position` may have been lost on the way (its
    /// pub/sub was away). Returns where to read when the cursor is live and behind, in another
    /// epoch, or ahead of the top (a rollback). A replay under way reads once more before it
    /// goes live (as if its buffer overflowed): it may already be past its last read.
    mutating func engineCaughtUp(to position: StreamPosition) -> ReadPoint? {
        guard self.isLive else {
            self.mode = .catchingUp(buffer: [], overflowed: true)
            return nil
        }
        guard position.epoch != self.epoch || position.top != self.last else { return nil }
        self.mode = .catchingUp(buffer: [], overflowed: false)
        return self.readPoint
    }

    // MARK: Steps

    private mutating func moveTo(_ position: StreamPosition) {
        self.last = position.top
        self.epoch = position.epoch
        self.lastTag = ""
    }

    /// History is done: the live messages that waited follow, unless they leave a gap, come from
    /// another epoch or do not follow the last one written (read on from history, which tells
    /// which), or overflowed (read once more).
    private mutating func finishCatchingUp() -> HistoryActions {
        guard case .catchingUp(let buffer, let overflowed) = self.mode else { return HistoryActions(next: .live) }
        var waited: [StreamMessage] = []
        var gap = overflowed
        for message in buffer where message.offset > self.last {
            guard message.offset == self.last + 1, message.epoch == self.epoch, message.follows(self.lastTag) else {
                gap = true
                break
            }
            waited.append(message)
            self.last = message.offset
            self.lastTag = message.tag
        }
        if gap {
            self.mode = .catchingUp(buffer: [], overflowed: false)
            return HistoryActions(waited: waited, next: .read(self.readPoint))
        }
        self.mode = .live
        return HistoryActions(waited: waited, next: .live)
    }
}
