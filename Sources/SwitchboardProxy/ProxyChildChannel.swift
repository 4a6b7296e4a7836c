import HTTPTypes
import HummingbirdCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket

/// One accepted TCP connection of the proxy: a WebSocket upgrade that joins a session, or a
/// plain HTTP request (health, metrics) served by the router.
struct ProxyChildChannel: ServerChildChannel, HTTPChannelHandler {
    enum Outcome: Sendable {
        case webSocket(NIOAsyncChannel<WebSocketFrame, WebSocketFrame>, ProxySession)
        case http(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        case refused(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, ProxyCore.Refusal)
    }

    struct Value: ServerChildChannelValue {
        let outcome: EventLoopFuture<Outcome>
        let channel: any Channel
    }

    let core: ProxyCore
    let responder: HTTPChannelHandler.Responder

    /// The proxy holds `maxConnections` already: this one is closed as it arrives.
    struct OverCapacity: Error {}

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let core = self.core
        guard core.connectionLimit.accepted() else {
            core.metrics.overCapacity.increment()
            // Closed here: a failed initializer alone leaves the accepted socket open.
            channel.close(promise: nil)
            return channel.eventLoop.makeFailedFuture(OverCapacity())
        }
        channel.closeFuture.whenComplete { _ in core.connectionLimit.ended() }
        return channel.eventLoop.makeCompletedFuture {
            let refusal = NIOLockedValueBox<ProxyCore.Refusal?>(nil)
            let admitted = NIOLockedValueBox<ProxySession?>(nil)
            let upgrader = NIOTypedWebSocketServerUpgrader<Outcome>(
                maxFrameSize: core.configuration.maxMessageSize,
                // Protocol errors reach the session's reader, which closes with the right code.
                enableAutomaticErrorHandling: false,
                shouldUpgrade: { channel, head in
                    let promise = channel.eventLoop.makePromise(of: HTTPHeaders?.self)
                    let remote = channel.remoteAddress
                    promise.completeWithTask {
                        do {
                            let (session, headers) = try await core.admit(head, remote: remote)
                            admitted.withLockedValue { $0 = session }
                            return headers
                        } catch {
                            let refused = error as? ProxyCore.Refusal ?? .init(status: .internalServerError, reason: "\(error)")
                            refusal.withLockedValue { $0 = refused }
                            return nil
                        }
                    }
                    return promise.futureResult
                },
                upgradePipelineHandler: { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        guard let session = admitted.withLockedValue({ $0 }) else { throw ChannelError.inappropriateOperationForState }
                        try channel.pipeline.syncOperations.addHandler(UpstreamConnector.aggregator(core.configuration.maxMessageSize))
                        return .webSocket(try NIOAsyncChannel(wrappingChannelSynchronously: channel), session)
                    }
                }
            )
            let configuration = NIOTypedHTTPServerUpgradeConfiguration<Outcome>(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                        try channel.pipeline.syncOperations.addHandler(
                            HTTPConnectionStateHandler(idleTimeout: .milliseconds(Int64(core.configuration.idleTimeout * 1000)), logger: logger)
                        )
                        let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        if let refused = refusal.withLockedValue({ $0 }) { return .refused(asyncChannel, refused) }
                        return .http(asyncChannel)
                    }
                }
            )
            var pipeline = NIOUpgradableHTTPServerPipelineConfiguration<Outcome>(upgradeConfiguration: configuration)
            pipeline.enablePipelining = false
            pipeline.enableErrorHandling = false
            let outcome = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: pipeline)
            // A connection that never gets as far as a request (silent, or a request head sent a
            // byte at a time) is closed: it would hold a descriptor and a slot forever. An upgrade
            // may also spend the connect timeout reaching the upstream before it is answered.
            let limit = core.configuration.handshakeTimeout + core.configuration.connectTimeout
            let handshake = channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(limit * 1e9))) {
                core.metrics.handshakeTimeouts.increment()
                channel.close(promise: nil)
            }
            outcome.whenComplete { _ in handshake.cancel() }
            return Value(outcome: outcome, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.outcome.get() {
            case .webSocket(let channel, let session):
                await session.serve(client: channel)
            case .http(let asyncChannel):
                await self.handleHTTP(asyncChannel: asyncChannel, logger: logger)
            case .refused(let asyncChannel, let refusal):
                self.core.metrics.upgradesRefused.increment()
                self.core.logger.info("upgrade refused: \(refusal.status.code) \(refusal.reason)")
                try await asyncChannel.executeThenClose { _, outbound in
                    let body = ByteBuffer(string: #"{"error":"upgrade_refused","reason":\#(Self.jsonString(refusal.reason))}"#)
                    var headers: HTTPFields = [.connection: "close", .contentType: "application/json", .contentLength: String(body.readableBytes)]
                    if refusal.status == .serviceUnavailable { headers[.retryAfter] = "1" }
                    try await outbound.write(contentsOf: [.head(HTTPResponse(status: refusal.status, headerFields: headers)), .body(body), .end(nil)])
                }
            }
        } catch {
            logger.debug("connection setup failed", metadata: ["error": "\(error)"])
            try? await value.channel.close()
        }
    }

    /// `text` as a JSON string literal.
    static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
