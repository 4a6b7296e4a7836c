import Foundation
import RESP
import RedisTestSupport
import Testing

/// What idle connections cost Redis: nothing per connection per second. 10,000 anonymous
/// connections spread over three nodes, measured with the load tool (`switchboard bench idle
/// --redis-stats`, Redis's own command counters) once their subscriptions left the live check's
/// watch: at most 100 commands a second in all (0.01 per connection).
@Suite("Idle cost in Redis", .serialized, .timeLimit(.minutes(5)))
struct IdleCostTests {
    static let connections = 10_000

    /// Runs `switchboard bench idle` against `nodes`; returns Redis commands per second.
    static func idleCommandRate(nodes: [NodeProcess], redis: [String]) throws -> Double {
        let bench = Process()
        bench.executableURL = URL(fileURLWithPath: NodeProcess.binary)
        // Three rounds of the live check (15 s) watch new subscriptions; then they idle.
        bench.arguments = [
            "bench", "idle", "--url", nodes.map(\.url).joined(separator: ","), "--connections", String(Self.connections),
            "--processes", "4", "--settle", "17", "--measure", "10", "--redis-stats", redis.joined(separator: ","),
        ]
        let pipe = Pipe()
        bench.standardOutput = pipe
        bench.standardError = FileHandle.nullDevice
        try bench.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        bench.waitUntilExit()
        print(output)
        guard let line = output.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
            let json = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Double],
            let rate = json["redisCommandsPerSecond"], json["connections"] == Double(Self.connections)
        else { throw ClusterTestFailure("bench idle failed: \(output)") }
        return rate
    }

    @Test func tenThousandIdleConnectionsOnASingleRedis() async throws {
        try await ClusterTests.withNodes(3, extra: ["--allow-anonymous"]) { redis, nodes in
            let rate = try Self.idleCommandRate(nodes: nodes, redis: ["127.0.0.1:\(redis.port)"])
            #expect(rate <= 100, "\(rate) commands/s for \(Self.connections) idle connections")
        }
    }

    @Test func tenThousandIdleConnectionsOnARedisCluster() async throws {
        try await withRedisCluster(masters: 3) { cluster in
            let seeds = "redis://" + cluster.seeds.map { "\($0.host):\($0.port)" }.joined(separator: ",")
            var nodes: [NodeProcess] = []
            defer { for node in nodes { node.kill() } }
            for i in 0..<3 { nodes.append(try await NodeProcess(id: "idle\(i)", redis: seeds, cluster: true, extra: ["--allow-anonymous"])) }
            let rate = try Self.idleCommandRate(nodes: nodes, redis: cluster.servers.map { "127.0.0.1:\($0.port)" })
            #expect(rate <= 100, "\(rate) commands/s for \(Self.connections) idle connections")
        }
    }
}
