import Logging
import NIOConcurrencyHelpers
import NIOCore
import RESP

/// What the engine needs from Redis, whether one server or a Redis Cluster: commands (with
/// scripts), live channels, and word of outages.
protocol RedisBackend: RESPCommandExecutor {
    /// Live messages use sharded pub/sub (SPUBLISH/SSUBSCRIBE).
    var sharded: Bool { get }
    var isConnected: Bool { get }
    /// `.connected` once, then `.disconnected` / `.reconnected` around each outage of the live
    /// channels (single consumer: the engine).
    var events: AsyncStream<RESPClientEvent> { get }
    /// Starts connecting in the background (and reconnecting, from then on).
    func start()
    /// Waits until the first connection is up.
    func waitUntilConnected(timeout: Duration) async throws
    /// Subscribes to `channel`; returns once the server confirmed it.
    func subscribe(_ channel: String, handler: @escaping @Sendable (ByteBuffer) -> Void) async throws -> RESPSubscription
    /// Subscribes to every channel matching `pattern` (classic pub/sub, one server only).
    func subscribe(pattern: String, handler: @escaping @Sendable (_ channel: String, _ payload: ByteBuffer) -> Void) async throws -> RESPSubscription
    func shutdown() async
    /// Whether any Redis node answers a PING within `timeout` (for readiness while some of a
    /// cluster is away).
    func anyNodeAnswers(within timeout: Duration) async -> Bool
    /// Runs two scripts (keys of two slots) together: one round trip, and on one server one
    /// write, without a task each.
    func runBoth(_ a: ScriptCall, _ b: ScriptCall) async throws -> (RESPValue, RESPValue)
}

/// One script with its keys and arguments.
struct ScriptCall: Sendable {
    let script: RESPScript
    let keys: [String]
    let args: [RESPArgument]

    var command: RESPCommand { .evalsha(self.script.sha1, keys: self.keys, args: self.args) }
}

extension RedisBackend {
    /// Both at once, each in its own child task: the general case (a cluster routes each to its
    /// slot's master).
    func runConcurrently(_ a: ScriptCall, _ b: ScriptCall) async throws -> (RESPValue, RESPValue) {
        async let first = self.run(a.script, keys: a.keys, args: a.args)
        async let second = self.run(b.script, keys: b.keys, args: b.args)
        return try await (first, second)
    }
}

/// One Redis server (or a primary behind a proxy): `RESPClient` reconnects the command and
/// pub/sub connections and restores subscriptions.
final class StandaloneBackend: RedisBackend {
    let client: RESPClient
    let sharded: Bool

    init(configuration: RESPConfiguration, sharded: Bool, reconnect: RESPReconnectPolicy, logger: Logger) {
        self.client = RESPClient(configuration: configuration, reconnectPolicy: reconnect, logger: logger)
        self.sharded = sharded
    }

    var isConnected: Bool { self.client.isConnected }
    var events: AsyncStream<RESPClientEvent> { self.client.events }
    func start() { self.client.start() }

    func waitUntilConnected(timeout: Duration) async throws {
        try await self.client.connect(timeout: timeout)
    }

    func send(_ command: RESPCommand, timeout: Duration?) async throws -> RESPValue {
        try await self.client.send(command, timeout: timeout)
    }

    func subscribe(_ channel: String, handler: @escaping @Sendable (ByteBuffer) -> Void) async throws -> RESPSubscription {
        try await self.client.subscriber.subscribe([channel], kind: self.sharded ? .shard : .channel) { message in
            handler(message.payload)
        }
    }

    func subscribe(pattern: String, handler: @escaping @Sendable (_ channel: String, _ payload: ByteBuffer) -> Void) async throws -> RESPSubscription
    {
        try await self.client.subscriber.subscribe([pattern], kind: .pattern) { message in
            handler(message.channel, message.payload)
        }
    }

    func shutdown() async { await self.client.shutdown() }

    func anyNodeAnswers(within timeout: Duration) async -> Bool {
        (try? await self.client.send(RESPCommand("PING"), timeout: timeout)) != nil
    }

    /// One pipelined write on the one connection. A script the server does not know yet
    /// (NOSCRIPT, after a restart) is loaded and run again on its own.
    func runBoth(_ a: ScriptCall, _ b: ScriptCall) async throws -> (RESPValue, RESPValue) {
        let results = try await self.client.pipeline([a.command, b.command])
        guard results.count == 2 else { throw RESPError.unexpectedReply("pipeline of 2 answered \(results.count)") }
        func settle(_ result: Result<RESPValue, RESPError>, _ call: ScriptCall) async throws -> RESPValue {
            switch result {
            case .success(let value): return value
            case .failure(.server(let code, _)) where code == "NOSCRIPT": return try await self.run(call.script, keys: call.keys, args: call.args)
            case .failure(let error): throw error
            }
        }
        return (try await settle(results[0], a), try await settle(results[1], b))
    }
}

/// A Redis Cluster: commands routed by slot (`RESPClusterClient`), live channels as shard
/// channels on the node owning their slot (`RESPClusterSubscriber`). Connecting retries until
/// a seed answers; outages of live channels come from the subscriber's events.
final class ClusterBackend: RedisBackend {
    struct State {
        var client: RESPClusterClient?
        var subscriber: RESPClusterSubscriber?
        var task: Task<Void, Never>?
        var shutdown = false
    }

    let seeds: [RESPClusterClient.Node]
    let configuration: RESPConfiguration
    let sharded = true
    let events: AsyncStream<RESPClientEvent>
    private let continuation: AsyncStream<RESPClientEvent>.Continuation
    private let state = NIOLockedValueBox(State())
    private let logger: Logger
    private let reconnect: RESPReconnectPolicy

    init(seeds: [RESPClusterClient.Node], configuration: RESPConfiguration, reconnect: RESPReconnectPolicy, logger: Logger) {
        self.seeds = seeds
        self.configuration = configuration
        self.reconnect = reconnect
        self.logger = logger
        (self.events, self.continuation) = AsyncStream<RESPClientEvent>.makeStream(bufferingPolicy: .bufferingNewest(64))
    }

    var isConnected: Bool { self.state.withLockedValue { $0.client != nil } }

    /// PINGs every primary at once; true at the first answer.
    func anyNodeAnswers(within timeout: Duration) async -> Bool {
        guard let client = self.state.withLockedValue({ $0.client }) else { return false }
        return await withTaskGroup(of: Bool.self) { group in
            for node in client.primaries {
                group.addTask { (try? await client.connection(to: node).send(RESPCommand("PING"), timeout: timeout)) != nil }
            }
            for await answered in group where answered {
                group.cancelAll()
                return true
            }
            return false
        }
    }

    func start() {
        self.state.withLockedValue { s in
            guard s.task == nil, !s.shutdown else { return }
            s.task = Task { await self.connectLoop() }
        }
    }

    /// Until a seed answers: then the client keeps itself up to date, and the subscriber's
    /// outages become this backend's events.
    private func connectLoop() async {
        let policy = self.reconnect
        var attempt = 0
        while !Task.isCancelled {
            do {
                let client = try await RESPClusterClient.connect(seeds: self.seeds, configuration: self.configuration, logger: self.logger)
                let subscriber = RESPClusterSubscriber(cluster: client, retryPolicy: self.reconnect, logger: self.logger)
                let installed = self.state.withLockedValue { s -> Bool in
                    guard !s.shutdown else { return false }
                    s.client = client
                    s.subscriber = subscriber
                    return true
                }
                guard installed else {
                    await client.close()
                    return
                }
                self.continuation.yield(.connected)
                for await event in subscriber.events { self.continuation.yield(event) }
                return
            } catch {
                self.logger.debug("Redis Cluster not reachable yet: \(error)")
                attempt += 1
                try? await Task.sleep(for: policy.delay(attempt: min(attempt, 8)))
            }
        }
    }

    func waitUntilConnected(timeout: Duration) async throws {
        self.start()
        let deadline = ContinuousClock.now + timeout
        while !self.isConnected {
            guard ContinuousClock.now < deadline else { throw RESPError.timeout }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    private func client() throws -> RESPClusterClient {
        guard let client = self.state.withLockedValue({ $0.client }) else { throw RESPError.notConnected }
        return client
    }

    func send(_ command: RESPCommand, timeout: Duration?) async throws -> RESPValue {
        try await self.client().send(command, timeout: timeout)
    }

    func scriptLoad(_ source: String, keys: [String], timeout: Duration?) async throws -> RESPValue {
        try await self.client().scriptLoad(source, keys: keys, timeout: timeout)
    }

    func runBoth(_ a: ScriptCall, _ b: ScriptCall) async throws -> (RESPValue, RESPValue) {
        try await self.runConcurrently(a, b)
    }

    /// Sharded pub/sub has no patterns: a cluster engine subscribes channel by channel.
    func subscribe(pattern: String, handler: @escaping @Sendable (_ channel: String, _ payload: ByteBuffer) -> Void) async throws -> RESPSubscription
    {
        throw RESPError.unexpectedReply("pattern subscriptions are not used on a Redis Cluster")
    }

    func subscribe(_ channel: String, handler: @escaping @Sendable (ByteBuffer) -> Void) async throws -> RESPSubscription {
        guard let subscriber = self.state.withLockedValue({ $0.subscriber }) else { throw RESPError.notConnected }
        return try await subscriber.subscribe([channel]) { message in handler(message.payload) }
    }

    func shutdown() async {
        let (task, client, subscriber) = self.state.withLockedValue { s in
            s.shutdown = true
            return (s.task, s.client, s.subscriber)
        }
        task?.cancel()
        await subscriber?.close()
        await client?.close()
        self.continuation.finish()
    }
}
