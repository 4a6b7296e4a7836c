import NIOCore

/// The boundary between the gateway and where streams live, as the roles it plays (as
/// centrifuge splits Broker, PresenceManager and Controller): each caller asks for the role it
/// uses, and a new engine can be built one role at a time. The memory engine keeps everything
/// in this process; the Redis engine keeps it in Redis and answers every call in one round trip
/// (publish is one script: idempotency, epoch, offset, capped append, live publish).
public protocol SwitchboardEngine: StreamStore, SessionStore, PresenceStore, NodeRegistry, RateBuckets {
    /// Called once before use, with this node's id; live messages for subscribed streams and
    /// control messages go to `delivery`.
    func start(node: String, delivery: any EngineDelivery) async throws
    /// Leave the cluster (drained) and stop.
    func shutdown() async
    func health() async -> EngineHealth
}

/// Streams: their history, their live delivery to this node, and what sessions consumed.
public protocol StreamStore: Sendable {
    /// Append to a stream and deliver live. Returns the offset and epoch.
    func publish(_ stream: String, body: ByteBuffer, idempotencyKey: String?) async throws -> PublishResult
    /// Messages after `offset`, at most `limit`; `.gone` when history no longer covers
    /// `offset`, `epoch` (when given) differs from the stream's, or `tag` (when given) is not the
    /// tag of the message at `offset` (the history the reader saw was rolled back).
    func read(_ stream: String, after offset: Int64, epoch: String?, tag: String?, limit: Int) async throws -> HistoryRead
    func position(of stream: String) async throws -> StreamPosition

    /// This node has its first local subscriber on `stream` (or lost its last).
    func subscribe(_ stream: String) async throws
    func unsubscribe(_ stream: String) async

    /// Record that `session` processed `stream` up to `offset`; the engine may trim
    /// messages every subscribed session has acked.
    func ack(session: String, stream: String, offset: Int64) async throws
    /// The session stopped consuming `stream` (acks no longer hold its history).
    func release(session: String, stream: String) async throws

    /// How much of each stream to keep and whether acks trim it (the gateway's stream rules);
    /// called before the engine starts. Until then every stream gets the engine's defaults.
    func useStorage(_ policy: StreamStoragePolicy)
}

extension StreamStore {
    public func read(_ stream: String, after offset: Int64, epoch: String?, limit: Int) async throws -> HistoryRead {
        try await self.read(stream, after: offset, epoch: epoch, tag: nil, limit: limit)
    }
}

/// Sessions: they outlive their connections, so a client can resume on any node.
public protocol SessionStore: Sendable {
    /// Sessions outlive connections for `ttl` seconds after the last one closes.
    func saveSession(_ session: SessionRecord) async throws
    func loadSession(_ id: String) async throws -> SessionRecord?
    /// A connection of the session (of `user`) opened on this node, or closed.
    func touchSession(_ id: String, user: String?, connected: Bool) async throws
}

/// Who is subscribed to a stream, across nodes.
public protocol PresenceStore: Sendable {
    /// Adds `member` to the stream's presence; true if it was not there yet.
    @discardableResult
    func presenceJoin(_ stream: String, member: PresenceMember) async throws -> Bool
    /// Removes `member`; true if it was there.
    @discardableResult
    func presenceLeave(_ stream: String, member: PresenceMember) async throws -> Bool
    func presence(of stream: String) async throws -> [PresenceMember]
}

/// The live gateway nodes, and instructions between them.
public protocol NodeRegistry: Sendable {
    /// Where this node serves, once it listens (shown by `nodes()`).
    func announce(address: String) async
    /// Live gateway nodes (this one included).
    func nodes() async throws -> [NodeInfo]
    /// Deliver `message` to `node` (this one included).
    func send(_ message: ControlMessage, to node: String) async throws
}

/// Rate buckets shared by every node on the engine.
public protocol RateBuckets: Sendable {
    /// Takes one token from the rate bucket `key` (`rate` tokens a second, at most `burst`
    /// saved up), shared by every node on this engine; false when the bucket is empty.
    func takeToken(_ key: String, rate: Double, burst: Double) async throws -> Bool
}
