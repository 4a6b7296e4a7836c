import ArgumentParser
import Foundation
import NIOCore
import RESP

extension Bench {
    /// `switchboard bench redis`: the RESP client's throughput, comparable with
    /// `redis-benchmark -P <pipeline> -c <clients> -n <requests> -t set,get,publish`.
    struct RedisClient: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "redis",
            abstract: "RESP client throughput: pipelined SET, GET and PUBLISH against a Redis server."
        )
        @Option(help: "Redis host.") var host = "127.0.0.1"
        @Option(help: "Redis port.") var port = 6379
        @Option(help: "Commands per test.") var requests = 1_000_000
        @Option(help: "Concurrent callers (like redis-benchmark -c).") var clients = 50
        @Option(help: "Commands per batch from one caller (like redis-benchmark -P); 1 sends one command at a time.") var pipeline = 16
        @Option(help: "Connections the callers are spread over.") var connections = 1
        @Option(help: "Payload size in bytes (like redis-benchmark -d).") var size = 3
        @Option(help: "Comma-separated: set,get,publish.") var tests = "set,get,publish"
        @Option(help: "Distinct keys (like redis-benchmark -r); 0 uses one key, as redis-benchmark does without -r.") var keyspace = 0

        func key(_ i: Int) -> String { self.keyspace > 0 ? "key:\(i % self.keyspace)" : "key:__rand_int__" }

        func run() async throws {
            var pool: [RESPConnection] = []
            for _ in 0..<self.connections {
                pool.append(try await RESPConnection.connect(configuration: RESPConfiguration(host: self.host, port: self.port)))
            }
            let payload = ByteBuffer(repeating: UInt8(ascii: "x"), count: self.size)
            var results: [String: Double] = [:]
            for test in self.tests.split(separator: ",").map(String.init) {
                let make: @Sendable (Int) -> RESPCommand
                switch test {
                case "set": make = { i in RESPCommand("SET", .string(self.key(i)), .bytes(payload)) }
                case "get": make = { i in RESPCommand("GET", .string(self.key(i))) }
                case "publish": make = { _ in RESPCommand("PUBLISH", .string("bench"), .bytes(payload)) }
                default: throw ValidationError("unknown test \(test)")
                }
                let rate = try await self.measure(pool: pool, make: make)
                results[test] = rate
                print(String(format: "%@: %.0f requests per second", test.uppercased(), rate))
            }
            for connection in pool { await connection.close() }
            print(String(data: try JSONSerialization.data(withJSONObject: results, options: [.sortedKeys]), encoding: .utf8)!)
        }

        /// Runs `requests` commands from `clients` callers; returns commands per second.
        func measure(pool: [RESPConnection], make: @escaping @Sendable (Int) -> RESPCommand) async throws -> Double {
            let perClient = self.requests / self.clients
            let batch = self.pipeline
            let start = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for client in 0..<self.clients {
                    let connection = pool[client % pool.count]
                    group.addTask {
                        var sent = 0
                        while sent < perClient {
                            let n = min(batch, perClient - sent)
                            if n == 1 {
                                _ = try await connection.send(make(client &* perClient &+ sent), timeout: nil)
                            } else {
                                let commands = (0..<n).map { make(client &* perClient &+ sent &+ $0) }
                                for reply in try await connection.pipeline(commands) { _ = try reply.get() }
                            }
                            sent += n
                        }
                    }
                }
                try await group.waitForAll()
            }
            let elapsed = ContinuousClock.now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            return Double(perClient * self.clients) / seconds
        }
    }
}

/// Redis's own count of the commands it ran (`INFO commandstats`), for "commands per message".
struct RedisCommandStats {
    let connection: RESPConnection

    static func connect(_ address: String) async throws -> RedisCommandStats {
        let parts = address.split(separator: ":")
        let configuration = RESPConfiguration(host: String(parts[0]), port: parts.count > 1 ? Int(parts[1]) ?? 6379 : 6379)
        return RedisCommandStats(connection: try await RESPConnection.connect(configuration: configuration))
    }

    func reset() async throws {
        _ = try await self.connection.send(RESPCommand("CONFIG", "RESETSTAT"))
    }

    /// Calls per command since the last reset (without this tool's own INFO/CONFIG).
    func calls() async throws -> [String: Int] {
        let info = try await self.connection.send(RESPCommand("INFO", "commandstats")).string ?? ""
        var out: [String: Int] = [:]
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            let name = line.dropFirst("cmdstat_".count).prefix { $0 != ":" }
            // cmdstat_evalsha:calls=150,usec=…,rejected_calls=0,failed_calls=0
            guard name != "info", name != "config", let fields = line.split(separator: ":").last?.split(separator: ","),
                let calls = fields.first(where: { $0.hasPrefix("calls=") })?.dropFirst("calls=".count), let n = Int(calls)
            else { continue }
            out[String(name)] = n
        }
        return out
    }
}
