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
    nonisolated let core: ProxyCore
    nonisolated let toUpstream: Relay
    nonisolated let toClient: Relay
    /// Client request headers forwarded on every upstream handshake.
    nonisolated let forwardedHeaders: HTTPHeaders
    /// The subprotocol the client was answered with (the upstream's choice when it was there).
    nonisolated let subprotocol: String?

    var client: PeerLink?
    var upstream: PeerLink?
    var resumeID: String?
    var grace: Task<Void, Never>?
    var upstreamLoopDone = false
    var ended = false
    /// Receiver mode: the upstream has been away past the limit; upgrades get 503.
    var unavailable = false
    /// The upstream loop waits here for a client after a full client queue closed the upstream.
    var clientWaiters: [CheckedContinuation<Void, Never>] = []

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

    nonisolated var logger: Logger {
        var logger = self.core.logger
        logger[metadataKey: "proxy.session"] = "\(self.id)"
        return logger
    }

    nonisolated var isSender: Bool { self.core.configuration.mode == .sender }

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

    // MARK: - End

    func endIfDone() async {
        guard !self.ended else { return }
        // A sender session ends once its upstream loop stopped and its client got everything
        // (or is gone past the grace period). A receiver session ends only at shutdown.
        guard self.isSender, self.upstreamLoopDone, await self.toClient.isFinished else { return }
        await self.end()
    }

    func end() async {
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
