import Logging
import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire

/// Node-local fan-out: the engine hands every live message here; the hub frames it
/// once and passes the same bytes to each event loop that has subscribers of its stream.
final class Hub: EngineDelivery, @unchecked Sendable {
    // `loops` is fixed at init; `interest` and `sessions` are behind locks.
    private(set) var loops: [LoopHub] = []
    private var loopByID: [ObjectIdentifier: LoopHub] = [:]
    /// Bit i set: loop i has at least one subscriber of the stream.
    private let interest = NIOLockedValueBox([String: UInt64]())
    /// Live connection of each session (a newer one takes over).
    private let sessions = NIOLockedValueBox([String: ConnectionHandle]())
    let allocator = ByteBufferAllocator()
    let metrics: GatewayMetrics

    static let maxLoops = 64

    init(group: any EventLoopGroup, metrics: GatewayMetrics) {
        self.metrics = metrics
        let all = Array(group.makeIterator())
        precondition(all.count <= Self.maxLoops, "a gateway runs on at most \(Self.maxLoops) event loops (Gateway.defaultEventLoopGroup)")
        for (i, loop) in all.enumerated() {
            let hub = LoopHub(loop: loop, index: i, hub: self)
            self.loops.append(hub)
            self.loopByID[ObjectIdentifier(loop)] = hub
        }
    }

    func loopHub(for loop: any EventLoop) -> LoopHub {
        guard let hub = self.loopByID[ObjectIdentifier(loop)] else {
            preconditionFailure("channel on an event loop the gateway does not own")
        }
        return hub
    }

    func addInterest(_ stream: String, loop: Int) {
        self.interest.withLockedValue { $0[stream, default: 0] |= (1 << UInt64(loop)) }
    }

    func removeInterest(_ stream: String, loop: Int) {
        self.interest.withLockedValue { table in
            let mask = (table[stream] ?? 0) & ~(1 << UInt64(loop))
            table[stream] = mask == 0 ? nil : mask
        }
    }

    func deliver(_ message: StreamMessage) {
        let mask = self.interest.withLockedValue { $0[message.stream] ?? 0 }
        guard mask != 0 else { return }
        let frame = WebSocketFraming.push(message, allocator: self.allocator)
        let loops = mask.nonzeroBitCount
        let clock = FanoutClock(handedAt: NIODeadline.now().uptimeNanoseconds, remaining: loops > 1 ? NIOLockedValueBox(loops) : nil)
        var first = true
        for hub in self.loops where mask & (1 << UInt64(hub.index)) != 0 {
            // Every socket write retains the frame's storage: one copy per loop (not per
            // socket) keeps those reference counts on one core instead of bouncing between them.
            hub.enqueue(message, frame: first ? frame : self.copy(frame), clock: clock)
            first = false
        }
    }

    private func copy(_ frame: ByteBuffer) -> ByteBuffer {
        var copy = self.allocator.buffer(capacity: frame.readableBytes)
        copy.writeImmutableBuffer(frame)
        return copy
    }

    func catchUp(_ stream: String, to position: StreamPosition) {
        let mask = self.interest.withLockedValue { $0[stream] ?? 0 }
        for hub in self.loops where mask & (1 << UInt64(hub.index)) != 0 {
            hub.loop.execute { hub.catchUp(stream, to: position) }
        }
    }

    func control(_ message: ControlMessage) {
        switch message {
        case .closeSession(let session, let code, let reason):
            self.connection(ofSession: session)?.close(code: CloseCode(rawValue: code) ?? .disconnected, reason: reason)
        case .closeUser(let user, let code, let reason):
            for connection in self.allConnections() where connection.user == user {
                connection.close(code: CloseCode(rawValue: code) ?? .disconnected, reason: reason)
            }
        }
    }

    /// Registers `handle` as its session's live connection; returns the one it replaced.
    func claimSession(_ session: String, by handle: ConnectionHandle) -> ConnectionHandle? {
        self.sessions.withLockedValue { table in
            let old = table[session]
            table[session] = handle
            return old
        }
    }

    func releaseSession(_ session: String, by handle: ConnectionHandle) {
        self.sessions.withLockedValue { table in
            if table[session]?.id == handle.id { table[session] = nil }
        }
    }

    func connection(ofSession session: String) -> ConnectionHandle? {
        self.sessions.withLockedValue { $0[session] }
    }

    var connectionCount: Int { self.sessions.withLockedValue { $0.count } }

    func allConnections() -> [ConnectionHandle] {
        self.sessions.withLockedValue { Array($0.values) }
    }
}
