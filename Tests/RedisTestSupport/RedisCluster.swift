import Foundation
import NIOCore
import RESP

/// A real Redis Cluster of `masters` redis-server processes on loopback, each with `replicas`
/// replicas, with the slots split evenly. Nodes can be killed and restarted (they keep their
/// node id and slots through their nodes.conf), slots migrated the way `redis-cli --cluster`
/// does, and a master failed over to its replica by killing it.
public final class RedisCluster: @unchecked Sendable {
    /// Masters first, then their replicas (replica `i` of master `m` at `masters + m * replicas + i`).
    public let servers: [RedisServer]
    public let masters: Int
    public let directory: String

    public var seeds: [RESPClusterClient.Node] { self.servers.map { .init(host: "127.0.0.1", port: $0.port) } }
    public var configuration: RESPConfiguration { self.servers[0].configuration }

    public init(masters: Int = 3, replicas: Int = 0, extraArgs: [String] = []) async throws {
        self.directory = NSTemporaryDirectory() + "redis-cluster-\(UUID().uuidString)"
        self.masters = masters
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        var servers: [RedisServer] = []
        do {
            for i in 0..<(masters * (1 + replicas)) {
                let port = try await freePort()
                let busPort = try await freePort()
                servers.append(
                    try await RedisServer(
                        port: port,
                        extraArgs: [
                            "--cluster-enabled", "yes", "--cluster-config-file", "nodes-\(i)-\(port).conf", "--cluster-port", String(busPort),
                            "--dir", self.directory, "--cluster-node-timeout", "3000", "--cluster-require-full-coverage", "yes",
                        ] + extraArgs))
            }
            self.servers = servers
            try await self.form(replicas: replicas)
        } catch {
            for s in servers { s.stop() }
            try? FileManager.default.removeItem(atPath: self.directory)
            throw error
        }
    }

    /// Splits the slots, introduces the nodes to each other, makes the replicas replicate their
    /// masters, and waits until the cluster is ok.
    private func form(replicas: Int) async throws {
        let count = self.masters
        let first = try await self.connect(self.servers[0])
        defer { Task { await first.close() } }
        for (i, server) in self.servers.enumerated() {
            if i < count {
                let c = try await self.connect(server)
                _ = try await c.send(
                    "CLUSTER", "ADDSLOTSRANGE", .int(i * RESPClusterSlot.count / count),
                    .int((i + 1) * RESPClusterSlot.count / count - 1))
                await c.close()
            }
            if i > 0 {
                let bus = Int(server.extraArgs[server.extraArgs.firstIndex(of: "--cluster-port")! + 1])!
                _ = try await first.send("CLUSTER", "MEET", "127.0.0.1", .int(server.port), .int(bus))
            }
        }
        guard try await self.waitUntilOK() else { throw RESPError.unexpectedReply("cluster did not reach cluster_state:ok") }
        guard replicas > 0 else { return }
        for m in 0..<count {
            let master = try await self.connect(self.servers[m])
            let id = try await master.send("CLUSTER", "MYID").string!
            await master.close()
            for r in 0..<replicas {
                let replica = try await self.connect(self.servers[count + m * replicas + r])
                // The replica must know its master before it can replicate it.
                _ = try await eventually { (try? await replica.send("CLUSTER", "REPLICATE", .string(id)).string) == "OK" }
                await replica.close()
            }
        }
        // Every replica in sync with its master.
        guard
            try await eventually(
                timeout: .seconds(30),
                {
                    for server in self.servers[count...] {
                        guard let c = try? await self.connect(server) else { return false }
                        defer { Task { await c.close() } }
                        guard let info = try? await c.send("INFO", "replication").string, info.contains("master_link_status:up") else { return false }
                    }
                    return true
                })
        else { throw RESPError.unexpectedReply("replicas did not sync") }
    }

    /// The replicas of the master `server` (by its place in `servers`).
    public func replicas(of server: RedisServer) -> [RedisServer] {
        guard let m = self.servers.firstIndex(where: { $0 === server }), m < self.masters else { return [] }
        let per = (self.servers.count - self.masters) / self.masters
        return Array(self.servers[(self.masters + m * per)..<(self.masters + (m + 1) * per)])
    }

    /// Waits until every running node reports `cluster_state:ok` and knows every node and slot.
    @discardableResult
    public func waitUntilOK(timeout: Duration = .seconds(30)) async throws -> Bool {
        try await eventually(timeout: timeout) {
            for server in self.servers where server.isRunning {
                guard let c = try? await self.connect(server) else { return false }
                defer { Task { await c.close() } }
                guard let info = try? await c.send("CLUSTER", "INFO").string, info.contains("cluster_state:ok"),
                    info.contains("cluster_known_nodes:\(self.servers.count)"), info.contains("cluster_slots_assigned:16384")
                else { return false }
            }
            return true
        }
    }

    public func connect(_ server: RedisServer) async throws -> RESPConnection {
        try await RESPConnection.connect(configuration: server.configuration)
    }

    public func server(owning slot: Int) async throws -> RedisServer {
        for server in self.servers where server.isRunning {
            let c = try await self.connect(server)
            defer { Task { await c.close() } }
            for range in try await c.send("CLUSTER", "SLOTS").array ?? [] {
                guard let r = range.array, let start = r[0].int, let end = r[1].int, (start...end).contains(slot),
                    let port = r[2].array?[1].int
                else { continue }
                return self.servers.first { $0.port == port }!
            }
        }
        throw RESPError.unexpectedReply("no node owns slot \(slot)")
    }

    /// A migration under way: the slot's owner is MIGRATING it to `target` (another node when
    /// nil), which is IMPORTING it. The connections are the caller's to close.
    public struct Migration {
        public let source: RedisServer, target: RedisServer
        public let sourceConnection: RESPConnection, targetConnection: RESPConnection
        public let targetID: String
    }

    public func beginMigration(slot: Int, to target: RedisServer? = nil) async throws -> Migration {
        let source = try await self.server(owning: slot)
        let target = target ?? self.servers.first { $0 !== source && $0.isRunning }!
        let src = try await self.connect(source)
        let dst = try await self.connect(target)
        let srcID = try await src.send("CLUSTER", "MYID").string!
        let dstID = try await dst.send("CLUSTER", "MYID").string!
        _ = try await dst.send("CLUSTER", "SETSLOT", .int(slot), "IMPORTING", .string(srcID))
        _ = try await src.send("CLUSTER", "SETSLOT", .int(slot), "MIGRATING", .string(dstID))
        return Migration(source: source, target: target, sourceConnection: src, targetConnection: dst, targetID: dstID)
    }

    /// Moves `slot` (and its keys) from its owner to `target`, as `redis-cli --cluster reshard` does.
    public func migrate(slot: Int, to target: RedisServer) async throws {
        guard try await self.server(owning: slot) !== target else { return }
        let migration = try await self.beginMigration(slot: slot, to: target)
        let (source, src, dst, dstID) = (migration.source, migration.sourceConnection, migration.targetConnection, migration.targetID)
        defer {
            Task {
                await src.close()
                await dst.close()
            }
        }
        while true {
            let keys = try await src.send("CLUSTER", "GETKEYSINSLOT", .int(slot), 100).array ?? []
            if keys.isEmpty { break }
            var migrate = RESPCommand("MIGRATE", "127.0.0.1", .int(target.port), "", 0, 5000, "KEYS")
            migrate.append(contentsOf: keys.compactMap { $0.string.map { RESPArgument.string($0) } })
            _ = try await src.send(migrate)
        }
        // Target first, then source, then the others (the order redis-cli uses).
        _ = try await dst.send("CLUSTER", "SETSLOT", .int(slot), "NODE", .string(dstID))
        _ = try await src.send("CLUSTER", "SETSLOT", .int(slot), "NODE", .string(dstID))
        for server in self.servers where server.isRunning && server !== source && server !== target {
            let c = try await self.connect(server)
            _ = try await c.send("CLUSTER", "SETSLOT", .int(slot), "NODE", .string(dstID))
            await c.close()
        }
    }

    public func stop() {
        for server in self.servers { server.stop() }
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    deinit { self.stop() }
}

/// Runs `body` with a fresh cluster and always stops it afterwards.
public func withRedisCluster<T>(masters: Int = 3, replicas: Int = 0, _ body: (RedisCluster) async throws -> T) async throws -> T {
    let cluster = try await RedisCluster(masters: masters, replicas: replicas)
    defer { cluster.stop() }
    return try await body(cluster)
}
