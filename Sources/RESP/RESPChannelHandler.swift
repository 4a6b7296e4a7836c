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

/// Replies of a pipelined batch, collected in order; one promise for the whole batch instead
/// of one per command. Only touched on the connection's event loop (hence unchecked Sendable).
final class RESPBatch: @unchecked Sendable {
    let promise: EventLoopPromise<[Result<RESPValue, RESPError>]>
    private var results: [Result<RESPValue, RESPError>] = []
    private let expected: Int

    init(expected: Int, promise: EventLoopPromise<[Result<RESPValue, RESPError>]>) {
        self.expected = expected
        self.promise = promise
        self.results.reserveCapacity(expected)
    }

    func complete(_ result: Result<RESPValue, RESPError>) {
        guard self.results.count < self.expected else { return }
        self.results.append(result)
        if self.results.count == self.expected { self.promise.succeed(self.results) }
    }

    /// The rest of the batch fails with `error` (connection lost, timeout).
    func failRemaining(_ error: RESPError) {
        while self.results.count < self.expected { self.complete(.failure(error)) }
    }
}

/// What the connection writes into the pipeline: one command, or a batch in one write.
enum RESPOutbound {
    case single(RESPRequest)
    case batch([RESPCommand], RESPBatch)
}

/// Pipelining handler: FIFO of pending promises, flush coalescing (one flush per event-loop
/// tick), push frames routed to `onPush`.
///
/// Timed-out or cancelled requests keep their FIFO slot: their promise is already completed
/// (failed), so the late reply completes nothing and is discarded.
final class RESPChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = RESPValue
    typealias OutboundIn = RESPOutbound
    typealias OutboundOut = ByteBuffer

    /// Who is waiting for a reply.
    private enum Waiter {
        case promise(EventLoopPromise<RESPValue>)
        case batch(RESPBatch)

        func succeed(_ value: RESPValue) {
            switch self {
            case .promise(let p): p.succeed(value)
            case .batch(let b): b.complete(.success(value))
            }
        }

        func fail(_ error: RESPError) {
            switch self {
            case .promise(let p): p.fail(error)
            case .batch(let b): b.complete(.failure(error))
            }
        }
    }

    private struct Pending {
        let promise: Waiter
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
        let outbound = unwrapOutboundIn(data)
        if closed {
            let error = failure ?? RESPError.connectionClosed
            switch outbound {
            case .single(let request): request.promise.fail(error)
            case .batch(_, let batch): batch.failRemaining(error)
            }
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        if outBuffer == nil { outBuffer = context.channel.allocator.buffer(capacity: 512) }
        switch outbound {
        case .single(let request):
            pending.append(Pending(promise: .promise(request.promise), remainingPushes: request.expectedPushes,
                                   pushKind: request.pushKind, collected: []))
            request.command.encode(into: &outBuffer!)
        case .batch(let commands, let batch):
            for command in commands {
                pending.append(Pending(promise: .batch(batch), remainingPushes: 0, pushKind: nil, collected: []))
                command.encode(into: &outBuffer!)
            }
        }
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
