import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire

/// The connections of one event loop and what they subscribe to. Touched only on
/// its loop, so it needs no lock; the `Hub` routes each message to the loops that
/// want it and each loop writes the same frame bytes to its subscribers.
final class LoopHub: @unchecked Sendable {
    let loop: any EventLoop
    let index: Int
    unowned let hub: Hub
    private(set) var connections: [ObjectIdentifier: ConnectionHandler] = [:]
    private var subscribers: [String: [ConnectionHandler]] = [:]
    /// Connections written to since the last flush pass.
    private var dirty: [ConnectionHandler] = []
    private var flushScheduled = false
    private var pingTask: RepeatedTask?
    /// Live messages handed over from other threads, delivered in one loop task.
    private let inbox = NIOLockedValueBox(Inbox())

    struct Inbox {
        var messages: [(StreamMessage, ByteBuffer)] = []
        var scheduled = false
    }

    init(loop: any EventLoop, index: Int, hub: Hub) {
        self.loop = loop
        self.index = index
        self.hub = hub
    }

    func register(_ connection: ConnectionHandler) {
        self.loop.preconditionInEventLoop()
        self.connections[ObjectIdentifier(connection)] = connection
    }

    func unregister(_ connection: ConnectionHandler) {
        self.loop.preconditionInEventLoop()
        self.connections[ObjectIdentifier(connection)] = nil
    }

    /// Returns true when this is the loop's first subscriber of `stream`.
    @discardableResult
    func addSubscriber(_ stream: String, _ connection: ConnectionHandler) -> Bool {
        self.loop.preconditionInEventLoop()
        if self.subscribers[stream, default: []].contains(where: { $0 === connection }) { return false }
        self.subscribers[stream, default: []].append(connection)
        if self.subscribers[stream]!.count == 1 {
            self.hub.addInterest(stream, loop: self.index)
            return true
        }
        return false
    }

    func removeSubscriber(_ stream: String, _ connection: ConnectionHandler) {
        self.loop.preconditionInEventLoop()
        guard var list = self.subscribers[stream], let i = list.firstIndex(where: { $0 === connection }) else { return }
        list.swapAt(i, list.count - 1)
        list.removeLast()
        if list.isEmpty {
            self.subscribers[stream] = nil
            self.hub.removeInterest(stream, loop: self.index)
        } else {
            self.subscribers[stream] = list
        }
    }

    func subscriberCount(_ stream: String) -> Int { self.subscribers[stream]?.count ?? 0 }

    /// Queue a live message for this loop (any thread). Messages that arrive while the
    /// loop is busy are delivered together, and each socket is flushed once per batch:
    /// under load batches grow and writes coalesce; when idle a message goes at once.
    func enqueue(_ message: StreamMessage, frame: ByteBuffer) {
        let schedule = self.inbox.withLockedValue { inbox in
            inbox.messages.append((message, frame))
            defer { inbox.scheduled = true }
            return !inbox.scheduled
        }
        if schedule {
            self.loop.execute { self.deliverInbox() }
        }
    }

    private func deliverInbox() {
        let batch = self.inbox.withLockedValue { inbox in
            inbox.scheduled = false
            defer { inbox.messages.removeAll(keepingCapacity: true) }
            return inbox.messages
        }
        for (message, frame) in batch {
            guard let list = self.subscribers[message.stream] else { continue }
            for connection in list {
                connection.deliverLive(message, frame: frame)
            }
        }
        self.flushDirty()
    }

    /// Frames queued for a socket in one loop tick go out in one write: a connection
    /// that was written to is flushed once, after everything queued so far ran.
    func markDirty(_ connection: ConnectionHandler) {
        self.dirty.append(connection)
        if !self.flushScheduled {
            self.flushScheduled = true
            self.loop.execute {
                self.flushScheduled = false
                self.flushDirty()
            }
        }
    }

    private func flushDirty() {
        let list = self.dirty
        self.dirty.removeAll(keepingCapacity: true)
        for connection in list {
            connection.flushIfNeeded()
        }
    }

    /// One timer per loop (not per connection) pings idle peers and closes dead ones.
    func startPinging(every interval: TimeAmount) {
        self.pingTask = self.loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in
            guard let self else { return }
            let now = NIODeadline.now()
            for connection in self.connections.values {
                connection.heartbeat(now: now)
            }
        }
    }

    func stopPinging() {
        self.pingTask?.cancel()
        self.pingTask = nil
    }
}
