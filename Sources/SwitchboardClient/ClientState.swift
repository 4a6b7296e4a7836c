import HummingbirdWSClient
import Logging
import NIOCore
import SwitchboardWire

/// What the connection's writer task sends.
enum OutboundItem: Sendable {
    case text(String)
    /// Close handshake with 1000.
    case close
    /// Drop the TCP connection without a close handshake (test hook).
    case drop
}

/// The connection state machine.
///
///     idle ──connect()──▶ connecting(id) ──HELLO──▶ connected(id)
///                           ▲      │                    │
///                           │      └────── socket ends ─┤
///                           └── waitingToReconnect ◀────┘  (backoff, unless 4403/4409)
///     any ──close()/4403/4409/first attempt refused──▶ closed
enum ConnectionPhase: Equatable {
    case idle
    /// Opening the socket, upgrading, or waiting for HELLO.
    case connecting(id: UInt64)
    case connected(id: UInt64, since: ContinuousClock.Instant)
    case waitingToReconnect
    case closed

    var connectionID: UInt64? {
        switch self {
        case .connecting(let id), .connected(let id, _): id
        default: nil
        }
    }

    var isConnected: Bool {
        if case .connected = self { return true }
        return false
    }
}

struct PendingRequest {
    let text: String
    let continuation: CheckedContinuation<ClientResponse, any Error>
    var timer: Task<Void, Never>?
}

struct SubscribeWaiter {
    let stream: String
    let continuation: CheckedContinuation<Void, any Error>
    var timer: Task<Void, Never>?
    /// The subscription slot was created by this call (removed again if it fails).
    let createdSlot: Bool
}

struct SubscriptionSlot {
    let messages: AsyncStream<ClientMessage>
    let continuation: AsyncStream<ClientMessage>.Continuation
    /// Subscribed with `subscribe()` (resubscribed on every reconnect).
    var explicit: Bool

    init(explicit: Bool) {
        (self.messages, self.continuation) = AsyncStream.makeStream(of: ClientMessage.self, bufferingPolicy: .bufferingOldest(100_000))
        self.explicit = explicit
    }
}

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
    /// Streams whose resubscription the server could not do for now (SUB503 during a failover,
    /// SUB429): sent again at the next timer tick.
    var retrySubscribe: Set<String> = []

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
            if let epoch { meta[MetaKey.epoch] = epoch }
            if let tag, !tag.isEmpty { meta[MetaKey.tag] = tag }
        }
        self.send(encodeFrame(method: .sub, target: stream, meta: meta))
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
        self.retrySubscribe = []  // every stream is subscribed again below
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
        for stream in self.book.streams where BuiltInStreams.isBuiltIn(stream) && self.book.last(of: stream) != nil {
            if BuiltinStream.isSessionStream(stream) && stream != ownSessionStream { continue }
            streams.insert(stream)
        }
        for stream in streams.subtracting(done).sorted() {
            self.sendSubscribe(stream, r: self.makeRequestID())
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
        guard known || BuiltInStreams.isBuiltIn(stream) else {
            self.logger.debug("push on a stream not subscribed", metadata: ["stream": "\(stream)"])
            return
        }
        let epoch = frame.meta[MetaKey.epoch]
        let tag = frame.meta[MetaKey.tag]
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
            self.sendSubscribe(stream, r: self.makeRequestID())
        }
    }

    mutating func subscribeReply(_ frame: Frame, status: Int) {
        let stream = frame.target
        let r = frame.meta[MetaKey.requestID]
        var waiter: SubscribeWaiter?
        if let r, let w = self.subscribeWaiters[r], w.stream == stream {
            waiter = self.subscribeWaiters.removeValue(forKey: r)
        }
        let id = frame.meta[MetaKey.offset].flatMap { StreamOffset.parse($0) }
        let outcome = self.book.subscribeReply(stream, status: status, id: id, epoch: frame.meta[MetaKey.epoch], solicited: r != nil)
        switch outcome {
        case .subscribed:
            waiter?.timer?.cancel()
            waiter?.continuation.resume()
        case .notRecovered:
            self.events.yield(.notRecovered(stream: stream))
            waiter?.timer?.cancel()
            waiter?.continuation.resume()
        case .refused:
            let error = SwitchboardClientError.refused(status: status, body: frame.bodyString)
            if let waiter {
                self.failSubscribe(waiter, error: error)
            } else if status == 429 || status >= 500 {
                // Not now (the node's engine is failing over, or too many requests): not given
                // up either, or the stream would silently stop. Sent again at the next tick.
                self.logger.info("resubscription deferred", metadata: ["stream": "\(stream)", "status": "\(status)"])
                self.retrySubscribe.insert(stream)
            } else if (400..<500).contains(status), let slot = self.subscriptions[stream], slot.explicit {
                // A resubscription refused for good (403/404…): end the subscription.
                self.logger.warning("resubscription refused", metadata: ["stream": "\(stream)", "status": "\(status)"])
                self.subscriptions[stream] = nil
                self.book.forget(stream)
                slot.continuation.finish()
            } else {
                self.logger.warning("subscription refused", metadata: ["stream": "\(stream)", "status": "\(status)"])
            }
        }
    }

    mutating func failSubscribe(_ waiter: SubscribeWaiter, error: SwitchboardClientError) {
        waiter.timer?.cancel()
        if waiter.createdSlot, let slot = self.subscriptions[waiter.stream],
            !self.subscribeWaiters.values.contains(where: { $0.stream == waiter.stream })
        {
            self.subscriptions[waiter.stream] = nil
            self.book.forget(waiter.stream)
            slot.continuation.finish()
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
            delay = Backoff(min: configuration.minReconnectDelay, max: configuration.maxReconnectDelay).delay(attempt: self.attempt)
            self.attempt += 1
        case .reconnectAfterRandomDelay(let max):
            delay = .nanoseconds(Int64.random(in: 0...Backoff.nanoseconds(max)))
        case .reconnectAfterRateLimit:
            // Unanswered requests are re-sent after HELLO with their `r` and idempotency key.
            delay = configuration.rateLimitPause + Backoff(min: configuration.minReconnectDelay, max: configuration.maxReconnectDelay).delay(attempt: self.attempt)
            self.attempt += 1
        }
        self.phase = .waitingToReconnect
        return delay
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

enum FrameValidation {
    static func checkTarget(_ target: String) throws(SwitchboardClientError) {
        guard target.first == "/" else { throw .invalidArgument("target must start with '/': \(target)") }
        guard target.utf8.count <= 4096 else { throw .invalidArgument("target longer than 4096 bytes") }
        for b in target.utf8 where b <= 0x20 || b >= 0x7F || b == UInt8(ascii: "|") {
            throw .invalidArgument("target must be printable ASCII without '|' (percent-encode): \(target)")
        }
    }

    static func checkMetaValue(_ value: String, key: String) throws(SwitchboardClientError) {
        guard !value.isEmpty else { throw .invalidArgument("empty META value for \(key)") }
        for b in value.utf8 where b <= 0x20 || b >= 0x7F || b == UInt8(ascii: "|") || b == UInt8(ascii: ";") || b == UInt8(ascii: "=") {
            throw .invalidArgument("META value for \(key) must be printable ASCII without | ; =")
        }
    }
}
