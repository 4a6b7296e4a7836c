import NIOCore
import SwitchboardWire

/// Publish to streams, users, sessions and everyone; reachable from routes
/// (`context.switchboard`) and from the gateway (`gateway.publisher`).
public struct SwitchboardPublisher: Sendable {
    let core: GatewayCore

    /// Append `body` to `stream` and deliver it to every subscriber, on every node.
    /// With an `idempotencyKey`, a retry of the same publish is not appended twice.
    @discardableResult
    public func publish(_ body: ByteBuffer, to stream: String, idempotencyKey: String? = nil) async throws -> PublishResult {
        try Self.validate(stream: stream)
        let engine = self.core.streamStore
        return try await self.core.metrics.timePublish { try await engine.publish(stream, body: body, idempotencyKey: idempotencyKey) }
    }

    @discardableResult
    public func publish(_ body: String, to stream: String, idempotencyKey: String? = nil) async throws -> PublishResult {
        try await self.publish(ByteBuffer(string: body), to: stream, idempotencyKey: idempotencyKey)
    }

    /// Every connection of `user`, on every node (their `/users/<id>` stream).
    @discardableResult
    public func send(_ body: String, toUser user: String, idempotencyKey: String? = nil) async throws -> PublishResult {
        try await self.publish(body, to: GatewayCore.userStream(user), idempotencyKey: idempotencyKey)
    }

    /// One connection, by its session (its `/sessions/<id>` stream, kept across reconnects).
    @discardableResult
    public func send(_ body: String, toSession session: String, idempotencyKey: String? = nil) async throws -> PublishResult {
        try await self.publish(body, to: GatewayCore.sessionStream(session), idempotencyKey: idempotencyKey)
    }

    /// Everyone (the `/broadcast` stream).
    @discardableResult
    public func broadcast(_ body: String, idempotencyKey: String? = nil) async throws -> PublishResult {
        try await self.publish(body, to: GatewayCore.broadcastStream, idempotencyKey: idempotencyKey)
    }

    /// Who subscribes to `stream` (through a route), across nodes.
    public func presence(of stream: String) async throws -> [PresenceMember] {
        try Self.validate(stream: stream)
        return try await self.core.presenceStore.presence(of: stream)
    }

    /// Messages of `stream` after `offset` (at most `limit`), or `.gone` when history no
    /// longer reaches back that far.
    public func history(of stream: String, after offset: Int64, limit: Int) async throws -> HistoryRead {
        try Self.validate(stream: stream)
        return try await self.core.streamStore.read(stream, after: offset, epoch: nil, limit: limit)
    }

    /// Close the connection of `session`, on whichever node holds it. False when the session
    /// has no live connection.
    @discardableResult
    public func disconnect(session: String, code: CloseCode = .disconnected, reason: String = "disconnected by the server") async throws -> Bool {
        if let handle = self.core.hub.connection(ofSession: session) {
            handle.close(code: code, reason: reason)
            return true
        }
        guard let node = try await self.core.sessionStore.loadSession(session)?.node else { return false }
        do {
            try await self.core.nodeRegistry.send(.closeSession(session, code: code.rawValue, reason: reason), to: node)
            return true
        } catch EngineError.unknownNode {
            return false
        }
    }

    /// Close every connection of `user`, on every node.
    public func disconnect(user: String, code: CloseCode = .disconnected, reason: String = "disconnected by the server") async throws {
        for node in try await self.core.nodeRegistry.nodes() {
            try? await self.core.nodeRegistry.send(.closeUser(user, code: code.rawValue, reason: reason), to: node.id)
        }
    }

    /// This node's id.
    public var nodeID: String { self.core.nodeID }

    /// The live nodes of the cluster.
    public func nodes() async throws -> [NodeInfo] {
        try await self.core.nodeRegistry.nodes()
    }

    /// This node's live connections.
    public var connections: [ConnectionHandle] { self.core.hub.allConnections() }

    /// A stream name is a frame target path: it starts with `/`, printable ASCII, no `|` or `?`.
    static func validate(stream: String) throws {
        guard stream.first == "/", stream.utf8.count <= 1024,
            stream.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "|") && $0 != UInt8(ascii: "?") })
        else {
            throw EngineError.invalidStream("'\(stream)' is not a stream path (/…, printable ASCII, no | or ?)")
        }
    }
}
