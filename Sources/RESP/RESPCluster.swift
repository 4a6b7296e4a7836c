import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Redis Cluster hash slots (CRC16/XMODEM mod 16384, honouring `{hash tags}`).
public enum RESPClusterSlot {
    public static let count = 16384

    public static func slot(for key: String) -> Int { slot(for: Array(key.utf8)) }

    public static func slot(for key: ByteBuffer) -> Int { slot(for: key.readableBytesView) }

    public static func slot<C: Collection>(for key: C) -> Int where C.Element == UInt8, C.Index == Int {
        if let open = key.firstIndex(of: UInt8(ascii: "{")),
            let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1
        {
            return Int(crc16(key[(open + 1)..<close]) & 0x3FFF)
        }
        return Int(crc16(key) & 0x3FFF)
    }

    public static func crc16<C: Collection>(_ data: C) -> UInt16 where C.Element == UInt8 {
        var crc: UInt16 = 0
        for byte in data {
            crc ^= UInt16(byte) << 8
            for _ in 0..<8 { crc = (crc & 0x8000) != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        }
        return crc
    }

    /// Key used for routing: `EVAL`/`EVALSHA`/`FCALL` use the first key after numkeys; commands
    /// without keys return nil (sent to any node); everything else uses the first argument.
    static func routingKey(_ command: RESPCommand) -> RESPArgument? {
        let args = command.arguments
        switch command.name {
        case "PING", "ECHO", "INFO", "PUBLISH", "SCRIPT", "CLUSTER", "CLIENT", "HELLO", "AUTH", "SELECT", "TIME",
            "DBSIZE", "FLUSHALL", "FLUSHDB", "COMMAND", "CONFIG", "DEBUG", "PUBSUB", "FUNCTION", "WAIT", "MULTI", "EXEC":
            return nil
        case "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO":
            guard args.count > 3 else { return nil }
            if case .int(let n) = args[2], n == 0 { return nil }
            if case .string(let n) = args[2], n == "0" { return nil }
            return args[3]
        default:
            return args.count > 1 ? args[1] : nil
        }
    }

    static func slot(for argument: RESPArgument) -> Int {
        switch argument {
        case .string(let s): return slot(for: s)
        case .bytes(let b): return slot(for: b)
        case .int(let i): return slot(for: String(i))
        case .double(let d): return slot(for: String(d))
        }
    }
}

/// Redis Cluster client: slot map from `CLUSTER SLOTS`, one pipelined connection per primary
/// (concurrent callers share it), `MOVED` (updates the map, refreshes it in the background,
/// retries) and `ASK` (`ASKING` + command on the target). `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`
/// and `MASTERDOWN` are retried with backoff for up to `retryBudget`, and so is a node that
/// cannot be reached (after a topology refresh, which finds a promoted replica). The map is also refreshed periodically.
/// Routes by the first key of the command; multi-key commands must use keys of one slot (use
/// `{tags}`). No replica reads. Sharded pub/sub: `RESPClusterSubscriber`.
public final class RESPClusterClient: RESPCommandExecutor, Sendable {
    public struct Node: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int
        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
        public var description: String { "\(host):\(port)" }
        static let ports = 1...65535
    }

    struct State {
        var slots: [Node?] = Array(repeating: nil, count: RESPClusterSlot.count)
        var connections: [Node: Task<RESPConnection, Error>] = [:]
        var seeds: [Node]
        var refreshing = false
        var shutdown = false
        var refresher: Task<Void, Never>?
    }

    public let configuration: RESPConfiguration
    /// Redirects and retries per command before it fails.
    public let maxRedirects: Int
    /// Backoff between retries of a command (TRYAGAIN, CLUSTERDOWN, unreachable node …).
    public let retryPolicy: RESPReconnectPolicy
    /// How long a command is retried while the cluster says "not now" or its node is
    /// unreachable; then the last error is thrown.
    public let retryBudget: Duration
    private let state: NIOLockedValueBox<State>
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger

    init(
        seeds: [Node], configuration: RESPConfiguration, maxRedirects: Int, retryPolicy: RESPReconnectPolicy,
        retryBudget: Duration, eventLoopGroup: any EventLoopGroup, logger: Logger
    ) {
        self.retryBudget = retryBudget
        self.state = NIOLockedValueBox(State(seeds: seeds))
        self.configuration = configuration
        self.maxRedirects = maxRedirects
        self.retryPolicy = retryPolicy
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
    }

    /// Connects to a seed node and loads the slot map. `configuration.host/port` are ignored.
    /// The map is refreshed every `refreshInterval` (and whenever a redirect or failure says
    /// it is out of date).
    public static func connect(
        seeds: [Node], configuration: RESPConfiguration = RESPConfiguration(),
        maxRedirects: Int = 8,
        retryPolicy: RESPReconnectPolicy = RESPReconnectPolicy(initialDelay: .milliseconds(20), maxDelay: .milliseconds(500)),
        retryBudget: Duration = .seconds(5),
        refreshInterval: Duration = .seconds(15),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "resp.cluster")
    ) async throws -> RESPClusterClient {
        let client = RESPClusterClient(
            seeds: seeds, configuration: configuration, maxRedirects: maxRedirects,
            retryPolicy: retryPolicy, retryBudget: retryBudget, eventLoopGroup: eventLoopGroup, logger: logger)
        try await client.refreshSlots()
        let refresher = Task { [weak client] in
            while !Task.isCancelled {
                try? await Task.sleep(for: refreshInterval)
                guard let client, !client.isClosed else { return }
                try? await client.refreshSlots()
            }
        }
        client.state.withLockedValue { $0.refresher = refresher }
        return client
    }

    var isClosed: Bool { state.withLockedValue { $0.shutdown } }

    /// Every primary in the current slot map.
    public var primaries: [Node] {
        state.withLockedValue { s in
            var seen = Set<Node>()
            return s.slots.compactMap { $0 }.filter { seen.insert($0).inserted }
        }
    }

    /// Reloads the slot map with `CLUSTER SLOTS` from any known node.
    public func refreshSlots() async throws {
        let candidates: [Node] = state.withLockedValue { s in
            var seen = Set<Node>()
            return (Array(s.connections.keys) + s.seeds + s.slots.compactMap { $0 }).filter { seen.insert($0).inserted }
        }
        var lastError: Error = RESPError.notConnected
        for node in candidates {
            do {
                let reply = try await connection(to: node).send(RESPCommand("CLUSTER", "SLOTS"), timeout: nil)
                var slots = [Node?](repeating: nil, count: RESPClusterSlot.count)
                for range in try reply.expectArray("CLUSTER SLOTS") {
                    let r = try range.expectArray("CLUSTER SLOTS range")
                    guard r.count >= 3, let start = r[0].int, let end = r[1].int,
                        let primary = r[2].array, primary.count >= 2, let port = primary[1].int, Node.ports.contains(port),
                        start >= 0, end < RESPClusterSlot.count, start <= end
                    else { throw RESPError.unexpectedReply("CLUSTER SLOTS: \(range)") }
                    var host = primary[0].string ?? ""
                    if host.isEmpty || host == "?" { host = node.host }
                    for slot in start...end { slots[slot] = Node(host: host, port: port) }
                }
                state.withLockedValue { $0.slots = slots }
                return
            } catch {
                lastError = error
                dropConnection(to: node)
            }
        }
        throw lastError
    }

    /// The node currently believed to own `slot`.
    public func node(forSlot slot: Int) -> Node? { state.withLockedValue { $0.slots[slot] } }

    /// Testing hook: overrides one slot owner.
    func setNode(_ node: Node, forSlot slot: Int) { state.withLockedValue { $0.slots[slot] = node } }

    /// Returns (creating if needed) the shared connection to `node`.
    public func connection(to node: Node) async throws -> RESPConnection {
        let task: Task<RESPConnection, Error> = try state.withLockedValue { s in
            if s.shutdown { throw RESPError.shutdown }
            if let t = s.connections[node] { return t }
            var cfg = configuration
            cfg.host = node.host
            cfg.port = node.port
            let group = eventLoopGroup
            let logger = logger
            let t = Task { try await RESPConnection.connect(configuration: cfg, eventLoopGroup: group, logger: logger) }
            s.connections[node] = t
            return t
        }
        do {
            let conn = try await task.value
            if conn.isActive { return conn }
            dropConnection(to: node, ifTask: task)
            return try await connection(to: node)
        } catch {
            dropConnection(to: node, ifTask: task)
            throw error
        }
    }

    private func dropConnection(to node: Node, ifTask task: Task<RESPConnection, Error>? = nil) {
        state.withLockedValue { s in
            if task == nil || s.connections[node] == task { s.connections[node] = nil }
        }
    }

    public func send(_ command: RESPCommand, timeout: Duration?) async throws -> RESPValue {
        let slot = RESPClusterSlot.routingKey(command).map(RESPClusterSlot.slot(for:))
        return try await send(command, slot: slot, timeout: timeout)
    }

    /// Sends with explicit routing by `key`.
    public func send(_ command: RESPCommand, routingKey key: String, timeout: Duration? = nil) async throws -> RESPValue {
        try await send(command, slot: RESPClusterSlot.slot(for: key), timeout: timeout)
    }

    /// Loads on the node owning `keys.first` (any node when there are no keys).
    public func scriptLoad(_ source: String, keys: [String], timeout: Duration?) async throws -> RESPValue {
        try await send(
            RESPCommand("SCRIPT", "LOAD", .string(source)), slot: keys.first.map { RESPClusterSlot.slot(for: $0) },
            timeout: timeout)
    }

    /// Replies that mean "not now": the cluster is reconfiguring, or the node is starting.
    static let retriedErrors: Set<String> = ["TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN"]

    private func send(_ command: RESPCommand, slot: Int?, timeout: Duration?) async throws -> RESPValue {
        var target = self.owner(of: slot)
        var asking = false
        var redirects = 0
        var retries = 0
        // "Not now" (a failover in progress, a node unreachable) is retried for a time, not a
        // count: with full coverage required, every shard answers CLUSTERDOWN until the replica
        // is promoted, which takes about the cluster's node timeout.
        let deadline = ContinuousClock.now + retryBudget
        var lastError: any Error = RESPError.unexpectedReply("too many cluster redirects for \(command.name)")
        func backOff(_ error: any Error) async throws {
            lastError = error
            guard ContinuousClock.now < deadline else { throw error }
            let delay = retryPolicy.delay(attempt: retries)
            retries += 1
            try await Task.sleep(for: min(delay, max(.zero, deadline - ContinuousClock.now)))
        }
        while redirects <= maxRedirects {
            if redirects + retries > 0, !asking, Task.isCancelled { throw CancellationError() }
            guard let node = target else {
                try await refreshSlots()
                target = self.owner(of: slot)
                if target == nil { throw RESPError.unexpectedReply("no node serves slot \(slot ?? -1)") }
                continue
            }
            do {
                let conn = try await connection(to: node)
                if asking {
                    // ASKING and the command back to back on the same connection.
                    let askPromise = conn.enqueue(RESPCommand("ASKING"))
                    let cmdPromise = conn.enqueue(command)
                    _ = try? await RESPConnection.wait(askPromise, timeout: timeout ?? configuration.commandTimeout)
                    asking = false
                    return try await RESPConnection.wait(cmdPromise, timeout: timeout ?? configuration.commandTimeout)
                }
                return try await conn.send(command, timeout: timeout)
            } catch RESPError.server(let code, let message) where code == "MOVED" || code == "ASK" {
                guard let (movedSlot, newNode) = Self.redirect(message, from: node) else {
                    throw RESPError.server(code: code, message: message)
                }
                if code == "MOVED" {
                    state.withLockedValue { $0.slots[movedSlot] = newNode }
                    triggerBackgroundRefresh()
                } else {
                    asking = true
                }
                redirects += 1
                target = newNode
            } catch RESPError.server(let code, let message) where Self.retriedErrors.contains(code) {
                try await backOff(RESPError.server(code: code, message: message))
                // While a slot migrates, a multi-key command goes ASK → TRYAGAIN → ASK … until it
                // ends: the time budget bounds that, not the count of redirects.
                redirects = 0
                if code == "CLUSTERDOWN" || code == "MASTERDOWN" { try? await refreshSlots() }
                target = self.owner(of: slot)
            } catch let error as RESPError where error != .notConnected {
                // A real answer, the caller's own limit, or a connection lost while the command
                // was in flight (it may have run): no retry.
                throw error
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                // The command was not sent: the node is unreachable, or its connection had
                // closed. The map may be stale (a failover promoted a replica): refresh, back
                // off, retry.
                dropConnection(to: node)
                try await backOff(error)
                try? await refreshSlots()
                target = self.owner(of: slot)
            }
        }
        throw lastError
    }

    private func owner(of slot: Int?) -> Node? {
        state.withLockedValue { s in
            if let slot { return s.slots[slot] }
            return s.slots.first { $0 != nil } ?? s.seeds.first
        }
    }

    /// Parses "<slot> <host>:<port>" of a MOVED or ASK reply.
    static func redirect(_ message: String, from node: Node) -> (Int, Node)? {
        let parts = message.split(separator: " ")
        // Out-of-range numbers from a broken or hostile server are a protocol error, not a trap.
        guard parts.count == 2, let slot = Int(parts[0]), (0..<RESPClusterSlot.count).contains(slot),
            let colon = parts[1].lastIndex(of: ":"),
            let port = Int(parts[1][parts[1].index(after: colon)...]), Node.ports.contains(port)
        else { return nil }
        let host = String(parts[1][..<colon])
        return (slot, Node(host: host.isEmpty ? node.host : host, port: port))
    }

    private func triggerBackgroundRefresh() {
        let start = state.withLockedValue { s -> Bool in
            if s.refreshing || s.shutdown { return false }
            s.refreshing = true
            return true
        }
        guard start else { return }
        Task {
            try? await self.refreshSlots()
            self.state.withLockedValue { $0.refreshing = false }
        }
    }

    public func close() async {
        let tasks = state.withLockedValue { s -> [Task<RESPConnection, Error>] in
            s.shutdown = true
            s.refresher?.cancel()
            let t = Array(s.connections.values)
            s.connections = [:]
            return t
        }
        for t in tasks { if let c = try? await t.value { await c.close() } }
    }
}
