// Over 400 lines on purpose: one value whose transitions (frames in, resubscription, the
// connection's life cycle) read best side by side; its parts are in ClientStateParts.swift.
import Foundation
import HummingbirdWSClient
import Logging
import NIOCore
import SwitchboardWire

/// Everything mutable in a client, guarded by one lock. Methods perform their effects
/// (yielding to streams, resuming continuations, queueing outbound frames) directly:
/// none of them blocks or calls back into the client.
struct ClientState {
    var phase: ConnectionPhase = .idle
    var attempt = 0
    var session: String?
    var book = StreamBook()
    var subscriptions: [String: SubscriptionSlot] = [:]
    var subscribeWaiters: [String: SubscribeWaiter] = [:]
    var requests: [String: PendingRequest] = [:]
    var nextRequestID = 0
    var nextConnectionID: UInt64 = 0
    var outbound: AsyncStream<OutboundItem>.Continuation?
    var firstConnect: CheckedContinuation<Void, any Error>?
    var loopTask: Task<Void, Never>?
    var ackTask: Task<Void, Never>?
    var latestToken: String?
    var closedEventSent = false
    /// Stream of the `r` of every SUB sent for a stream already held (after HELLO, after a gap, or
    /// a deferred retry), so that an ERR answering it (ERR429: rate limited) names its stream.
    /// Only this connection's: cleared when it ends.
    var resubscriptions: [String: String] = [:]
    /// Streams whose resubscription the server could not do for now (SUB503 during a failover,
    /// a rate-limited SUB429 or ERR429): sent again at `retrySubscribeAt`.
    var retrySubscribe: Set<String> = []
    /// When the deferred resubscriptions are sent again (at the first timer tick from then on).
    var retrySubscribeAt: ContinuousClock.Instant?
    /// Deferrals in a row, the backoff attempt (reset when a SUB we sent succeeds).
    var retrySubscribeAttempt = 0
    /// Backoff of deferred resubscriptions (set to the client's reconnect backoff).
    var retryBackoff = Backoff(min: .milliseconds(500), max: .seconds(20))

    let events: AsyncStream<ClientEvent>.Continuation
    let logger: Logger

    mutating func makeRequestID() -> String {
        self.nextRequestID += 1
        return String(self.nextRequestID)
    }

    /// Queue a frame if connected (after HELLO); otherwise it is dropped (callers resend on HELLO).
    func send(_ text: String) {
        guard self.phase.isConnected else { return }
        self.outbound?.yield(.text(text))
    }

    /// What the subscription slot of `stream` is now (before a `subscribe()` changes it).
    func slotBefore(_ stream: String) -> SlotBefore {
        guard let slot = self.subscriptions[stream] else { return .absent }
        return slot.explicit ? .explicit : .implicit
    }

    mutating func slot(for stream: String, explicit: Bool) -> SubscriptionSlot {
        if var slot = self.subscriptions[stream] {
            if explicit && !slot.explicit {
                slot.explicit = true
                self.subscriptions[stream] = slot
            }
            return slot
        }
        let slot = SubscriptionSlot(explicit: explicit)
        self.subscriptions[stream] = slot
        return slot
    }

    mutating func sendSubscribe(_ stream: String, r: String) {
        guard self.phase.isConnected else { return }
        let (since, epoch, tag) = self.book.prepareSubscribe(stream)
        var meta: Meta = [MetaKey.requestID: r]
        if let since {
            meta[MetaKey.since] = String(since)
            if let epoch = StreamBook.normalizedEpoch(epoch) { meta[MetaKey.epoch] = epoch }
            if let tag = StreamBook.validTag(tag) { meta[MetaKey.tag] = tag }
        }
        self.send(encodeFrame(method: .sub, target: stream, meta: meta))
    }

    /// SUB for a stream already held (after HELLO, after a gap, or a deferred retry), with a
    /// fresh `r` kept in `resubscriptions` so that its answer, SUB reply or ERR, is matched to it.
    mutating func resubscribe(_ stream: String) {
        guard self.phase.isConnected else { return }
        let r = self.makeRequestID()
        self.resubscriptions[r] = stream
        self.sendSubscribe(stream, r: r)
    }

    /// The server could not resubscribe `stream` for now: sent again after a backoff (at least
    /// its minimum, growing while resubscriptions keep being deferred).
    mutating func deferResubscription(_ stream: String, now: ContinuousClock.Instant = .now) {
        self.retrySubscribe.insert(stream)
        guard self.retrySubscribeAt == nil else { return }
        let delay = Swift.max(self.retryBackoff.min, self.retryBackoff.delay(attempt: self.retrySubscribeAttempt))
        self.retrySubscribeAttempt += 1
        self.retrySubscribeAt = now + delay
    }

    /// At a timer tick: sends the deferred resubscriptions again once their time has come.
    mutating func resubscribeDeferred(now: ContinuousClock.Instant = .now) {
        guard let at = self.retrySubscribeAt, now >= at, self.phase.isConnected else { return }
        self.retrySubscribeAt = nil
        let retry = self.retrySubscribe
        self.retrySubscribe = []
        for stream in retry.sorted() where self.subscriptions[stream] != nil || BuiltinStream.isBuiltin(stream) {
            self.resubscribe(stream)
        }
    }

    /// A refusal that is not final: the engine is away (5xx) or the connection is rate limited
    /// (429), but not SUB429 `too_many_subscriptions` (over `maxSubscriptions`: refused for good).
    static func isTransientRefusal(status: Int, body: String) -> Bool {
        if status >= 500 { return true }
        guard status == 429 else { return false }
        return Self.errorCode(of: body) != "too_many_subscriptions"
    }

    /// The `error` of a JSON error body (`{"error":"…","reason":"…"}`), if it is one.
    static func errorCode(of body: String) -> String? {
        struct ErrorBody: Decodable {
            let error: String?
        }
        return (try? JSONDecoder().decode(ErrorBody.self, from: Data(body.utf8)))?.error
    }

    // MARK: inbound

    mutating func receive(_ frame: Frame, connectionID: UInt64) {
        guard self.phase.connectionID == connectionID else { return }
        let r = frame.meta[MetaKey.requestID]
        switch frame.method {
        case .hello:
            self.hello(frame, connectionID: connectionID)
        case .push:
            self.push(frame)
        default:
            if let r, let pending = self.requests.removeValue(forKey: r) {
                pending.timer?.cancel()
                pending.continuation.resume(returning: ClientResponse(status: frame.status ?? 0, body: frame.bodyString, meta: frame.meta))
            } else if frame.method == .sub, let status = frame.status {
                self.subscribeReply(frame, status: status)
            } else if let r, let waiter = self.subscribeWaiters.removeValue(forKey: r) {
                // e.g. ERR400/ERR429 answering a SUB.
                self.failSubscribe(waiter, error: .refused(status: frame.status ?? 0, body: frame.bodyString))
            } else if let r, let stream = self.resubscriptions.removeValue(forKey: r) {
                // ERR429 (rate limited) or ERR400 answering a resubscription: no SUB reply follows.
                self.book.subscribeFailed(stream)
                self.resubscriptionRefused(stream, status: frame.status ?? 0, body: frame.bodyString)
            } else if frame.method == .ack, frame.status == 503 {
                // The ack was not recorded (the node's engine was away): send it again next tick.
                self.book.ackFailed(frame.target)
            } else if let status = frame.status, status >= 400 {
                self.logger.warning("switchboard error frame", metadata: ["frame": "\(frame.method)\(status) \(frame.target) \(frame.bodyString)"])
            }
        }
    }

    mutating func hello(_ frame: Frame, connectionID: UInt64) {
        guard case .connecting(let id) = self.phase, id == connectionID else { return }
        let sid = frame.meta[MetaKey.session] ?? ""
        let resumed = frame.meta["resumed"] == "1"
        if let old = self.session, old != sid {
            // The old session's own stream cannot be resumed by a new session.
            self.book.forget(BuiltinStream.session(old))
        }
        self.session = sid
        self.phase = .connected(id: id, since: .now)
        self.resubscriptions = [:]
        self.retrySubscribe = []  // every stream is subscribed again below
        self.retrySubscribeAt = nil
        self.events.yield(.connected(session: sid, resumed: resumed))

        // Resubscribe (§9 step 2): pending subscribe() calls with their own r, every
        // explicit subscription, and the built-in streams we hold a position on.
        var done = Set<String>()
        for (r, waiter) in self.subscribeWaiters.sorted(by: { Int($0.key) ?? 0 < Int($1.key) ?? 0 }) {
            self.sendSubscribe(waiter.stream, r: r)
            done.insert(waiter.stream)
        }
        let ownSessionStream = BuiltinStream.session(sid)
        var streams = Set(self.subscriptions.filter { $0.value.explicit }.keys)
        for stream in self.book.streams where BuiltinStream.isBuiltin(stream) && self.book.last(of: stream) != nil {
            if BuiltinStream.isSessionStream(stream) && stream != ownSessionStream { continue }
            streams.insert(stream)
        }
        for stream in streams.subtracting(done).sorted() {
            self.resubscribe(stream)
        }
        // Resend requests still waiting for an answer (same r, same k).
        for (_, pending) in self.requests.sorted(by: { Int($0.key) ?? 0 < Int($1.key) ?? 0 }) {
            self.send(pending.text)
        }
        if let first = self.firstConnect {
            self.firstConnect = nil
            first.resume()
        }
    }

    mutating func push(_ frame: Frame) {
        let stream = frame.target
        let known = self.subscriptions[stream] != nil || self.subscribeWaiters.values.contains { $0.stream == stream }
        guard known || BuiltinStream.isBuiltin(stream) else {
            self.logger.debug("push on a stream not subscribed", metadata: ["stream": "\(stream)"])
            return
        }
        // An empty epoch is none; a `t` that is not a tag is none (not named on resume).
        let epoch = StreamBook.normalizedEpoch(frame.meta[MetaKey.epoch])
        let tag = StreamBook.validTag(frame.meta[MetaKey.tag])
        guard let id = frame.meta[MetaKey.offset].flatMap({ StreamOffset.parse($0) }) else {
            // Not a durable message: no offset to track.
            let message = ClientMessage(stream: stream, offset: 0, epoch: epoch ?? "", body: frame.bodyString)
            self.slot(for: stream, explicit: false).continuation.yield(message)
            return
        }
        switch self.book.push(stream, id: id, epoch: epoch, tag: tag) {
        case .deliver(let notRecovered):
            if notRecovered { self.events.yield(.notRecovered(stream: stream)) }
            let message = ClientMessage(
                stream: stream, offset: id, epoch: epoch ?? self.book[stream]?.epoch ?? "", tag: tag ?? "", body: frame.bodyString
            )
            if case .dropped = self.slot(for: stream, explicit: false).continuation.yield(message) {
                self.logger.warning("subscription buffer full, message dropped", metadata: ["stream": "\(stream)", "id": "\(id)"])
            }
        case .drop:
            self.logger.trace("duplicate push dropped", metadata: ["stream": "\(stream)", "id": "\(id)"])
        case .resubscribe(let notRecovered):
            if notRecovered { self.events.yield(.notRecovered(stream: stream)) }
            self.logger.debug("gap in stream, resubscribing", metadata: ["stream": "\(stream)", "id": "\(id)"])
            self.resubscribe(stream)
        }
    }

    mutating func subscribeReply(_ frame: Frame, status: Int) {
        let stream = frame.target
        let r = frame.meta[MetaKey.requestID]
        var waiter: SubscribeWaiter?
        if let r {
            if let w = self.subscribeWaiters[r], w.stream == stream {
                waiter = self.subscribeWaiters.removeValue(forKey: r)
            } else if self.resubscriptions[r] == stream {
                self.resubscriptions[r] = nil
            } else if self.subscriptions[stream] == nil && !BuiltinStream.isBuiltin(stream) {
                // A late answer to a subscribe() given up (timed out), or to a stream unsubscribed
                // since: not a stream of ours, nothing to record (nor to ack).
                self.logger.debug("reply to a subscription given up", metadata: ["stream": "\(stream)", "status": "\(status)"])
                return
            }
        }
        let id = frame.meta[MetaKey.offset].flatMap { StreamOffset.parse($0) }
        let outcome = self.book.subscribeReply(stream, status: status, id: id, epoch: frame.meta[MetaKey.epoch], solicited: r != nil)
        switch outcome {
        case .subscribed:
            if r != nil { self.retrySubscribeAttempt = 0 }
            waiter?.timer?.cancel()
            waiter?.continuation.resume()
        case .notRecovered:
            if r != nil { self.retrySubscribeAttempt = 0 }
            self.events.yield(.notRecovered(stream: stream))
            waiter?.timer?.cancel()
            waiter?.continuation.resume()
        case .refused:
            if let waiter {
                self.failSubscribe(waiter, error: .refused(status: status, body: frame.bodyString))
            } else {
                self.resubscriptionRefused(stream, status: status, body: frame.bodyString)
            }
        }
    }

    /// A SUB for a stream already held was refused (by a SUB reply or an ERR frame).
    mutating func resubscriptionRefused(_ stream: String, status: Int, body: String) {
        if Self.isTransientRefusal(status: status, body: body) {
            // Not now (the node's engine is failing over, or rate limited): not given up either,
            // or the stream would silently stop. Sent again after a backoff.
            self.logger.info("resubscription deferred", metadata: ["stream": "\(stream)", "status": "\(status)"])
            self.deferResubscription(stream)
        } else if (400..<500).contains(status), let slot = self.subscriptions[stream], slot.explicit {
            // A resubscription refused for good (403/404, too many subscriptions…): end the subscription.
            self.logger.warning("resubscription refused", metadata: ["stream": "\(stream)", "status": "\(status)"])
            self.subscriptions[stream] = nil
            self.book.forget(stream)
            self.retrySubscribe.remove(stream)
            slot.continuation.finish()
        } else {
            self.logger.warning("subscription refused", metadata: ["stream": "\(stream)", "status": "\(status)"])
        }
    }

    /// A `subscribe()` call failed: what it changed is put back (unless another call for the
    /// stream is pending): a slot it made is removed, a position it seeded is undone.
    mutating func failSubscribe(_ waiter: SubscribeWaiter, error: SwitchboardClientError) {
        waiter.timer?.cancel()
        let stream = waiter.stream
        if !self.subscribeWaiters.values.contains(where: { $0.stream == stream }) {
            switch waiter.slotBefore {
            case .absent:
                if let slot = self.subscriptions.removeValue(forKey: stream) { slot.continuation.finish() }
            case .implicit:
                self.subscriptions[stream]?.explicit = false
            case .explicit:
                break
            }
            if let seed = waiter.seed, self.book.last(of: stream) == seed.last {
                self.book.restore(stream, to: seed.before)
            } else if waiter.slotBefore != .explicit && !waiter.hadEntry {
                self.book.forget(stream)
            } else {
                self.book.subscribeFailed(stream)
            }
        }
        waiter.continuation.resume(throwing: error)
    }

    // MARK: connection life cycle

    /// The socket of `connectionID` is gone. Returns the delay before the next attempt, or nil to stop.
    mutating func connectionEnded(
        connectionID: UInt64,
        code: UInt16?,
        reason: String,
        error: (any Error)?,
        configuration: SwitchboardClientConfiguration
    ) -> Duration? {
        guard self.phase.connectionID == connectionID || self.phase == .closed else { return nil }
        self.outbound?.finish()
        self.outbound = nil
        self.book.connectionLost()
        self.resubscriptions = [:]  // this connection's SUBs are not answered any more
        if case .connected(_, let since) = self.phase {
            if ContinuousClock.now - since >= configuration.stableAfter { self.attempt = 0 }
            self.events.yield(.disconnected(code: code, reason: reason))
        }
        if self.phase == .closed {
            self.shutDown(error: .closed)
            return nil
        }
        if let first = self.firstConnect {
            // The very first attempt failed: connect() throws and the client stops.
            self.firstConnect = nil
            let failure: any Error
            if let wsError = error as? WebSocketClientError, wsError == .webSocketUpgradeFailed {
                failure = SwitchboardClientError.refused(status: 0, body: "WebSocket upgrade refused by the server")
            } else if let code {
                failure = SwitchboardClientError.refused(status: Int(code), body: reason)
            } else {
                failure = error ?? SwitchboardClientError.closed
            }
            self.phase = .closed
            self.shutDown(error: .closed)
            first.resume(throwing: failure)
            return nil
        }
        let delay: Duration
        switch CloseDisposition.forCloseCode(code) {
        case .stop:
            self.logger.info("not reconnecting", metadata: ["code": "\(code.map(String.init) ?? "-")", "reason": "\(reason)"])
            self.phase = .closed
            self.shutDown(error: .closed)
            return nil
        case .reconnect:
            delay = self.nextReconnectDelay(configuration)
        case .reconnectAfterRandomDelay(let max):
            delay = .nanoseconds(Int64.random(in: 0...Backoff.nanoseconds(max)))
        case .reconnectAfterRateLimit:
            // Unanswered requests are re-sent after HELLO with their `r` and idempotency key.
            delay = configuration.rateLimitPause + self.nextReconnectDelay(configuration)
        }
        self.phase = .waitingToReconnect
        return delay
    }

    /// The backoff delay of the next reconnect attempt (counted).
    private mutating func nextReconnectDelay(_ configuration: SwitchboardClientConfiguration) -> Duration {
        defer { self.attempt += 1 }
        return configuration.reconnectBackoff.delay(attempt: self.attempt)
    }

    /// Fail everything pending and end every stream (idempotent).
    mutating func shutDown(error: SwitchboardClientError) {
        self.outbound?.finish()
        self.outbound = nil
        for (_, pending) in self.requests {
            pending.timer?.cancel()
            pending.continuation.resume(throwing: error)
        }
        self.requests = [:]
        for (_, waiter) in self.subscribeWaiters {
            waiter.timer?.cancel()
            waiter.continuation.resume(throwing: error)
        }
        self.subscribeWaiters = [:]
        self.resubscriptions = [:]
        self.retrySubscribe = []
        self.retrySubscribeAt = nil
        for (_, slot) in self.subscriptions { slot.continuation.finish() }
        self.subscriptions = [:]
        if let first = self.firstConnect {
            self.firstConnect = nil
            first.resume(throwing: error)
        }
        self.ackTask?.cancel()
        self.ackTask = nil
        if !self.closedEventSent {
            self.closedEventSent = true
            self.events.yield(.closed)
            self.events.finish()
        }
    }
}

/// Encodes a frame known to be valid (targets and META values checked by the caller or from the server).
func encodeFrame(method: Method, target: String, meta: Meta, body: String = "") -> String {
    String(buffer: Frame(method: method, target: target, meta: meta, body: ByteBuffer(string: body)).encoded())
}
