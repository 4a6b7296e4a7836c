import Foundation
import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire

/// The connections of one event loop and what they subscribe to. Touched only on
/// its loop, so it needs no lock; the `Hub` routes each message to the loops that
/// want it and each loop writes the same frame bytes to its subscribers.
final class LoopHub: @unchecked Sendable {
    let loop: any EventLoop
    /// Request frames' routes run here (a `LoopTaskExecutor` where the platform has task executors).
    let executor: (any Sendable)?
    let index: Int
    unowned let hub: Hub
    /// Every connection of the loop; each knows its slot, so removal is O(1).
    private(set) var connections: [ConnectionHandler] = []
    private var subscribers: [String: Subscribers] = [:]
    /// Connections written to since the last flush pass.
    private var dirty: [ConnectionHandler] = []
    private var flushScheduled = false
    private var pingTask: RepeatedTask?
    /// The expiry timer: when it fires, and the task (see `watchExpiry`).
    private var expiryCheck: (at: NIODeadline, task: Scheduled<Void>)?
    private var lastExpiryScan = NIODeadline.uptimeNanoseconds(0)
    /// Live frames written since the last batch ended, added to the metric once per batch.
    var delivered = 0
    /// Live messages handed over from other threads, delivered in one loop task.
    private let inbox = NIOLockedValueBox(Inbox())

    struct Inbox {
        var messages: [(StreamMessage, ByteBuffer, FanoutClock)] = []
        var scheduled = false
    }

    init(loop: any EventLoop, index: Int, hub: Hub) {
        self.loop = loop
        self.executor = Self.makeExecutor(loop)
        self.index = index
        self.hub = hub
    }

    func register(_ connection: ConnectionHandler) {
        self.loop.preconditionInEventLoop()
        connection.slot = self.connections.count
        self.connections.append(connection)
    }

    func unregister(_ connection: ConnectionHandler) {
        self.loop.preconditionInEventLoop()
        let slot = connection.slot
        guard slot >= 0, slot < self.connections.count, self.connections[slot] === connection else { return }
        let last = self.connections.removeLast()
        if last !== connection {
            self.connections[slot] = last
            last.slot = slot
        }
        connection.slot = -1
    }

    /// Returns true when this is the loop's first subscriber of `stream`.
    @discardableResult
    func addSubscriber(_ stream: String, _ connection: ConnectionHandler) -> Bool {
        self.loop.preconditionInEventLoop()
        guard self.subscribers[stream] != nil else {
            self.subscribers[stream] = .one(connection)
            self.hub.addInterest(stream, loop: self.index)
            return true
        }
        // In place: a copy of the list would make every insert O(subscribers).
        _ = self.subscribers[stream]!.insert(connection)
        return false
    }

    func removeSubscriber(_ stream: String, _ connection: ConnectionHandler) {
        self.loop.preconditionInEventLoop()
        if self.subscribers[stream]?.remove(connection) == .empty {
            self.subscribers[stream] = nil
            self.hub.removeInterest(stream, loop: self.index)
        }
    }

    func subscriberCount(_ stream: String) -> Int { self.subscribers[stream]?.count ?? 0 }

    /// Queue a live message for this loop (any thread). Messages that arrive while the
    /// loop is busy are delivered together, and each socket is flushed once per batch:
    /// under load batches grow and writes coalesce; when idle a message goes at once.
    func enqueue(_ message: StreamMessage, frame: ByteBuffer, clock: FanoutClock) {
        let schedule = self.inbox.withLockedValue { inbox in
            inbox.messages.append((message, frame, clock))
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
        for (message, frame, _) in batch {
            switch self.subscribers[message.stream] {
            case .one(let connection):
                connection.deliverLive(message, frame: frame)
            case .many(let list):
                for connection in list { connection.deliverLive(message, frame: frame) }
            case nil:
                continue
            }
        }
        self.flushDirty()
        if self.delivered > 0 {
            self.hub.metrics.deliveries.increment(by: Int64(self.delivered))
            self.delivered = 0
        }
        // Every write of the batch is issued: the loop that wrote a message last records how long
        // the node took from the hand-off to here.
        let now = NIODeadline.now().uptimeNanoseconds
        for (_, _, clock) in batch where clock.lastLoopWrote() {
            self.hub.metrics.fanoutDuration.recordNanoseconds(Int64(truncatingIfNeeded: now &- clock.handedAt))
        }
    }

    /// Every local subscriber of `stream` that is behind `position` reads the gap from history.
    func catchUp(_ stream: String, to position: StreamPosition) {
        switch self.subscribers[stream] {
        case .one(let connection): connection.catchUp(stream, to: position)
        case .many(let list): for connection in list { connection.catchUp(stream, to: position) }
        case nil: return
        }
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
            for connection in self.connections {
                connection.heartbeat(now: now)
            }
        }
    }

    func stopPinging() {
        self.pingTask?.cancel()
        self.pingTask = nil
        self.expiryCheck?.task.cancel()
        self.expiryCheck = nil
    }

    /// A connection's token expires at `date`. Tokens are enforced at their expiry without a
    /// timer per connection: the loop has one timer, set for the earliest expiry it was told
    /// of; when it fires it looks at every connection (at most once a second), closes the
    /// expired ones with 4401 and sets itself for the earliest expiry left.
    func watchExpiry(_ date: Date) {
        self.loop.preconditionInEventLoop()
        let now = NIODeadline.now()
        let due = now + .seconds(clamping: date.timeIntervalSince(Date()))
        self.scheduleExpiryCheck(at: due, now: now)
    }

    private func scheduleExpiryCheck(at due: NIODeadline, now: NIODeadline) {
        let at = max(due, self.lastExpiryScan + .seconds(1))
        if let current = self.expiryCheck, current.at <= at { return }
        self.expiryCheck?.task.cancel()
        let task = self.loop.scheduleTask(deadline: at) { [weak self] () -> Void in self?.checkExpiries() }
        self.expiryCheck = (at, task)
    }

    private func checkExpiries() {
        self.expiryCheck = nil
        let now = NIODeadline.now()
        self.lastExpiryScan = now
        let date = Date()
        var earliest: Date?
        for connection in self.connections {
            if let next = connection.closeIfExpired(at: date), next < (earliest ?? .distantFuture) { earliest = next }
        }
        if let earliest {
            let due = now + .seconds(clamping: earliest.timeIntervalSince(date))
            self.scheduleExpiryCheck(at: due, now: now)
        }
    }
}

/// The subscribers of one stream on one loop. Most streams (a session's, a user's) have a
/// single local subscriber, which then costs no array.
enum Subscribers {
    case one(ConnectionHandler)
    case many([ConnectionHandler])

    enum Removal { case notFound, empty, removed }

    var count: Int {
        switch self {
        case .one: 1
        case .many(let list): list.count
        }
    }

    /// Adds `connection`; false if it was already there.
    mutating func insert(_ connection: ConnectionHandler) -> Bool {
        switch self {
        case .one(let existing):
            if existing === connection { return false }
            self = .many([existing, connection])
        case .many(var list):
            if list.contains(where: { $0 === connection }) { return false }
            self = .one(connection)  // drop the second reference so the append does not copy
            list.append(connection)
            self = .many(list)
        }
        return true
    }

    mutating func remove(_ connection: ConnectionHandler) -> Removal {
        switch self {
        case .one(let existing):
            return existing === connection ? .empty : .notFound
        case .many(var list):
            guard let i = list.firstIndex(where: { $0 === connection }) else { return .notFound }
            self = .one(connection)
            list.swapAt(i, list.count - 1)
            list.removeLast()
            self = list.count == 1 ? .one(list[0]) : .many(list)
            return .removed
        }
    }
}

/// When a live message was handed to the hub, and how many event loops still have to write it
/// (shared by them; nil when one loop writes it): the last one records the node's fan-out time,
/// hand-off to the last local socket write issued (`switchboard_fanout_duration_seconds`).
struct FanoutClock: Sendable {
    let handedAt: UInt64
    let remaining: NIOLockedValueBox<Int>?

    /// Called once by each loop after its writes: true for the last.
    func lastLoopWrote() -> Bool {
        guard let remaining else { return true }
        return remaining.withLockedValue {
            $0 -= 1
            return $0 == 0
        }
    }
}
