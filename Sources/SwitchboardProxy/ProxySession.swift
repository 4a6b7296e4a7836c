import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// A frame with reserved bits or a reserved opcode, or a close frame no endpoint may send.
struct InvalidFrame: Error {}

/// How reading a connection ended.
enum LinkEnd: Sendable {
    /// The peer sent a close frame (answered already).
    case closed(CloseFrame)
    /// The connection ended without a close frame, or broke the protocol.
    case dropped
    /// The proxy closed it (queue full, taken over, shutting down).
    case closedByProxy
    /// The peer broke the protocol or sent a message over the size limit; the proxy closed
    /// it with this code (1002 or 1009).
    case violation(CloseFrame)
}

/// One conversation: a client slot, an upstream that is reconnected to while the
/// conversation lasts, and a relay for each direction. In sender mode there is one per
/// client session; in receiver mode one for the whole proxy.
actor ProxySession {
    enum Side: Sendable { case client, upstream }

    nonisolated let id: String
    private nonisolated let core: ProxyCore
    nonisolated let toUpstream: Relay
    nonisolated let toClient: Relay
    /// Client request headers forwarded on every upstream handshake.
    private nonisolated let forwardedHeaders: HTTPHeaders
    /// The subprotocol the client was answered with (the upstream's choice when it was there).
    nonisolated let subprotocol: String?

    private var client: PeerLink?
    private var upstream: PeerLink?
    private var resumeID: String?
    private var grace: Task<Void, Never>?
    private var upstreamLoopDone = false
    private var ended = false
    /// Receiver mode: the upstream has been away past the limit; upgrades get 503.
    private(set) var unavailable = false
    /// The upstream loop waits here for a client after a full client queue closed the upstream.
    private var clientWaiters: [CheckedContinuation<Void, Never>] = []

    init(id: String, core: ProxyCore, forwardedHeaders: HTTPHeaders, subprotocol: String? = nil) {
        self.id = id
        self.core = core
        self.forwardedHeaders = forwardedHeaders
        self.subprotocol = subprotocol
        let configuration = core.configuration
        let pingTimeout = Duration.seconds(2 * configuration.pingInterval)
        self.toUpstream = Relay(
            messages: configuration.maxQueueMessages, bytes: configuration.maxQueueBytes, pingTimeout: pingTimeout, metrics: core.metrics.toUpstream
        )
        self.toClient = Relay(
            messages: configuration.maxQueueMessages, bytes: configuration.maxQueueBytes, pingTimeout: pingTimeout, metrics: core.metrics.toClient
        )
    }

    private nonisolated var logger: Logger {
        var logger = self.core.logger
        logger[metadataKey: "proxy.session"] = "\(self.id)"
        return logger
    }

    private var isSender: Bool { self.core.configuration.mode == .sender }

    /// Starts the pumps and the upstream loop; `first` is the connection the upgrade opened.
    func start(first: UpstreamConnector.Outcome?) async {
        self.core.metrics.sessionsOpen.increment()
        // Both peers of a new sender session are on their way: the upstream connected during
        // the handshake, the client is being answered.
        if case .connected = first { await self.toUpstream.expect(true) }
        if self.isSender { await self.toClient.expect(true) }
        Task { await self.toUpstream.pump() }
        Task { await self.toClient.pump() }
        Task { await self.runUpstream(first: first) }
        // Until its client arrives (its handshake is still being answered), a sender session
        // lives for the grace period, and at least long enough for the handshake.
        if self.isSender { self.startGrace(seconds: max(self.core.configuration.grace, 10)) }
    }

    /// Whether an upstream connection is open (health, tests).
    var upstreamConnected: Bool { self.upstream != nil }

    /// Whether a client may take this session over (it is not ending).
    var isResumable: Bool {
        get async {
            if self.ended { return false }
            return await !self.toClient.isFinished
        }
    }

    // MARK: - Client

    /// Serves one client connection of this session until it ends.
    nonisolated func serve(client channel: NIOAsyncChannel<WebSocketFrame, WebSocketFrame>) async {
        let closeTimeout = self.core.configuration.closeTimeout
        try? await channel.executeThenClose { inbound, outbound in
            let link = PeerLink(channel: channel.channel, outbound: outbound, masks: false, closeTimeout: closeTimeout)
            await self.attachClient(link)
            let keepalive = self.keepalive(link, relay: self.toClient)
            let end = await self.read(inbound, from: link, side: .client)
            keepalive.cancel()
            await self.clientEnded(link, end)
        }
    }

    private func attachClient(_ link: PeerLink) async {
        guard !self.ended else {
            await link.close(code: ProxyCloseCode.goingAway, reason: "session ended; connect without the session id")
            return
        }
        self.grace?.cancel()
        self.grace = nil
        // The slot changes before any await, so a concurrent takeover sees this client.
        let previous = self.client
        self.client = link
        if let previous {
            self.logger.info("session taken over by a newer client connection")
            self.core.metrics.closed(code: ProxyCloseCode.sessionTakenOver)
            await self.toClient.detach(previous)
            await previous.close(code: ProxyCloseCode.sessionTakenOver, reason: "session taken over by a newer connection")
        } else {
            self.core.metrics.clientsOpen.increment()
        }
        if self.core.configuration.announceSession {
            let hello = #"{"proxySession":"\#(self.id)"}"#
            try? await link.write([link.frame(.text, ByteBuffer(string: hello))])
        }
        guard self.client?.id == link.id else { return }  // taken over meanwhile
        if await self.toClient.isFinished {
            // The session ended while this client was being attached.
            await link.close(code: ProxyCloseCode.goingAway, reason: "session ended; connect without the session id")
            return
        }
        await self.toClient.attach(link)
        self.wakeClientWaiters()
    }

    private func clientEnded(_ link: PeerLink, _ end: LinkEnd) async {
        guard self.client?.id == link.id else { return }  // taken over
        self.client = nil
        self.core.metrics.clientsOpen.decrement()
        await self.toClient.detach(link)
        guard self.isSender, !self.ended else { return }  // receiver: the queue waits for the next client
        if case .closed(let close) = end, !self.isTransient(close.code) {
            // The client ended the conversation: the upstream gets its close after the queue.
            self.logger.debug("client closed the session", metadata: ["code": "\(close.code.map(String.init) ?? "none")"])
            let lost = await self.toClient.finish()
            if lost > 0 { self.logger.info("client closed with \(lost) messages for it still queued; they are not delivered") }
            await self.toUpstream.close(after: close)
            self.wakeClientWaiters()
            await self.endIfDone()
        } else if await self.toClient.isFinished {
            await self.endIfDone()
        } else {
            self.startGrace()
        }
    }

    private func startGrace(seconds: Double? = nil) {
        self.grace?.cancel()
        let seconds = seconds ?? self.core.configuration.grace
        self.grace = Task {
            try? await Task.sleep(for: .seconds(seconds))
            guard !Task.isCancelled else { return }
            await self.graceExpired()
        }
    }

    private func graceExpired() async {
        guard self.client == nil, !self.ended else { return }
        let lost = await self.toClient.finish()
        if lost > 0 {
            self.logger.warning("client did not come back within the grace period: \(lost) messages for it are not delivered")
        } else {
            self.logger.debug("client did not come back within the grace period")
        }
        // The messages the client queued still go to the upstream, then the close.
        await self.toUpstream.close(after: CloseFrame(code: ProxyCloseCode.goingAway, reason: "client gone"))
        self.wakeClientWaiters()
        await self.endIfDone()
    }

    private func wakeClientWaiters() {
        for waiter in self.clientWaiters { waiter.resume() }
        self.clientWaiters.removeAll()
    }

    private func waitForClient() async {
        let finished = await self.toUpstream.isFinished
        // No await between this check and the wait: an attach cannot slip in between.
        guard self.client == nil, !self.ended, !finished else { return }
        await withCheckedContinuation { self.clientWaiters.append($0) }
    }

    // MARK: - Upstream

    /// Connects, serves and reconnects the upstream until the conversation ends.
    private nonisolated func runUpstream(first: UpstreamConnector.Outcome?) async {
        let configuration = self.core.configuration
        var next = first
        var awaySince: ContinuousClock.Instant?
        var attempt = 0
        loop: while !(await self.toUpstream.isFinished) {
            let outcome: UpstreamConnector.Outcome
            if let pending = next {
                outcome = pending
                next = nil
            } else {
                outcome = await self.core.connector.connect(headers: await self.upstreamHeaders())
            }
            switch outcome {
            case .connected(let connection):
                self.core.metrics.upstreamConnected.increment()
                self.logger.debug("upstream connected")
                let connectedAt = ContinuousClock.now
                await self.toUpstream.expect(true)
                let end = await self.serveUpstream(connection)
                await self.toUpstream.expect(false)
                self.logger.debug("upstream connection ended: \(end)")
                // Only a connection that lasted resets the backoff and the away clock: an
                // upstream that accepts and drops at once is still away.
                if ContinuousClock.now - connectedAt >= .seconds(1) {
                    awaySince = nil
                    attempt = 0
                }
                if await self.toUpstream.isFinished { break loop }
                switch end {
                case .closed(let close) where self.isSenderMode && !configuration.transientCloseCodes.contains(close.code ?? 1005):
                    // The upstream ended the conversation: the client gets its close after the queue.
                    await self.upstreamEnded(close)
                    return
                case .violation(let close) where self.isSenderMode:
                    // Sending the same stream again would fail the same way.
                    await self.upstreamEnded(close)
                    return
                case .closedByProxy:
                    // The client's queue was full: reconnect once a client drains it.
                    await self.waitForClient()
                    attempt += 1
                default:
                    break
                }
            case .refused(let status):
                self.core.metrics.upstreamRefused.increment()
                self.logger.warning("upstream refused the handshake: HTTP \(status.code)")
                let permanent = (400..<500).contains(status.code) && status != .requestTimeout && status != .tooManyRequests
                if permanent && self.isSenderMode {
                    await self.upstreamGone(reason: "upstream refused the reconnect: HTTP \(status.code)")
                    return
                }
            case .failed(let error):
                self.core.metrics.upstreamFailed.increment()
                self.logger.debug("upstream connect failed: \(error)")
            }
            if await self.toUpstream.isFinished { break loop }
            let now = ContinuousClock.now
            let since = awaySince ?? now
            awaySince = since
            if now - since > .seconds(configuration.upstreamTimeout) {
                if self.isSenderMode {
                    await self.upstreamGone(reason: "upstream unavailable for \(Int(configuration.upstreamTimeout)) s")
                    return
                }
                await self.receiverUpstreamUnavailable()
            }
            try? await Task.sleep(for: Backoff.delay(attempt: attempt, initial: configuration.backoffInitial, max: configuration.backoffMax))
            attempt += 1
        }
        await self.upstreamLoopEnded()
    }

    private nonisolated var isSenderMode: Bool { self.core.configuration.mode == .sender }

    private nonisolated func serveUpstream(_ connection: UpstreamConnector.WebSocketConnection) async -> LinkEnd {
        let closeTimeout = self.core.configuration.closeTimeout
        let result = try? await connection.channel.executeThenClose { inbound, outbound -> LinkEnd in
            let link = PeerLink(channel: connection.channel.channel, outbound: outbound, masks: true, closeTimeout: closeTimeout)
            return await self.serveUpstream(link, inbound: inbound, response: connection.response)
        }
        return result ?? .dropped
    }

    private nonisolated func serveUpstream(
        _ link: PeerLink, inbound: NIOAsyncChannelInboundStream<WebSocketFrame>, response: HTTPResponseHead
    ) async -> LinkEnd {
        let gated = self.core.configuration.resumeSource == .firstMessage
        guard await self.upstreamOpened(link, response: response, gated: gated) else {
            // The conversation ended while this connection was being made.
            await link.close(code: ProxyCloseCode.goingAway, reason: "client gone")
            return .closedByProxy
        }
        let keepalive = self.keepalive(link, relay: self.toUpstream)
        defer { keepalive.cancel() }
        guard gated else {
            let end = await self.read(inbound, from: link, side: .upstream)
            await self.upstreamClosed(link)
            return end
        }
        // An upstream that never sends its resume id would hold the client's messages forever.
        let timeout = self.core.configuration.connectTimeout
        let logger = self.logger
        let gate = Task {
            try? await Task.sleep(for: .seconds(timeout))
            guard !Task.isCancelled else { return }
            logger.warning("upstream sent no resume id within \(timeout) s; dropping the connection")
            link.abort()
        }
        let end = await self.read(inbound, from: link, side: .upstream) { message in
            gate.cancel()
            await self.resumeIDArrived(message, on: link)
        }
        gate.cancel()
        await self.upstreamClosed(link)
        return end
    }

    /// Records the open connection; false when the conversation is already over.
    private func upstreamOpened(_ link: PeerLink, response: HTTPResponseHead, gated: Bool) async -> Bool {
        guard !self.ended, await !self.toUpstream.isFinished else { return false }
        self.upstream = link
        self.core.metrics.upstreamsOpen.increment()
        if self.unavailable {
            self.unavailable = false
            self.logger.info("upstream is back")
        }
        if self.core.configuration.resumeSource == .responseHeader,
            let value = response.headers[self.core.configuration.resumeHeader].first
        {
            self.resumeID = value
        }
        // With a first-message resume id, client messages wait until it arrived.
        if !gated { await self.toUpstream.attach(link) }
        return true
    }

    private func resumeIDArrived(_ message: ProxyMessage, on link: PeerLink) async {
        self.resumeID = String(buffer: message.data)
        if self.upstream?.id == link.id { await self.toUpstream.attach(link) }
    }

    private func upstreamClosed(_ link: PeerLink) async {
        await self.toUpstream.detach(link)
        if self.upstream?.id == link.id {
            self.upstream = nil
            self.core.metrics.upstreamsOpen.decrement()
        }
    }

    private func upstreamHeaders() -> HTTPHeaders {
        Self.handshakeHeaders(forwarded: self.forwardedHeaders, resumeID: self.resumeID, configuration: self.core.configuration)
    }

    /// The headers of an upstream handshake: the client's forwarded ones, the configured
    /// ones, and the resume id on a reconnect.
    static func handshakeHeaders(forwarded: HTTPHeaders, resumeID: String?, configuration: ProxyConfiguration) -> HTTPHeaders {
        var headers = forwarded
        for (name, value) in configuration.upstreamHeaders { headers.replaceOrAdd(name: name, value: value) }
        if let resumeID { headers.replaceOrAdd(name: configuration.resumeHeader, value: resumeID) }
        return headers
    }

    /// Sender mode: the upstream closed with a final code.
    private func upstreamEnded(_ close: CloseFrame) async {
        let lost = await self.toUpstream.finish()
        if lost > 0 { self.logger.warning("upstream closed with \(lost) client messages still queued; they are not delivered") }
        await self.toClient.close(after: close)
        await self.upstreamLoopEnded()
    }

    /// Sender mode: the upstream will not come back; the client learns it with 4502.
    private func upstreamGone(reason: String) async {
        let lost = await self.toUpstream.finish()
        self.logger.warning("\(reason); closing the client with 4502 (\(lost) of its messages not delivered)")
        self.core.metrics.closed(code: ProxyCloseCode.upstreamUnavailable)
        await self.toClient.close(after: CloseFrame(code: ProxyCloseCode.upstreamUnavailable, reason: reason))
        await self.upstreamLoopEnded()
    }

    /// Receiver mode: the upstream is away past the limit. The client is closed with 4502 and
    /// new ones are refused until it is back; what was accepted stays queued for it.
    private func receiverUpstreamUnavailable() async {
        guard !self.unavailable else { return }
        self.unavailable = true
        self.logger.warning("upstream unavailable past the limit; refusing clients until it is back")
        if let client = self.client {
            self.core.metrics.closed(code: ProxyCloseCode.upstreamUnavailable)
            await self.toClient.detach(client)
            await client.close(code: ProxyCloseCode.upstreamUnavailable, reason: "upstream unavailable")
        }
    }

    private func upstreamLoopEnded() async {
        self.upstreamLoopDone = true
        await self.endIfDone()
    }

    // MARK: - Both sides

    /// Reads `link` until it ends: messages go to the other side's relay, pongs confirm this
    /// side's relay, pings are passed through (or answered while the other side is away).
    private nonisolated func read(
        _ inbound: NIOAsyncChannelInboundStream<WebSocketFrame>, from link: PeerLink, side: Side,
        firstMessage: (@Sendable (ProxyMessage) async -> Void)? = nil
    ) async -> LinkEnd {
        let (own, other) = side == .client ? (self.toClient, self.toUpstream) : (self.toUpstream, self.toClient)
        var firstMessage = firstMessage
        do {
            for try await frame in inbound {
                // No extension is negotiated, so reserved bits and opcodes break the protocol.
                guard !frame.rsv1, !frame.rsv2, !frame.rsv3 else { throw InvalidFrame() }
                switch frame.opcode {
                case .text, .binary:
                    let message = ProxyMessage(opcode: frame.opcode, data: frame.unmaskedData)
                    if link.isClosing { continue }  // closed by the proxy: waiting for the answer
                    if let consume = firstMessage {
                        firstMessage = nil
                        await consume(message)
                        continue
                    }
                    do {
                        link.readerWaiting(true)
                        defer { link.readerWaiting(false) }
                        try await other.push(message)
                    } catch .queueFull {
                        let away = side == .client ? "upstream" : "client"
                        self.logger.warning("queue to the \(away) full while it is away; closing the \(side) with 4508")
                        self.core.metrics.closed(code: ProxyCloseCode.queueFull)
                        // Nothing more goes to a connection the proxy is closing.
                        await own.detach(link)
                        await link.close(code: ProxyCloseCode.queueFull, reason: "proxy queue full: the \(away) is away; message not accepted")
                    } catch .finished {
                        // The other side is gone for good; this side's close is on its way.
                        self.logger.debug("message from the \(side) after the conversation ended; not delivered")
                    }
                case .ping:
                    await self.passPing(frame.unmaskedData, from: side, link: link)
                case .pong:
                    let payload = frame.unmaskedData
                    if await !own.pong(payload, from: link) {
                        await self.passPong(payload, from: side)
                    }
                case .connectionClose:
                    if link.isClosing {
                        await own.closeAnswered(by: link)
                        return .closedByProxy
                    }
                    guard let close = CloseFrame(validating: frame) else {
                        // A code no endpoint may send, or a bad payload: answering or passing it on
                        // would break the protocol on the other connection too.
                        throw InvalidFrame()
                    }
                    await link.close(code: close.code, reason: close.reason)
                    return .closed(close)
                default:
                    throw InvalidFrame()
                }
            }
        } catch {
            if let end = await self.refused(error, on: link, side: side) { return end }
            self.logger.debug("\(side) connection failed: \(error)")
        }
        if link.isClosing {
            await own.closeUnanswered(by: link)
            return .closedByProxy
        }
        return .dropped
    }

    /// A frame the decoder or the aggregator refused: no more frames can be read, so close
    /// with the matching code and wait for the peer to close (or the close timeout). nil for
    /// any other error.
    private nonisolated func refused(_ error: any Error, on link: PeerLink, side: Side) async -> LinkEnd? {
        let tooBig: Bool
        switch error {
        case NIOWebSocketError.invalidFrameLength, NIOWebSocketFrameAggregator.Error.accumulatedFrameSizeIsTooLarge: tooBig = true
        case is NIOWebSocketError, is NIOWebSocketFrameAggregator.Error, is InvalidFrame: tooBig = false
        default: return nil
        }
        let code = tooBig ? ProxyCloseCode.messageTooBig : ProxyCloseCode.protocolError
        let what = tooBig ? "a message over the proxy's size limit" : "an invalid frame"
        self.logger.info("\(side) sent \(what) (\(error)); closing it with \(code)")
        self.core.metrics.closed(code: code)
        await (side == .client ? self.toClient : self.toUpstream).detach(link)
        await link.fail(code: code, reason: tooBig ? "message over the size limit" : "invalid frame")
        return .violation(CloseFrame(code: code, reason: "\(side) sent \(what)"))
    }

    private func passPing(_ payload: ByteBuffer, from side: Side, link: PeerLink) async {
        if let other = side == .client ? self.upstream : self.client {
            await other.control(.ping, payload)
        } else {
            await link.control(.pong, payload)
        }
    }

    private func passPong(_ payload: ByteBuffer, from side: Side) async {
        await (side == .client ? self.upstream : self.client)?.control(.pong, payload)
    }

    /// Pings `link` every interval through `relay`, and drops it when a ping stays unanswered.
    private nonisolated func keepalive(_ link: PeerLink, relay: Relay) -> Task<Void, Never> {
        let interval = self.core.configuration.pingInterval
        let logger = self.core.logger
        return Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(interval))
                if Task.isCancelled { return }
                if link.isReaderWaiting {
                    // Blocked on the other direction, the reader could not read pongs.
                    await relay.excuse(link)
                    continue
                }
                if await relay.keepalive(link) == .dead {
                    logger.info("peer did not answer pings; dropping the connection")
                    link.abort()
                    return
                }
            }
        }
    }

    private nonisolated func isTransient(_ code: UInt16?) -> Bool {
        self.core.configuration.transientCloseCodes.contains(code ?? 1005)
    }

    // MARK: - End

    private func endIfDone() async {
        guard !self.ended else { return }
        // A sender session ends once its upstream loop stopped and its client got everything
        // (or is gone past the grace period). A receiver session ends only at shutdown.
        guard self.isSender, self.upstreamLoopDone, await self.toClient.isFinished else { return }
        await self.end()
    }

    private func end() async {
        guard !self.ended else { return }
        self.ended = true
        self.grace?.cancel()
        if let client = self.client {
            await client.close(code: ProxyCloseCode.goingAway, reason: "session ended")
        }
        await self.toUpstream.finish()
        await self.toClient.finish()
        self.wakeClientWaiters()
        self.core.remove(self)
        self.core.metrics.sessionsOpen.decrement()
    }

    /// Proxy shutdown: both sides get 1001, nothing more is delivered.
    func shutdown() async {
        let lost = await self.toUpstream.finish() + self.toClient.finish()
        if lost > 0 { self.logger.warning("shutting down with \(lost) messages still queued; they are not delivered") }
        await self.client?.close(code: ProxyCloseCode.goingAway, reason: "proxy shutting down")
        await self.upstream?.close(code: ProxyCloseCode.goingAway, reason: "proxy shutting down")
        await self.end()
    }
}
