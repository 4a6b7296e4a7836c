import Logging
import NIOCore
import NIOSSL

/// Outbound message understood by `RESPChannelHandler`.
struct RESPRequest {
    let command: RESPCommand
    let promise: EventLoopPromise<RESPValue>
    /// For (un)subscribe commands in RESP3: the number of push confirmations that complete it.
    let expectedPushes: Int
    /// Lower-case push kind that counts as a confirmation ("subscribe", "unsubscribe", ...).
    let pushKind: String?
}

/// Pipelining handler: FIFO of pending promises, flush coalescing (one flush per event-loop
/// tick), push frames routed to `onPush`.
///
/// Timed-out or cancelled requests keep their FIFO slot: their promise is already completed
/// (failed), so the late reply completes nothing and is discarded.
final class RESPChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = RESPValue
    typealias OutboundIn = RESPRequest
    typealias OutboundOut = ByteBuffer

    private struct Pending {
        let promise: EventLoopPromise<RESPValue>
        var remainingPushes: Int
        let pushKind: String?
        var collected: [RESPValue]
    }

    private var pending = CircularBuffer<Pending>(initialCapacity: 64)
    private var outBuffer: ByteBuffer?
    private var flushScheduled = false
    private var closed = false
    private var failure: RESPError?
    /// Shared with `RESPConnection` so later sends report why the connection closed.
    private let closeReason: LockedBox<RESPError?>
    private let onPush: (@Sendable (RESPValue) -> Void)?
    private let logger: Logger

    init(onPush: (@Sendable (RESPValue) -> Void)?, closeReason: LockedBox<RESPError?>, logger: Logger) {
        self.onPush = onPush
        self.closeReason = closeReason
        self.logger = logger
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        if closed {
            request.promise.fail(failure ?? RESPError.connectionClosed)
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        pending.append(Pending(promise: request.promise, remainingPushes: request.expectedPushes,
                               pushKind: request.pushKind, collected: []))
        if outBuffer == nil { outBuffer = context.channel.allocator.buffer(capacity: 512) }
        request.command.encode(into: &outBuffer!)
        promise?.succeed(())
        if !flushScheduled {
            flushScheduled = true
            context.eventLoop.assumeIsolated().execute { self.flushNow(context: context) }
        }
    }

    func flush(context: ChannelHandlerContext) {
        flushNow(context: context)
    }

    private func flushNow(context: ChannelHandlerContext) {
        flushScheduled = false
        guard !closed, let buffer = outBuffer else { return }
        outBuffer = nil
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let value = unwrapInboundIn(data)
        if case .push(let items) = value {
            if !pending.isEmpty, pending[pending.startIndex].remainingPushes > 0,
               let kind = items.first?.string?.lowercased(), kind == pending[pending.startIndex].pushKind {
                let i = pending.startIndex
                pending[i].remainingPushes -= 1
                pending[i].collected.append(value)
                if pending[i].remainingPushes == 0 {
                    let entry = pending.removeFirst()
                    entry.promise.succeed(.array(entry.collected))
                }
                return
            }
            onPush?(value)
            return
        }
        guard let entry = pending.popFirst() else {
            fail(context: context, error: .protocolError("unexpected reply with no pending command: \(value)"))
            return
        }
        switch value {
        case .simpleError(let b), .blobError(let b):
            entry.promise.fail(RESPError.fromServer(b))
        default:
            entry.promise.succeed(value)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let respError: RESPError
        if let e = error as? RESPError { respError = e } else {
            if let ssl = error as? NIOSSLError, case .uncleanShutdown = ssl {
                logger.debug("RESP TLS unclean shutdown")
            } else {
                logger.warning("RESP connection error: \(error)")
            }
            respError = .connectionClosed
        }
        fail(context: context, error: respError)
    }

    private func fail(context: ChannelHandlerContext, error: RESPError) {
        if failure == nil {
            failure = error
            closeReason.withLock { if $0 == nil { $0 = error } }
        }
        if case .protocolError(let msg) = error { logger.warning("RESP protocol error: \(msg)") }
        failAll(error)
        closed = true
        context.close(promise: nil)
    }

    private func failAll(_ error: RESPError) {
        while let entry = pending.popFirst() { entry.promise.fail(error) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        outBuffer = nil
        failAll(failure ?? .connectionClosed)
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        closed = true
        failAll(failure ?? .connectionClosed)
    }
}
