import HTTPTypes
import HummingbirdCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// One accepted TCP connection: HTTP/1.1 served by Hummingbird's HTTP handling, or a
/// WebSocket upgrade handed to a `ConnectionHandler`. Only HTTP connections keep a
/// task; an upgraded connection's task ends as soon as the upgrade completes.
struct GatewayChildChannel: ServerChildChannel, HTTPChannelHandler {
    struct Value: ServerChildChannelValue {
        let outcome: EventLoopFuture<UpgradeOutcome>
        let channel: any Channel
    }

    let core: GatewayCore
    let responder: HTTPChannelHandler.Responder

    init(core: GatewayCore) {
        self.core = core
        self.responder = { request, responseWriter, channel in
            let source = SwitchboardContextSource(
                logger: core.logger, transport: .http(channel), identity: nil, meta: nil, gateway: core
            )
            let response = await core.responder.respond(request, source)
            try await responseWriter.write(response: response.head, body: response.body)
        }
    }

    /// The node holds `maxConnections` already: this one is closed as it arrives.
    struct OverCapacity: Error {}

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        guard self.core.connectionLimit.accepted() else {
            self.core.metrics.overCapacity.increment()
            // Closed here: a failed initializer alone leaves the accepted socket open.
            channel.close(promise: nil)
            return channel.eventLoop.makeFailedFuture(OverCapacity())
        }
        let setup = channel.eventLoop.makeCompletedFuture { try self.configure(channel, logger: logger) }
        setup.whenFailure { _ in
            self.core.connectionLimit.ended()
            channel.close(promise: nil)
        }
        return setup
    }

    private func configure(_ channel: any Channel, logger: Logger) throws -> Value {
        do {
            // The channel's outbound buffer is the connection's queue: past the high
            // mark the consumer is too slow and is closed (it can resume).
            let limit = self.core.configuration.maxQueueBytes
            try channel.syncOptions?.setOption(ChannelOptions.writeBufferWaterMark, value: .init(low: limit / 2, high: limit))
            // An idle connection reads pongs and small frames: it keeps one small receive
            // buffer, and larger reads use transient buffers (see CompactRecvAllocator).
            try channel.syncOptions?.setOption(ChannelOptions.maxMessagesPerRead, value: 1)
            try channel.syncOptions?.setOption(
                ChannelOptions.recvAllocator, value: CompactRecvAllocator(maximum: max(65536, self.core.configuration.maxMessageSize + 14))
            )
            let refusal = NIOLockedValueBox<(HTTPResponse.Status, String)?>(nil)
            let upgrader = SwitchboardWebSocketUpgrader(core: self.core, refusal: refusal, accepted: NIOLockedValueBox(nil))
            let configuration = NIOTypedHTTPServerUpgradeConfiguration<UpgradeOutcome>(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                        try channel.pipeline.syncOperations.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
                        let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        if let (status, reason) = refusal.withLockedValue({ $0 }) {
                            return .refused(asyncChannel, status, reason)
                        }
                        return .http(asyncChannel)
                    }
                }
            )
            var pipeline = NIOUpgradableHTTPServerPipelineConfiguration<UpgradeOutcome>(upgradeConfiguration: configuration)
            pipeline.enablePipelining = false
            pipeline.enableErrorHandling = false
            pipeline.enableResponseHeaderValidation = false
            let outcome = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: pipeline)
            // Between the decoder and the upgrade handler: it sees whole request heads.
            let upgradeHandler = try channel.pipeline.syncOperations.context(handlerType: NIOTypedHTTPServerUpgradeHandler<UpgradeOutcome>.self)
            try channel.pipeline.syncOperations.addHandler(
                HTTPConnectionGuard(core: self.core), name: HTTPConnectionGuard.name, position: .before(upgradeHandler.handler)
            )
            return Value(outcome: outcome, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.outcome.get() {
            case .webSocket:
                // Counted out by the connection handler when it is torn down.
                return
            case .http(let asyncChannel):
                await self.handleHTTP(asyncChannel: asyncChannel, logger: logger)
            case .refused(let asyncChannel, let status, let reason):
                self.core.metrics.upgradeRefused(status: Int(status.code))
                await Self.writeRefusal(asyncChannel, status: status, reason: reason, logger: logger)
            }
        } catch {
            logger.debug("connection setup failed", metadata: ["error": "\(error)"])
            try? await value.channel.close()
        }
        self.core.connectionLimit.ended()
    }

    /// A refused upgrade gets a real HTTP status and a JSON reason, then the socket closes.
    private static func writeRefusal(
        _ asyncChannel: NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, status: HTTPResponse.Status, reason: String, logger: Logger
    ) async {
        do {
            try await asyncChannel.executeThenClose { _, outbound in
                let body = JSONBody.error(status == .unauthorized ? "unauthorized" : "upgrade_refused", reason: reason)
                var headers: HTTPFields = [.connection: "close", .contentType: "application/json", .contentLength: String(body.readableBytes)]
                if status == .unauthorized { headers[.wwwAuthenticate] = "Bearer" }
                if status == .tooManyRequests || status == .serviceUnavailable { headers[.retryAfter] = "1" }
                try await outbound.write(contentsOf: [.head(HTTPResponse(status: status, headerFields: headers)), .body(body), .end(nil)])
            }
        } catch {
            logger.trace("failed to write upgrade refusal: \(error)")
        }
    }
}
