import DequeModule
import NIOCore
import NIOWebSocket

/// One direction of a session: the messages on their way to one peer (the upstream, or the
/// client). A message leaves the relay only when that peer confirmed it.
///
/// - Messages wait in `queue` while the peer is away (bounded in messages and bytes).
/// - One pump task writes them to the attached peer in order, several per flush. A ping that
///   carries the relay's nonce and a sequence number follows a batch when no ping is out (or
///   every `batch` messages), so there is about one ping per round trip, not one per message.
/// - The peer's pong for that ping confirms every message before it: WebSocket peers answer
///   a ping after the frames before it, so the peer read them all. Until then the
///   messages stay `unconfirmed`; if the connection dies first they go back to the front of
///   the queue and are written again to the next connection. A message is therefore never
///   lost with a connection; across a reconnect the peer may see the last batch twice
///   (the resume id lets it tell, see docs/proxy.md).
/// - Flow control never waits for a pong, only for TCP: while the peer is attached, `push`
///   waits when the messages not yet *written* fill the limits (the peer reads too slowly),
///   and a write that stays stuck past the ping timeout marks the peer dead. Pongs travel in
///   the same stream as data, behind it, so a reader that waited for confirmations could
///   wait for pongs that only it can read: two busy directions would deadlock.
/// - While the peer is away, everything pending counts: a full relay refuses the message
///   (`queueFull`), and the connection that sent it is told.
actor Relay {
    enum PushError: Error {
        /// The relay is full and its peer is away: the message was not accepted.
        case queueFull
        /// The relay closed (its peer is gone for good): the message cannot be delivered.
        case finished
    }

    /// Whether a keepalive found the attached peer alive.
    enum Liveness { case alive, dead, notAttached }

    /// Where the conversation in this direction is.
    private enum Conversation {
        case open
        /// `close` goes out after the queue; `written` once it went to the attached peer (a
        /// peer that detaches before answering gets it again from the next one).
        case closing(CloseFrame, written: Bool)
        /// Over: nothing more is accepted or written.
        case finished
    }

    private enum Work {
        case messages([ProxyMessage], ping: ByteBuffer?)
        case ping(ByteBuffer)
        case close(CloseFrame)
    }

    let limits: (messages: Int, bytes: Int)
    private let pingTimeout: Duration
    private let metrics: ProxyMetrics.Direction
    private let nonce = UInt64.random(in: .min ... .max)

    private var queue = Deque<ProxyMessage>()
    private var unconfirmed = Deque<(message: ProxyMessage, ping: UInt64)>()
    /// Bytes of all pending messages, and of those not yet written.
    private var bytes = 0
    private var queuedBytes = 0
    /// When the write in progress started, while one is.
    private var writeStartedAt: ContinuousClock.Instant?
    private var sink: PeerLink?
    /// Sequence number of the last ping written, and when the oldest unanswered one went out.
    private var lastPing: UInt64 = 0
    private var unansweredSince: ContinuousClock.Instant?
    private var lastPingAt: ContinuousClock.Instant?
    private var pingDue = false
    /// Messages written since the last ping.
    private var sincePing = 0
    private var conversation = Conversation.open
    /// A peer is connecting (handshake done, not attached yet): producers wait rather than
    /// being refused, as they would for an attached peer. (Independent of `sink`: the next
    /// peer can be on its way while the previous one is still attached.)
    private var expecting = false
    private var pumpWaiter: CheckedContinuation<Void, Never>?
    private var spaceWaiters: [CheckedContinuation<Void, Never>] = []

    /// Messages written per ping at most.
    static let batch = 32

    init(messages: Int, bytes: Int, pingTimeout: Duration, metrics: ProxyMetrics.Direction) {
        self.limits = (messages, bytes)
        self.pingTimeout = pingTimeout
        self.metrics = metrics
    }

    /// Messages not yet confirmed by the peer (queued or written).
    var pending: Int { self.queue.count + self.unconfirmed.count }
    var isFinished: Bool {
        if case .finished = self.conversation { true } else { false }
    }

    private var isOpen: Bool {
        if case .open = self.conversation { true } else { false }
    }

    /// The close went out to the attached peer.
    private var closeWritten: Bool {
        if case .closing(_, written: true) = self.conversation { true } else { false }
    }

    // MARK: - Producer side

    /// Accepts `message` for the peer, waiting for room while the peer is attached.
    func push(_ message: ProxyMessage) async throws(PushError) {
        let size = message.data.readableBytes
        while true {
            guard self.isOpen else { throw .finished }
            if self.sink != nil || self.expecting {
                if self.queue.count < self.limits.messages, self.queuedBytes + size <= self.limits.bytes { break }
            } else {
                if self.pending < self.limits.messages, self.bytes + size <= self.limits.bytes { break }
                self.metrics.overflows.increment()
                throw .queueFull
            }
            await withCheckedContinuation { self.spaceWaiters.append($0) }
        }
        self.queue.append(message)
        self.bytes += size
        self.queuedBytes += size
        self.metrics.queued.increment()
        self.wakePump()
    }

    /// Ends the conversation in this direction: `close` is written after every queued message.
    func close(after close: CloseFrame) {
        guard self.isOpen else { return }
        self.conversation = .closing(close, written: false)
        self.wakePump()
    }

    /// Ends the relay now; what is still pending is not delivered. Returns how many messages.
    @discardableResult
    func finish() -> Int {
        guard !self.isFinished else { return 0 }
        self.conversation = .finished
        let lost = self.pending
        self.metrics.queued.decrement(by: Double(lost))
        if lost > 0 { self.metrics.undelivered.increment(by: lost) }
        self.queue.removeAll()
        self.unconfirmed.removeAll()
        self.bytes = 0
        self.queuedBytes = 0
        self.sink = nil
        self.wakePump()
        self.wakeSpaceWaiters()
        return lost
    }

    // MARK: - Peer side

    /// A peer is on its way (see `expecting`), or no longer is.
    func expect(_ expecting: Bool) {
        self.expecting = expecting
        if !expecting { self.wakeSpaceWaiters() }
    }

    /// `link` now receives this relay's messages (and a repeat of any unconfirmed ones).
    func attach(_ link: PeerLink) {
        guard !self.isFinished else { return }
        if let previous = self.sink, previous.id != link.id { self.detach(previous) }
        self.sink = link
        self.expecting = false
        self.unansweredSince = nil
        self.wakePump()
    }

    /// `link` is gone: unconfirmed messages go back to the front of the queue, in order.
    func detach(_ link: PeerLink) {
        guard self.sink?.id == link.id else { return }
        self.sink = nil
        if case .closing(let close, written: true) = self.conversation { self.conversation = .closing(close, written: false) }
        self.unansweredSince = nil
        self.writeStartedAt = nil
        self.pingDue = false
        while let (message, _) = self.unconfirmed.popLast() {
            self.queue.prepend(message)
            self.queuedBytes += message.data.readableBytes
        }
        // Producers waiting for room now get `queueFull` if there still is none.
        self.wakeSpaceWaiters()
    }

    /// The attached peer answered the close this relay sent: the conversation is over.
    func closeAnswered(by link: PeerLink) {
        guard self.sink?.id == link.id, self.closeWritten else { return }
        // The peer answers a close after reading every frame before it.
        self.metrics.queued.decrement(by: Double(self.unconfirmed.count))
        self.metrics.delivered.increment(by: self.unconfirmed.count)
        self.unconfirmed.removeAll()
        self.finish()
    }

    /// The connection to `link` ended after this relay's close went out but before the answer:
    /// the conversation is over all the same; unconfirmed messages count as undelivered.
    func closeUnanswered(by link: PeerLink) {
        guard self.sink?.id == link.id, self.closeWritten else { return }
        self.finish()
    }

    /// A pong from the attached peer; true when it answered one of this relay's pings.
    func pong(_ payload: ByteBuffer, from link: PeerLink) -> Bool {
        guard payload.readableBytes == 16, payload.getInteger(at: payload.readerIndex, as: UInt64.self) == self.nonce,
            let sequence = payload.getInteger(at: payload.readerIndex + 8, as: UInt64.self)
        else { return false }
        guard self.sink?.id == link.id else { return true }
        while let first = self.unconfirmed.first, first.ping <= sequence {
            self.unconfirmed.removeFirst()
            self.bytes -= first.message.data.readableBytes
            self.metrics.queued.decrement()
            self.metrics.delivered.increment()
        }
        if sequence >= self.lastPing {
            self.unansweredSince = nil
            // Messages written after the last ping need one of their own.
            if !self.unconfirmed.isEmpty {
                self.pingDue = true
                self.wakePump()
            }
        } else {
            self.unansweredSince = self.lastPingAt
        }
        self.wakeSpaceWaiters()
        return true
    }

    /// Called every ping interval: asks the pump for a ping when none is out, and reports
    /// the peer dead when one stayed unanswered, or a write stayed stuck (the peer does not
    /// read), past the timeout.
    func keepalive(_ link: PeerLink) -> Liveness {
        guard self.sink?.id == link.id else { return .notAttached }
        if let started = self.writeStartedAt, ContinuousClock.now - started > self.pingTimeout { return .dead }
        if let since = self.unansweredSince {
            return ContinuousClock.now - since > self.pingTimeout ? .dead : .alive
        }
        self.pingDue = true
        self.wakePump()
        return .alive
    }

    /// The reader of `link` was blocked (the other direction was full), so it could not read
    /// pongs: the time it waited does not count against the peer.
    func excuse(_ link: PeerLink) {
        guard self.sink?.id == link.id, self.unansweredSince != nil else { return }
        self.unansweredSince = .now
    }

    // MARK: - Pump

    /// Writes to the attached peer until the relay finishes. Run it in one task per relay.
    func pump() async {
        while let (link, work) = await self.nextWork() {
            let frames: [WebSocketFrame]
            switch work {
            case .messages(let messages, let ping):
                frames = messages.map { link.frame($0.opcode, $0.data) } + (ping.map { [link.frame(.ping, $0)] } ?? [])
            case .ping(let ping):
                frames = [link.frame(.ping, ping)]
            case .close(let close):
                await link.close(code: close.code, reason: close.reason)
                continue
            }
            do {
                self.writeStartedAt = .now
                defer { self.writeStartedAt = nil }
                try await link.write(frames)
            } catch {
                // The connection is going; its reader detaches it, this makes sure.
                self.detach(link)
                link.abort()
            }
        }
    }

    private func nextWork() async -> (PeerLink, Work)? {
        while !self.isFinished {
            if let sink = self.sink {
                if !self.queue.isEmpty {
                    // Written messages wait for the next ping: tag them with its number.
                    let tag = self.lastPing + 1
                    var batch: [ProxyMessage] = []
                    while batch.count < Self.batch, let message = self.queue.popFirst() {
                        batch.append(message)
                        self.unconfirmed.append((message, tag))
                    }
                    self.sincePing += batch.count
                    self.queuedBytes -= batch.reduce(0) { $0 + $1.data.readableBytes }
                    self.wakeSpaceWaiters()
                    var ping: ByteBuffer? = nil
                    if self.unansweredSince == nil || self.sincePing >= Self.batch {
                        ping = self.nextPing()
                        self.pingDue = false
                    }
                    return (sink, .messages(batch, ping: ping))
                }
                if self.pingDue, !self.closeWritten {
                    self.pingDue = false
                    return (sink, .ping(self.nextPing()))
                }
                if case .closing(let close, written: false) = self.conversation {
                    self.conversation = .closing(close, written: true)
                    return (sink, .close(close))
                }
            }
            await withCheckedContinuation { self.pumpWaiter = $0 }
        }
        return nil
    }

    private func nextPing() -> ByteBuffer {
        self.lastPing += 1
        self.sincePing = 0
        self.lastPingAt = .now
        if self.unansweredSince == nil { self.unansweredSince = self.lastPingAt }
        var payload = ByteBuffer()
        payload.reserveCapacity(16)
        payload.writeMultipleIntegers(self.nonce, self.lastPing)
        return payload
    }

    private func wakePump() {
        self.pumpWaiter?.resume()
        self.pumpWaiter = nil
    }

    private func wakeSpaceWaiters() {
        let waiters = self.spaceWaiters
        self.spaceWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }
}
