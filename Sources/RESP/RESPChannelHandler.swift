import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

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

/// What a caller hands to the connection: one command, or a batch written back to back.
enum RESPSubmission {
    /// `expectedPushes`: for (un)subscribe commands in RESP3, the number of push
    /// confirmations (of lower-case kind `pushKind`) that complete it.
    case single(RESPCommand, EventLoopPromise<RESPValue>, expectedPushes: Int, pushKind: String?)
    case batch([RESPCommand], RESPBatch)

    func fail(_ error: RESPError) {
        switch self {
        case .single(_, let promise, _, _): promise.fail(error)
        case .batch(_, let batch): batch.failRemaining(error)
        }
    }
}

/// One connection's pipeline, as a state machine on its event loop: a FIFO of who waits for
/// which reply, the parser, and the outbound buffer.
///
/// Callers on any thread `submit` into a locked inbox; the first submission of a tick schedules
/// one loop task that encodes everything submitted meanwhile into one buffer and writes it with
/// one flush. Concurrent callers therefore share writes (and syscalls), and commands reach the
/// handler without the per-message boxing of the channel pipeline. Replies are parsed straight
/// from the received bytes (no decoder handler in between). Push frames go to `onPush`.
///
/// Timed-out or cancelled requests keep their FIFO slot: their promise is already completed
/// (failed), so the late reply completes nothing and is discarded.
final class RESPChannelHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
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
        let waiter: Waiter
        var remainingPushes: Int
        let pushKind: String?
        var collected: [RESPValue]
    }

    private struct Inbox {
        enum Phase {
            /// Nothing scheduled: the next submission schedules a drain on the loop.
            case idle
            /// A drain is scheduled; later submissions join it.
            case drainScheduled
            /// The connection is gone: later submissions fail at once, unsent.
            case closed
        }
        var items: [RESPSubmission] = []
        var phase = Phase.idle
    }

    /// The handler's life on its loop.
    private enum State {
        /// Not in a pipeline yet.
        case notAdded
        case active(ChannelHandlerContext)
        /// The connection failed or closed: nothing more is written or parsed.
        case failed(RESPError)
    }

    let loop: any EventLoop
    // Loop-only state.
    private var state = State.notAdded
    private var pending = CircularBuffer<Pending>(initialCapacity: 64)
    private var parser: RESPParser
    /// Received bytes not yet parsed into a whole value.
    private var received: ByteBuffer?
    // Shared with submitters.
    private let inbox = NIOLockedValueBox(Inbox())
    /// Shared with `RESPConnection` so later sends report why the connection closed.
    private let closeReason: NIOLockedValueBox<RESPError?>
    private let onPush: (@Sendable (RESPValue) -> Void)?
    private let logger: Logger

    init(
        loop: any EventLoop, parser: RESPParser, onPush: (@Sendable (RESPValue) -> Void)?, closeReason: NIOLockedValueBox<RESPError?>, logger: Logger
    ) {
        self.loop = loop
        self.parser = parser
        self.onPush = onPush
        self.closeReason = closeReason
        self.logger = logger
    }

    // MARK: submissions (any thread)

    func submit(_ submission: RESPSubmission) {
        let outcome = self.inbox.withLockedValue { inbox -> (schedule: Bool, closed: Bool) in
            switch inbox.phase {
            case .closed:
                return (false, true)
            case .drainScheduled:
                inbox.items.append(submission)
                return (false, false)
            case .idle:
                inbox.items.append(submission)
                inbox.phase = .drainScheduled
                return (true, false)
            }
        }
        if outcome.closed {
            submission.fail(self.unsentError)
        } else if outcome.schedule {
            self.loop.execute { self.drainInbox() }
        }
    }

    /// Encodes every waiting submission into one buffer: one write, one flush.
    private func drainInbox() {
        let items = self.inbox.withLockedValue { inbox in
            if case .drainScheduled = inbox.phase { inbox.phase = .idle }
            defer { inbox.items.removeAll(keepingCapacity: true) }
            return inbox.items
        }
        guard case .active(let context) = self.state else {
            for item in items { item.fail(self.unsentError) }
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: 256 * items.count)
        for item in items {
            switch item {
            case .single(let command, let promise, let pushes, let kind):
                self.pending.append(Pending(waiter: .promise(promise), remainingPushes: pushes, pushKind: kind, collected: []))
                command.encode(into: &buffer)
            case .batch(let commands, let batch):
                for command in commands {
                    self.pending.append(Pending(waiter: .batch(batch), remainingPushes: 0, pushKind: nil, collected: []))
                    command.encode(into: &buffer)
                }
            }
        }
        context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
    }

    // MARK: channel events (loop)

    func handlerAdded(context: ChannelHandlerContext) {
        self.state = .active(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var input = self.unwrapInboundIn(data)
        if self.received != nil {
            self.received!.writeBuffer(&input)
        } else {
            self.received = input
        }
        do {
            while case .active = self.state, let value = try self.parser.parse(&self.received!) {
                self.replyReceived(value, context: context)
            }
        } catch let error as RESPError {
            return self.fail(context: context, error: error)
        } catch {
            return self.fail(context: context, error: .protocolError("\(error)"))
        }
        if self.received?.readableBytes == 0 { self.received = nil }
    }

    private func replyReceived(_ value: RESPValue, context: ChannelHandlerContext) {
        if case .push(let items) = value {
            if let first = self.pending.first, first.remainingPushes > 0,
                let kind = items.first?.string?.lowercased(), kind == first.pushKind
            {
                let i = self.pending.startIndex
                self.pending[i].remainingPushes -= 1
                self.pending[i].collected.append(value)
                if self.pending[i].remainingPushes == 0 {
                    let entry = self.pending.removeFirst()
                    entry.waiter.succeed(.array(entry.collected))
                }
                return
            }
            self.onPush?(value)
            return
        }
        guard let entry = self.pending.popFirst() else {
            return self.fail(context: context, error: .protocolError("unexpected reply with no pending command: \(value)"))
        }
        switch value {
        case .simpleError(let b), .blobError(let b):
            entry.waiter.fail(RESPError.fromServer(b))
        default:
            entry.waiter.succeed(value)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let respError: RESPError
        if let e = error as? RESPError {
            respError = e
        } else {
            if let ssl = error as? NIOSSLError, case .uncleanShutdown = ssl {
                self.logger.debug("RESP TLS unclean shutdown")
            } else {
                self.logger.warning("RESP connection error: \(error)")
            }
            respError = .connectionClosed
        }
        self.fail(context: context, error: respError)
    }

    private func fail(context: ChannelHandlerContext, error: RESPError) {
        if case .active = self.state {
            self.state = .failed(error)
            self.closeReason.withLockedValue { if $0 == nil { $0 = error } }
        }
        if case .protocolError(let msg) = error { self.logger.warning("RESP protocol error: \(msg)") }
        self.closeInbox()
        self.failAll(error)
        context.close(promise: nil)
    }

    /// No more submissions: those not yet written fail (unsent), and so do later ones.
    private func closeInbox() {
        let items = self.inbox.withLockedValue { inbox in
            inbox.phase = .closed
            defer { inbox.items.removeAll() }
            return inbox.items
        }
        for item in items { item.fail(self.unsentError) }
    }

    /// Why a command was not written: the error that broke the connection (a protocol error),
    /// else `.notConnected` (callers may safely retry elsewhere: nothing was sent).
    private var unsentError: RESPError {
        if case .protocolError(let reason)? = self.closeReason.withLockedValue({ $0 }) { return .protocolError(reason) }
        return .notConnected
    }

    private func failAll(_ error: RESPError) {
        while let entry = self.pending.popFirst() { entry.waiter.fail(error) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let error = self.failWith(.connectionClosed)
        self.received = nil
        self.closeInbox()
        self.failAll(error)
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        let error = self.failWith(.connectionClosed)
        self.closeInbox()
        self.failAll(error)
    }

    /// The error the handler failed with, failing it with `error` when it had not yet.
    private func failWith(_ error: RESPError) -> RESPError {
        if case .failed(let earlier) = self.state { return earlier }
        self.state = .failed(error)
        return error
    }
}
