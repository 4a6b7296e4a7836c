import Foundation
import NIOCore
import NIOWebSocket
import SwitchboardWire

/// What a connection writes: frames queued for the loop's flush pass, backpressure (writability
/// and its waiters) and the closing handshake.
extension ConnectionHandler {
    /// Queue an already framed WebSocket message; the loop's flush pass sends it.
    func writeRaw(_ bytes: ByteBuffer) {
        guard let context = self.context, case .open = self.state else { return }
        context.write(self.wrapOutboundOut(bytes), promise: nil)
        if !self.needsFlush {
            self.needsFlush = true
            self.loopHub.markDirty(self)
        }
    }

    func writeFrame(method: SwitchboardWire.Method, status: Int?, target: String, meta: Meta, body: ByteBuffer = ByteBuffer()) {
        guard let context = self.context else { return }
        self.core.metrics.repliesOut.increment()
        self.writeRaw(
            WebSocketFraming.text(method: method, status: status, target: target, meta: meta, body: body, allocator: context.channel.allocator))
    }

    func replyError(status: Int, method: SwitchboardWire.Method, target: String, requestID: String?, error: String, reason: String) {
        var meta = Meta()
        if let requestID { meta[MetaKey.requestID] = requestID }
        self.writeFrame(method: method, status: status, target: target, meta: meta, body: JSONBody.error(error, reason: reason))
    }

    func flushIfNeeded() {
        guard self.needsFlush else { return }
        self.needsFlush = false
        self.context?.flush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.isWritable = context.channel.isWritable
        if self.isWritable, let waiters = self.writabilityWaiters {
            self.writabilityWaiters = nil
            for w in waiters { w.succeed() }
        }
        context.fireChannelWritabilityChanged()
    }

    /// Completes when the socket can take more (or at once if it can).
    func waitUntilWritable() -> EventLoopFuture<Void> {
        guard let context = self.context, case .open = self.state else {
            return self.loopHub.loop.makeFailedFuture(ChannelError.ioOnClosedChannel)
        }
        if context.channel.isWritable { return context.eventLoop.makeSucceededVoidFuture() }
        let promise = context.eventLoop.makePromise(of: Void.self)
        self.writabilityWaiters = (self.writabilityWaiters ?? []) + [promise]
        return promise.futureResult
    }

    func failWritabilityWaiters() {
        if let waiters = self.writabilityWaiters {
            self.writabilityWaiters = nil
            for w in waiters { w.fail(ChannelError.ioOnClosedChannel) }
        }
    }

    /// Start the closing handshake with `code`; the socket closes when the peer
    /// answers or after the close timeout.
    func close(code: CloseCode, reason: String) {
        guard let channel = self.context?.channel, self.sendClose(code: code, reason: reason) != nil else { return }
        channel.eventLoop.scheduleTask(in: .seconds(clamping: self.configuration.closeTimeout)) {
            channel.close(promise: nil)
        }
    }

    /// Fail the connection: send a close frame with `code`, then close the socket without
    /// waiting for the peer's answer (its byte stream cannot be trusted, or it already closed).
    func fail(code: CloseCode, reason: String) {
        guard let context = self.context else { return }
        let channel = context.channel
        guard let sent = self.sendClose(code: code, reason: reason) else { return context.close(promise: nil) }
        sent.whenComplete { _ in channel.close(promise: nil) }
    }

    /// Moves an open connection to `.closing` and writes its close frame; nil if it was not open.
    func sendClose(code: CloseCode, reason: String) -> EventLoopFuture<Void>? {
        guard let context = self.context, case .open = self.state else { return nil }
        self.state = .closing
        self.closeCode = code.rawValue
        if code == .slowConsumer { self.core.metrics.slowConsumerCloses.increment() }
        self.fragments = nil
        self.failWritabilityWaiters()
        return context.writeAndFlush(
            self.wrapOutboundOut(WebSocketFraming.close(code: code.rawValue, reason: reason, allocator: context.channel.allocator))
        )
    }
}
