// Over 400 lines on purpose: the public API and the one connection loop that serves it
// (connect, run, reconnect) read best together; the decisions are in ClientState and StreamBook.
import HummingbirdWSClient
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire

/// Client of a Switchboard gateway: one WebSocket, reconnected with exponential backoff
/// and full jitter, resuming every stream after the last offset handed to the application.
public final class SwitchboardClient: Sendable {
    /// Nodes to connect to; each reconnect tries the next (a load balancer's URL works as one).
    let urls: [String]
    let tokenProvider: (@Sendable () async -> String?)?
    let configuration: SwitchboardClientConfiguration
    let logger: Logger
    let state: NIOLockedValueBox<ClientState>
    public let events: AsyncStream<ClientEvent>

    public convenience init(
        url: String,
        token: (@Sendable () async -> String?)? = nil,
        configuration: SwitchboardClientConfiguration = .init(),
        logger: Logger = Logger(label: "switchboard.client")
    ) {
        self.init(urls: [url], token: token, configuration: configuration, logger: logger)
    }

    /// A client that connects to `urls` in turn: the first attempt to the first, each
    /// reconnect to the next, so it moves to another node when one goes away.
    public init(
        urls: [String],
        token: (@Sendable () async -> String?)? = nil,
        configuration: SwitchboardClientConfiguration = .init(),
        logger: Logger = Logger(label: "switchboard.client")
    ) {
        precondition(!urls.isEmpty, "a client needs at least one URL")
        self.urls = urls
        self.tokenProvider = token
        self.configuration = configuration
        self.logger = logger
        let (events, continuation) = AsyncStream.makeStream(of: ClientEvent.self, bufferingPolicy: .bufferingNewest(4096))
        self.events = events
        var state = ClientState(events: continuation, logger: logger)
        state.retryBackoff = configuration.reconnectBackoff
        self.state = NIOLockedValueBox(state)
    }

    deinit {
        self.state.withLockedValue { state in
            state.loopTask?.cancel()
            state.ackTask?.cancel()
        }
    }

    // MARK: public API

    /// The current session id (from the last HELLO).
    public var session: String? { self.state.withLockedValue { $0.session } }

    /// The last offset handed to the application on `stream`.
    public func lastOffset(of stream: String) -> Int64? {
        self.state.withLockedValue { $0.book.last(of: stream) }
    }

    /// Starts the connection loop; returns after the first HELLO. Throws if the first attempt fails
    /// (the upgrade is refused, e.g. HTTP 401, or the server cannot be reached); the client is then closed.
    public func connect() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            self.state.withLockedValue { state in
                switch state.phase {
                case .idle:
                    state.firstConnect = continuation
                    state.phase = .waitingToReconnect
                    state.loopTask = Task { await self.runLoop() }
                    state.ackTask = Self.startAckTimer(self)
                case .closed:
                    continuation.resume(throwing: SwitchboardClientError.closed)
                case .connected:
                    continuation.resume()
                case .connecting, .waitingToReconnect:
                    continuation.resume(throwing: SwitchboardClientError.invalidArgument("connect() already in progress"))
                }
            }
        }
    }

    /// Stops reconnecting and closes the socket with 1000. Pending requests fail with `.closed`,
    /// subscriptions and `events` end.
    public func close() async {
        let (task, handshake): (Task<Void, Never>?, Bool) = self.state.withLockedValue { state in
            let handshake: Bool
            switch state.phase {
            case .connected, .connecting:
                handshake = state.outbound != nil
                state.outbound?.yield(.close)
            default:
                handshake = false
            }
            state.phase = .closed
            let task = state.loopTask
            state.loopTask = nil
            return (task, handshake)
        }
        if let task {
            if !handshake { task.cancel() }
            let watchdog = Task {
                do { try await Task.sleep(for: .seconds(3)) } catch { return }
                task.cancel()
            }
            await task.value
            watchdog.cancel()
        }
        self.state.withLockedValue { $0.shutDown(error: .closed) }
    }

    /// Sends an application request and waits for its response (any status). Survives reconnects:
    /// the request is resent, with the same `r` and idempotency key `k`, until `timeout`. A
    /// request other than GET, HEAD, OPTIONS and AUTH without `idempotencyKey` gets a random one,
    /// so a resend is applied once by routes that honour `k`.
    public func request(
        _ method: String,
        _ path: String,
        body: String = "",
        timeout: Duration? = nil,
        idempotencyKey: String? = nil
    ) async throws -> ClientResponse {
        guard let method = Method(method) else { throw SwitchboardClientError.invalidArgument("bad method \(method)") }
        try FrameValidation.checkTarget(path)
        if let idempotencyKey { try FrameValidation.checkMetaValue(idempotencyKey, key: MetaKey.idempotencyKey) }
        let timeout = timeout ?? self.configuration.requestTimeout
        let r = self.state.withLockedValue { $0.makeRequestID() }
        var meta: Meta = [MetaKey.requestID: r]
        // A request may be sent again after a reconnect (it was not answered, e.g. after 4429):
        // one that changes something carries a key, so the server applies it once.
        if let key = idempotencyKey ?? (Self.isSafe(method) ? nil : Self.newIdempotencyKey()) {
            meta[MetaKey.idempotencyKey] = key
        }
        let text = encodeFrame(method: method, target: path, meta: meta, body: body)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ClientResponse, any Error>) in
                self.state.withLockedValue { state in
                    guard state.phase != .closed && state.phase != .idle else {
                        continuation.resume(throwing: SwitchboardClientError.closed)
                        return
                    }
                    let timer = Task { [weak self] in
                        do { try await Task.sleep(for: timeout) } catch { return }
                        self?.failRequest(r, error: SwitchboardClientError.timeout)
                    }
                    state.requests[r] = PendingRequest(text: text, continuation: continuation, timer: timer)
                    state.send(text)
                }
            }
        } onCancel: {
            self.failRequest(r, error: CancellationError())
        }
    }

    static func isSafe(_ method: Method) -> Bool {
        method == .get || method == "HEAD" || method == "OPTIONS" || method == .auth
    }

    static func newIdempotencyKey() -> String { RandomID.make(length: 16) }

    /// Subscribes to `stream` (SUB, resuming after the last offset if one is known) and waits for
    /// the reply: SUB2xx, or SUB410 (subscribed, not recovered: also reported as `.notRecovered`).
    /// Throws `.refused` for any other status.
    public func subscribe(_ stream: String) async throws -> ClientSubscription {
        try await self.subscribe(stream, seed: nil)
    }

    /// Subscribes to `stream` resuming after `message`, one the application kept from an earlier
    /// run (its offset, epoch and tag): the missed messages follow, or `.notRecovered` when the
    /// server's history no longer holds that message as it was (trimmed, a new epoch, or rolled
    /// back by a failover). An empty epoch or tag means not known. Throws `.invalidArgument` when
    /// the offset is not 0…2^53−1, the epoch not a META value or the tag not a message tag
    /// (``StreamBook/isValidTag(_:)``). If the subscription fails, the position is forgotten.
    public func subscribe(_ stream: String, after message: ClientMessage) async throws -> ClientSubscription {
        try await self.subscribe(stream, seed: message)
    }

    private func subscribe(_ stream: String, seed: ClientMessage?) async throws -> ClientSubscription {
        try FrameValidation.checkTarget(stream)
        let timeout = self.configuration.requestTimeout
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            self.state.withLockedValue { state in
                guard state.phase != .closed && state.phase != .idle else {
                    continuation.resume(throwing: SwitchboardClientError.closed)
                    return
                }
                // What this call changes, taken before it changes it: put back if it fails.
                let slotBefore = state.slotBefore(stream)
                let entryBefore = state.book[stream]
                var seedUndo: SeedUndo?
                if let seed {
                    do {
                        try state.book.seed(stream, last: seed.offset, epoch: seed.epoch, tag: seed.tag)
                    } catch {
                        continuation.resume(throwing: error)
                        return
                    }
                    seedUndo = SeedUndo(before: entryBefore, last: seed.offset)
                }
                _ = state.slot(for: stream, explicit: true)
                let r = state.makeRequestID()
                let timer = Task { [weak self] in
                    do { try await Task.sleep(for: timeout) } catch { return }
                    self?.subscribeTimedOut(r)
                }
                state.subscribeWaiters[r] = SubscribeWaiter(
                    stream: stream, continuation: continuation, timer: timer,
                    slotBefore: slotBefore, hadEntry: entryBefore != nil, seed: seedUndo
                )
                state.sendSubscribe(stream, r: r)
            }
        }
        let messages = self.state.withLockedValue { $0.subscriptions[stream]?.messages } ?? AsyncStream { $0.finish() }
        return ClientSubscription(stream: stream, messages: messages, client: self)
    }

    /// The messages of a stream the server subscribes to by itself (`/users/<u>`, `/sessions/<s>`,
    /// `/broadcast`), or of a stream already subscribed. Messages are buffered until consumed.
    public func messages(_ stream: String) -> ClientSubscription {
        let messages = self.state.withLockedValue { $0.slot(for: stream, explicit: false).messages }
        return ClientSubscription(stream: stream, messages: messages, client: self)
    }

    /// Sends the new token (AUTH) and keeps it for the next reconnects (unless a token provider was given).
    public func refreshToken(_ token: String) async throws {
        self.state.withLockedValue { $0.latestToken = token }
        let response = try await self.request("AUTH", "/", body: token)
        guard (200..<300).contains(response.status) else {
            throw SwitchboardClientError.refused(status: response.status, body: response.body)
        }
    }

    /// Test hook: drop the socket without a close handshake (simulates a network loss);
    /// the client reconnects and resumes.
    public func simulateNetworkLoss() async {
        self.state.withLockedValue { state in
            if state.phase.connectionID != nil { state.outbound?.yield(.drop) }
        }
    }

    // MARK: internals

    func unsubscribe(_ stream: String) {
        self.state.withLockedValue { state in
            if let slot = state.subscriptions.removeValue(forKey: stream) { slot.continuation.finish() }
            state.book.forget(stream)
            state.resubscriptions = state.resubscriptions.filter { $0.value != stream }
            state.retrySubscribe.remove(stream)
            for (r, waiter) in state.subscribeWaiters where waiter.stream == stream {
                state.subscribeWaiters[r] = nil
                waiter.timer?.cancel()
                waiter.continuation.resume(throwing: SwitchboardClientError.closed)
            }
            state.send(encodeFrame(method: .unsub, target: stream, meta: Meta()))
        }
    }

    func failRequest(_ r: String, error: any Error) {
        self.state.withLockedValue { state in
            guard let pending = state.requests.removeValue(forKey: r) else { return }
            pending.timer?.cancel()
            pending.continuation.resume(throwing: error)
        }
    }

    func subscribeTimedOut(_ r: String) {
        self.state.withLockedValue { state in
            guard let waiter = state.subscribeWaiters.removeValue(forKey: r) else { return }
            state.failSubscribe(waiter, error: .timeout)
        }
    }

    static func startAckTimer(_ client: SwitchboardClient) -> Task<Void, Never> {
        let interval = client.configuration.ackInterval
        return Task { [weak client] in
            while true {
                do { try await Task.sleep(for: interval) } catch { return }
                guard let client else { return }
                let running = client.state.withLockedValue { state -> Bool in
                    guard state.phase != .closed else { return false }
                    guard state.phase.isConnected else { return true }
                    for ack in state.book.takeAcks() {
                        state.send(encodeFrame(method: .ack, target: ack.stream, meta: [MetaKey.offset: String(ack.id)]))
                    }
                    // Resubscriptions the server deferred (SUB503, SUB429/ERR429 rate limited) go
                    // again once their backoff has passed.
                    state.resubscribeDeferred()
                    return true
                }
                if !running { return }
            }
        }
    }

    /// The URL of connection attempt `attempt` (1, 2, …), with the session to resume.
    func connectURL(session: String?, attempt: UInt64) -> String {
        let url = self.urls[Int((attempt - 1) % UInt64(self.urls.count))]
        guard let session, !session.isEmpty else { return url }
        let separator = url.contains("?") ? "&" : "?"
        return url + separator + "sid=" + PathSegment.encode(session)
    }

    /// The connection loop: connect, run, decide (§8), back off, repeat.
    func runLoop() async {
        while true {
            let next: (id: UInt64, session: String?)? = self.state.withLockedValue { state in
                guard state.phase == .waitingToReconnect else { return nil }
                state.nextConnectionID += 1
                state.phase = .connecting(id: state.nextConnectionID)
                return (state.nextConnectionID, state.session)
            }
            guard let (connectionID, session) = next else { return }
            let token: String?
            if let tokenProvider { token = await tokenProvider() } else { token = self.state.withLockedValue { $0.latestToken } }

            var wsConfiguration = WebSocketClientConfiguration(maxFrameSize: self.configuration.maxMessageSize)
            if let token { wsConfiguration.additionalHeaders[.authorization] = "Bearer \(token)" }
            let url = self.connectURL(session: session, attempt: connectionID)
            var code: UInt16?
            var reason = ""
            var failure: (any Error)?
            do {
                let closeFrame = try await self.connectBounded(connectionID, url: url, configuration: wsConfiguration)
                if let closeFrame {
                    code = UInt16(webSocketErrorCode: closeFrame.closeCode)
                    reason = closeFrame.reason ?? ""
                } else {
                    reason = "connection lost"
                }
            } catch {
                failure = error
                reason = "\(error)"
            }
            self.logger.debug("connection ended", metadata: ["code": "\(code.map(String.init) ?? "-")", "reason": "\(reason)"])
            let delay = self.state.withLockedValue { state in
                state.connectionEnded(connectionID: connectionID, code: code, reason: reason, error: failure, configuration: self.configuration)
            }
            guard let delay else { return }
            do { try await Task.sleep(for: delay) } catch { return }
        }
    }

    /// One WebSocket connection, run to its end; fails with `.timeout` when the upgrade has not
    /// completed within `connectTimeout`. The WebSocket library waits for the upgrade without
    /// honouring cancellation, so an attempt that times out is abandoned, and closed at once if
    /// its upgrade completes later.
    func connectBounded(_ connectionID: UInt64, url: String, configuration: WebSocketClientConfiguration) async throws -> WebSocketCloseFrame? {
        enum Attempt { case pending, upgraded, abandoned }
        let attemptState = NIOLockedValueBox(Attempt.pending)
        let attempt = Task {
            try await WebSocketClient.connect(url: url, configuration: configuration, logger: self.logger) { inbound, outbound, _ in
                let run = attemptState.withLockedValue { state -> Bool in
                    guard state == .pending else { return false }
                    state = .upgraded
                    return true
                }
                if run {
                    await self.runConnection(connectionID, inbound: inbound, outbound: outbound)
                } else {
                    try? await outbound.close(.goingAway, reason: "connect timed out")
                }
            }
        }
        let timeout = self.configuration.connectTimeout
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<WebSocketCloseFrame?, any Error>) in
                let once = NIOLockedValueBox<CheckedContinuation<WebSocketCloseFrame?, any Error>?>(continuation)
                let resume: @Sendable (Result<WebSocketCloseFrame?, any Error>) -> Void = { result in
                    once.withLockedValue { c in
                        c?.resume(with: result)
                        c = nil
                    }
                }
                let watchdog = Task {
                    do { try await Task.sleep(for: timeout) } catch { return }
                    let abandoned = attemptState.withLockedValue { state -> Bool in
                        guard state == .pending else { return false }
                        state = .abandoned
                        return true
                    }
                    if abandoned {
                        attempt.cancel()
                        resume(.failure(SwitchboardClientError.timeout))
                    }
                }
                Task {
                    let result = await attempt.result
                    watchdog.cancel()
                    resume(result)
                }
            }
        } onCancel: {
            attempt.cancel()
        }
    }

    /// Runs one WebSocket: a writer task draining the outbound queue, and the reader.
    func runConnection(_ connectionID: UInt64, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async {
        let (queue, continuation) = AsyncStream.makeStream(of: OutboundItem.self)
        let attached = self.state.withLockedValue { state -> Bool in
            guard state.phase.connectionID == connectionID else { return false }
            state.outbound = continuation
            return true
        }
        guard attached else {
            try? await outbound.close(.normalClosure, reason: nil)
            return
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await item in queue {
                    switch item {
                    case .text(let text):
                        do { try await outbound.write(.text(text)) } catch { return }
                    case .close:
                        try? await outbound.close(.normalClosure, reason: nil)
                    case .drop:
                        if !Self.dropSocket(outbound) {
                            try? await outbound.close(.goingAway, reason: "network loss")
                        }
                    }
                }
            }
            do {
                var iterator = inbound.messages(maxSize: self.configuration.maxMessageSize).makeAsyncIterator()
                while let message = try await iterator.next() {
                    guard case .text(let text) = message else { continue }
                    let frame: Frame
                    do {
                        frame = try Frame(parsing: ByteBuffer(string: text))
                    } catch {
                        self.logger.warning("unparsable frame from server", metadata: ["error": "\(error)"])
                        continue
                    }
                    self.state.withLockedValue { $0.receive(frame, connectionID: connectionID) }
                }
            } catch {
                self.logger.debug("inbound ended", metadata: ["error": "\(error)"])
            }
            continuation.finish()
            group.cancelAll()
        }
    }

    /// Closes the TCP connection under the WebSocket without a close handshake.
    /// The channel is not exposed by the WebSocket library, so it is found by reflection.
    static func dropSocket(_ outbound: WebSocketOutboundWriter) -> Bool {
        guard let handler = Mirror(reflecting: outbound).descendant("handler"),
            let channel = Mirror(reflecting: handler).descendant("channel") as? any Channel
        else { return false }
        channel.close(promise: nil)
        return true
    }
}
