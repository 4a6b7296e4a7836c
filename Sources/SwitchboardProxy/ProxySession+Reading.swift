import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// Reading either side's connection: messages, pings, pongs, closes, bad frames.
extension ProxySession {
    /// Reads `link` until it ends: messages go to the other side's relay, pongs confirm this
    /// side's relay, pings are passed through (or answered while the other side is away).
    nonisolated func read(
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
    nonisolated func refused(_ error: any Error, on link: PeerLink, side: Side) async -> LinkEnd? {
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

    func passPing(_ payload: ByteBuffer, from side: Side, link: PeerLink) async {
        if let other = side == .client ? self.upstream : self.client {
            await other.control(.ping, payload)
        } else {
            await link.control(.pong, payload)
        }
    }

    func passPong(_ payload: ByteBuffer, from side: Side) async {
        await (side == .client ? self.upstream : self.client)?.control(.pong, payload)
    }

    /// Pings `link` every interval through `relay`, and drops it when a ping stays unanswered.
    nonisolated func keepalive(_ link: PeerLink, relay: Relay) -> Task<Void, Never> {
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

    nonisolated func isTransient(_ code: UInt16?) -> Bool {
        self.core.configuration.transientCloseCodes.contains(code ?? 1005)
    }
}
