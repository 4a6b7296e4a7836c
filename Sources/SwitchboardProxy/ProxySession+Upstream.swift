import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// The upstream: connect, serve, reconnect with backoff, give up.
extension ProxySession {
    /// Connects, serves and reconnects the upstream until the conversation ends.
    nonisolated func runUpstream(first: UpstreamConnector.Outcome?) async {
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
                case .closed(let close) where self.isSender && !configuration.transientCloseCodes.contains(close.code ?? 1005):
                    // The upstream ended the conversation: the client gets its close after the queue.
                    await self.upstreamEnded(close)
                    return
                case .violation(let close) where self.isSender:
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
                if permanent && self.isSender {
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
                if self.isSender {
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

    nonisolated func serveUpstream(_ connection: UpstreamConnector.WebSocketConnection) async -> LinkEnd {
        let closeTimeout = self.core.configuration.closeTimeout
        let result = try? await connection.channel.executeThenClose { inbound, outbound -> LinkEnd in
            let link = PeerLink(channel: connection.channel.channel, outbound: outbound, masks: true, closeTimeout: closeTimeout)
            return await self.serveUpstream(link, inbound: inbound, response: connection.response)
        }
        return result ?? .dropped
    }

    nonisolated func serveUpstream(
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
    func upstreamOpened(_ link: PeerLink, response: HTTPResponseHead, gated: Bool) async -> Bool {
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

    func resumeIDArrived(_ message: ProxyMessage, on link: PeerLink) async {
        self.resumeID = String(buffer: message.data)
        if self.upstream?.id == link.id { await self.toUpstream.attach(link) }
    }

    func upstreamClosed(_ link: PeerLink) async {
        await self.toUpstream.detach(link)
        if self.upstream?.id == link.id {
            self.upstream = nil
            self.core.metrics.upstreamsOpen.decrement()
        }
    }

    func upstreamHeaders() -> HTTPHeaders {
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
    func upstreamEnded(_ close: CloseFrame) async {
        let lost = await self.toUpstream.finish()
        if lost > 0 { self.logger.warning("upstream closed with \(lost) client messages still queued; they are not delivered") }
        await self.toClient.close(after: close)
        await self.upstreamLoopEnded()
    }

    /// Sender mode: the upstream will not come back; the client learns it with 4502.
    func upstreamGone(reason: String) async {
        let lost = await self.toUpstream.finish()
        self.logger.warning("\(reason); closing the client with 4502 (\(lost) of its messages not delivered)")
        self.core.metrics.closed(code: ProxyCloseCode.upstreamUnavailable)
        await self.toClient.close(after: CloseFrame(code: ProxyCloseCode.upstreamUnavailable, reason: reason))
        await self.upstreamLoopEnded()
    }

    /// Receiver mode: the upstream is away past the limit. The client is closed with 4502 and
    /// new ones are refused until it is back; what was accepted stays queued for it.
    func receiverUpstreamUnavailable() async {
        guard !self.unavailable else { return }
        self.unavailable = true
        self.logger.warning("upstream unavailable past the limit; refusing clients until it is back")
        if let client = self.client {
            self.core.metrics.closed(code: ProxyCloseCode.upstreamUnavailable)
            await self.toClient.detach(client)
            await client.close(code: ProxyCloseCode.upstreamUnavailable, reason: "upstream unavailable")
        }
    }

    func upstreamLoopEnded() async {
        self.upstreamLoopDone = true
        await self.endIfDone()
    }
}
