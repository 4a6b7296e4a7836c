import NIOCore
import SwitchboardWire

/// One message of a stream, as the engine stores and delivers it.
public struct StreamMessage: Sendable {
    public var stream: String
    /// Contiguous per stream: 1, 2, 3 …
    public var offset: Int64
    public var epoch: String
    /// Random per message (empty when the engine stored none): with the offset and epoch, the
    /// message's identity. A rolled-back history written again reuses offsets, not tags.
    public var tag: String
    /// The tag of the message before it in the stream (empty when unknown): a reader that holds
    /// message `offset - 1` checks it is that one, so the log is a chain and a rollback shows
    /// wherever a reader crosses it.
    public var previousTag: String
    public var body: ByteBuffer

    public init(stream: String, offset: Int64, epoch: String, tag: String = "", previousTag: String = "", body: ByteBuffer) {
        self.stream = stream
        self.offset = offset
        self.epoch = epoch
        self.tag = tag
        self.previousTag = previousTag
        self.body = body
    }

    /// Whether this message can follow `tag` (the one at `offset - 1`): false only when both are
    /// known and differ.
    public func follows(_ tag: String) -> Bool {
        tag.isEmpty || self.previousTag.isEmpty || self.previousTag == tag
    }

    /// Six random characters.
    public static func newTag() -> String { RandomID.make(length: 6) }
}

/// Where a stream stands: its epoch and the offset of its newest message (0 when empty).
public struct StreamPosition: Sendable, Equatable {
    public var epoch: String
    public var top: Int64

    public init(epoch: String, top: Int64) {
        self.epoch = epoch
        self.top = top
    }
}

/// The result of a publish.
public struct PublishResult: Sendable, Equatable {
    public var offset: Int64
    public var epoch: String
    /// True when the idempotency key had been seen: nothing new was appended and
    /// offset/epoch are those of the first publish.
    public var duplicate: Bool

    public init(offset: Int64, epoch: String, duplicate: Bool) {
        self.offset = offset
        self.epoch = epoch
        self.duplicate = duplicate
    }
}

/// The answer to a history read.
public enum HistoryRead: Sendable {
    /// Messages after the requested offset, oldest first (at most `limit`), and the stream's position.
    case messages([StreamMessage], StreamPosition)
    /// The history no longer covers the requested offset (trimmed, expired, or the
    /// epoch changed): the reader cannot be caught up and must be told so.
    case gone(StreamPosition)
}

/// A session outlives its connections for a TTL, so a client can resume on any node.
public struct SessionRecord: Sendable, Equatable {
    public var id: String
    /// Authenticated user, nil for anonymous sessions.
    public var user: String?
    /// Streams the session is subscribed to, with the highest offset it acked on each.
    public var cursors: [String: Int64]
    /// The node holding the session's live connection, if one is connected.
    public var node: String?

    public init(id: String, user: String?, cursors: [String: Int64] = [:], node: String? = nil) {
        self.id = id
        self.user = user
        self.cursors = cursors
        self.node = node
    }
}

/// A gateway node as the cluster sees it (`GET /api/nodes`).
public struct NodeInfo: Sendable, Equatable, Codable {
    public var id: String
    /// Where it serves (`host:port`), once it listens.
    public var address: String?
    /// Unix seconds.
    public var startedAt: Double
    /// Unix seconds of its last heartbeat.
    public var lastSeen: Double
    public var connections: Int

    public init(id: String, address: String?, startedAt: Double, lastSeen: Double, connections: Int) {
        self.id = id
        self.address = address
        self.startedAt = startedAt
        self.lastSeen = lastSeen
        self.connections = connections
    }
}

/// An instruction for the node that holds a connection.
public enum ControlMessage: Sendable, Equatable {
    /// Close the connection of `session` (if this node has it) with `code`.
    case closeSession(String, code: UInt16, reason: String)
    /// Close every connection of `user` on this node.
    case closeUser(String, code: UInt16, reason: String)
}

/// Whether the engine can serve (readiness), and what to show in `/health`.
public struct EngineHealth: Sendable, Equatable {
    /// Publishes, reads and subscriptions work.
    public var available: Bool
    /// Live subscriptions are being caught up after an outage; not ready until done.
    public var catchingUp: Bool
    public var detail: String
    /// Round trip of the last health probe, when the engine has a server to probe.
    public var roundTrip: Duration?

    public init(available: Bool, catchingUp: Bool = false, detail: String, roundTrip: Duration? = nil) {
        self.available = available
        self.catchingUp = catchingUp
        self.detail = detail
        self.roundTrip = roundTrip
    }

    public var isReady: Bool { self.available && !self.catchingUp }
}

/// A member of a stream's presence set: one connection subscribed to it. A user with two tabs
/// is two members; a reconnect is a new member (the old one leaves when its connection closes).
public struct PresenceMember: Sendable, Hashable, Codable {
    public var user: String?
    public var session: String
    /// `<node>/<connection id>`: unique in the cluster.
    public var connection: String

    public init(user: String?, session: String, connection: String = "") {
        self.user = user
        self.session = session
        self.connection = connection
    }
}

public enum EngineError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The engine cannot accept writes right now (Redis away): nothing was accepted.
    case unavailable(String)
    case invalidStream(String)
    /// No live node has this id.
    case unknownNode(String)

    public var description: String {
        switch self {
        case .unavailable(let why): "engine unavailable: \(why)"
        case .invalidStream(let why): "invalid stream: \(why)"
        case .unknownNode(let id): "no live node \(id)"
        }
    }
}

/// Receives live messages for the streams this node subscribed to.
public protocol EngineDelivery: AnyObject, Sendable {
    func deliver(_ message: StreamMessage)
    /// `stream` may have missed live messages up to `position` (pub/sub was away, or a
    /// subscription went silently dead): subscribers behind it catch up from history.
    func catchUp(_ stream: String, to position: StreamPosition)
    /// A control message addressed to this node.
    func control(_ message: ControlMessage)
}
