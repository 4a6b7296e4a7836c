import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// The client slot: attach, takeover, the grace period.
extension ProxySession {
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

    func attachClient(_ link: PeerLink) async {
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

    func clientEnded(_ link: PeerLink, _ end: LinkEnd) async {
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

    func startGrace(seconds: Double? = nil) {
        self.grace?.cancel()
        let seconds = seconds ?? self.core.configuration.grace
        self.grace = Task {
            try? await Task.sleep(for: .seconds(seconds))
            guard !Task.isCancelled else { return }
            await self.graceExpired()
        }
    }

    func graceExpired() async {
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

    func wakeClientWaiters() {
        for waiter in self.clientWaiters { waiter.resume() }
        self.clientWaiters.removeAll()
    }

    func waitForClient() async {
        let finished = await self.toUpstream.isFinished
        // No await between this check and the wait: an attach cannot slip in between.
        guard self.client == nil, !self.ended, !finished else { return }
        await withCheckedContinuation { self.clientWaiters.append($0) }
    }
}
