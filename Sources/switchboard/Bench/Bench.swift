import ArgumentParser
import Foundation
import Histogram
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// `switchboard bench`: the load tool for sizing a deployment. Client connections are
/// spread over worker processes (and loopback source addresses), because one process
/// may hold at most ~20,000 open files.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load tool: idle connections (memory per connection) and fan-out (throughput, latency, CPU).",
        subcommands: [Idle.self, Fanout.self, Bridge.self, Worker.self, RedisClient.self]
    )

    struct Common: ParsableArguments {
        @Option(help: "Gateway WebSocket URL (node started with --allow-anonymous); several, comma-separated, spread the workers over nodes.")
        var url = "ws://127.0.0.1:8080/ws"
        @Option(name: .customLong("server-pid"), help: "Gateway process id, to read its memory and CPU from /proc.") var serverPID: Int32?
        @Option(help: "Worker processes holding the client connections.") var processes = 4

        var urls: [String] { self.url.split(separator: ",").map(String.init) }

        var endpoint: (host: String, port: Int, path: String) { Self.endpoint(self.urls[0]) }

        static func endpoint(_ url: String) -> (host: String, port: Int, path: String) {
            let rest = url.replacingOccurrences(of: "ws://", with: "")
            let slash = rest.firstIndex(of: "/") ?? rest.endIndex
            let hostPort = rest[..<slash].split(separator: ":")
            return (String(hostPort[0]), hostPort.count > 1 ? Int(hostPort[1]) ?? 80 : 80, slash == rest.endIndex ? "/" : String(rest[slash...]))
        }
    }

    struct Idle: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Open N idle connections and report the server's memory per connection.")
        @OptionGroup var common: Common
        @Option(help: "Connections in total.") var connections = 15000
        @Option(help: "Seconds to hold the connections before measuring.") var settle: Double = 3
        @Option(
            name: .customLong("redis-stats"),
            help:
                "host:port of the nodes' Redis (comma-separated: every master of a cluster): count the commands it runs per second while the connections idle (INFO commandstats)."
        ) var redisStats: String?
        @Option(help: "Seconds over which the idle Redis commands are counted (with --redis-stats).") var measure: Double = 10

        func run() async throws {
            let before = try common.serverPID.map { try ProcStat.read(pid: $0) }
            let workers = try WorkerPool.start(common: common, mode: "idle", total: connections, extra: [])
            let opened = try await workers.waitReady { done in
                FileHandle.standardError.write(Data("\ropened \(done)/\(connections)".utf8))
            }
            FileHandle.standardError.write(Data("\n".utf8))
            try await Task.sleep(for: .seconds(settle))
            let after = try common.serverPID.map { try ProcStat.read(pid: $0) }
            var summary: [String: Double] = ["connections": Double(opened)]
            if let redisStats {
                // Every command the Redis servers run while nothing happens but idle connections.
                var servers: [RedisCommandStats] = []
                for address in redisStats.split(separator: ",") { servers.append(try await RedisCommandStats.connect(String(address))) }
                for server in servers { try await server.reset() }
                try await Task.sleep(for: .seconds(measure))
                var calls: [String: Int] = [:]
                for server in servers { calls.merge(try await server.calls(), uniquingKeysWith: +) }
                let total = Double(calls.values.reduce(0, +))
                summary["redisCommandsPerSecond"] = total / measure
                let shown = calls.sorted { $0.key < $1.key }.map { String(format: "%@ %.1f/s", $0.key, Double($0.value) / measure) }.joined(
                    separator: ", ")
                print(String(format: "Redis: %.1f commands per second for %d idle connections (%@)", total / measure, opened, shown))
            }
            workers.finish()
            let refused = try await workers.results().reduce(into: [String: Int]()) { $0.merge($1.refused, uniquingKeysWith: +) }
            if !refused.isEmpty {
                summary["refusedAttempts"] = Double(refused.values.reduce(0, +))
                print("opening attempts refused, then retried: \(refused)")
            }
            if let before, let after {
                let delta = Double(after.rssBytes - before.rssBytes)
                summary["serverRSSBeforeKiB"] = Double(before.rssBytes) / 1024
                summary["serverRSSAfterKiB"] = Double(after.rssBytes) / 1024
                summary["bytesPerConnection"] = delta / Double(max(opened, 1))
                print(
                    String(
                        format: "server memory: %.1f KiB per idle connection (%d connections, RSS %.1f → %.1f MiB)",
                        delta / Double(max(opened, 1)) / 1024, opened, Double(before.rssBytes) / 1_048_576, Double(after.rssBytes) / 1_048_576))
            }
            print(String(data: try JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys]), encoding: .utf8)!)
        }
    }

    struct Fanout: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "N subscribers on one stream, one publisher; reports deliveries/s, latency and server CPU.")
        @OptionGroup var common: Common
        @Option(help: "Subscribers in total.") var subscribers = 1000
        @Option(help: "Messages per second from the publisher; 0 = flat out.") var rate: Double = 0
        @Option(help: "Seconds to publish.") var duration: Double = 10
        @Option(help: "Message body size in bytes.") var size = 100
        @Option(help: "Publishes in flight when flat out.") var window = 32
        @Option(help: "Stream to use.") var stream = "/streams/bench"
        @Option(
            name: .customLong("publish-url"),
            help: "Node the publisher connects to (default: the first --url), e.g. another node to measure cross-node delivery.") var publishURL:
            String?
        @Option(name: .customLong("server-pids"), help: "All nodes' process ids (comma-separated), to add up their CPU.") var serverPIDs: String?
        @Option(
            name: .customLong("redis-stats"), help: "host:port of the nodes' Redis: count its commands per published message (INFO commandstats).")
        var redisStats: String?

        func run() async throws {
            let workers = try WorkerPool.start(common: common, mode: "fanout", total: subscribers, extra: ["--stream", stream])
            _ = try await workers.waitReady { done in
                FileHandle.standardError.write(Data("\rsubscribed \(done)/\(subscribers)".utf8))
            }
            FileHandle.standardError.write(Data("\n".utf8))
            let endpoint = publishURL.map(Common.endpoint) ?? common.endpoint
            let publisher = try await Publisher.connect(host: endpoint.host, port: endpoint.port, path: endpoint.path)
            let pids = (serverPIDs?.split(separator: ",").compactMap { Int32($0) } ?? []) + (common.serverPID.map { [$0] } ?? [])
            var redis: RedisCommandStats?
            if let redisStats { redis = try await RedisCommandStats.connect(redisStats) }
            try await redis?.reset()
            let before = try pids.isEmpty ? nil : ProcStat.total(pids)
            let start = ContinuousClock.now
            let sent = try await publisher.run(stream: stream, rate: rate, duration: duration, size: size, window: window) { n in
                FileHandle.standardError.write(Data("\rpublished \(n)".utf8))
            }
            let elapsed = (ContinuousClock.now - start).seconds
            FileHandle.standardError.write(Data("\n".utf8))
            // Let queued deliveries arrive (until all did, or none arrived for a while).
            try await workers.waitDelivered(UInt64(sent * subscribers))
            let after = try pids.isEmpty ? nil : ProcStat.total(pids)
            let commands = try await redis?.calls()
            workers.finish()
            var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
            var delivered: UInt64 = 0
            var closes: [String: Int] = [:]
            var refused: [String: Int] = [:]
            for result in try await workers.results() {
                delivered += result.received
                if let h = result.histogram { histogram.add(h) }
                closes.merge(result.closes, uniquingKeysWith: +)
                refused.merge(result.refused, uniquingKeysWith: +)
            }
            var summary: [String: Double] = [
                "subscribers": Double(subscribers), "published": Double(sent), "delivered": Double(delivered),
                "seconds": elapsed, "deliveriesPerSecond": Double(delivered) / elapsed,
                "expectedDeliveries": Double(sent * subscribers),
                "latencyP50Micros": Double(histogram.valueAtPercentile(50)), "latencyP99Micros": Double(histogram.valueAtPercentile(99)),
                "latencyP999Micros": Double(histogram.valueAtPercentile(99.9)), "latencyMaxMicros": Double(histogram.max),
                "closedConnections": Double(closes.values.reduce(0, +)),
            ]
            if let commands {
                let perMessage = commands.mapValues { Double($0) / Double(max(sent, 1)) }.filter { $0.value >= 0.001 }
                for (name, value) in perMessage { summary["redisCallsPerPublish_" + name] = value }
                let shown = perMessage.sorted { $0.key < $1.key }.map { String(format: "%@ %.3f", $0.key, $0.value) }.joined(separator: ", ")
                FileHandle.standardError.write(Data("Redis commands per published message: \(shown)\n".utf8))
            }
            if !refused.isEmpty {
                FileHandle.standardError.write(Data("opening attempts refused, then retried: \(refused)\n".utf8))
            }
            if !closes.isEmpty {
                FileHandle.standardError.write(Data("connections closed by the server during the run: \(closes)\n".utf8))
            }
            if let before, let after {
                let cpu = after.cpuSeconds - before.cpuSeconds
                summary["serverCPUSeconds"] = cpu
                summary["serverCPUMicrosPerDelivery"] = cpu * 1e6 / Double(max(delivered, 1))
            }
            print(
                String(
                    format: "delivered %llu of %llu (%.0f/s); latency p50 %llu µs p99 %llu µs p99.9 %llu µs; server CPU %.3f µs per delivery",
                    delivered, UInt64(sent * subscribers), Double(delivered) / elapsed, histogram.valueAtPercentile(50),
                    histogram.valueAtPercentile(99),
                    histogram.valueAtPercentile(99.9), summary["serverCPUMicrosPerDelivery"] ?? -1))
            print(String(data: try JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys]), encoding: .utf8)!)
        }
    }

    /// One worker process: opens its share of connections; prints `PROGRESS n`, `READY n`,
    /// and, when its stdin closes, `RESULT {json}`.
    struct Worker: AsyncParsableCommand {
        static let configuration = CommandConfiguration(shouldDisplay: false)
        @OptionGroup var common: Common
        @Option var mode: String
        @Option var count: Int
        @Option var source: String?
        @Option var stream = "/streams/bench"
        /// Tries to open each connection at most this many times.
        static let rounds = 5

        func run() async throws {
            let endpoint = common.endpoint
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let state = NIOLockedValueBox(WorkerState())
            let subscribeFrame = ByteBuffer(string: "SUB|\(stream)|r=1|")
            let fanout = mode == "fanout"
            let open = { @Sendable () -> EventLoopFuture<BenchConnection> in
                BenchConnection.connect(host: endpoint.host, port: endpoint.port, path: endpoint.path, source: source, group: group) { c in
                    c.onOpen = {
                        if fanout { c.sendText(subscribeFrame) } else { state.withLockedValue { $0.ready += 1 } }
                    }
                    c.onClose = { code in
                        state.withLockedValue { $0.closes[code.map(String.init) ?? "no close frame", default: 0] += 1 }
                    }
                    c.onText = { text in
                        guard fanout else { return }
                        let now = NIODeadline.now().uptimeNanoseconds
                        if text.readableBytesView.starts(with: Array("PUSH200|".utf8)) {
                            // Body starts with the publish time in uptime nanoseconds.
                            let view = text.readableBytesView
                            guard let bodyStart = Self.bodyStart(view) else { return }
                            var sentAt: UInt64 = 0
                            for b in view[bodyStart...] {
                                guard b >= 48 && b <= 57 else { break }
                                sentAt = sentAt * 10 + UInt64(b - 48)
                            }
                            state.withLockedValue {
                                $0.received += 1
                                _ = $0.histogram.record(now > sentAt ? (now - sentAt) / 1000 : 0)
                            }
                        } else if text.readableBytesView.starts(with: Array("SUB200|".utf8)), String(buffer: text).contains("r=1") {
                            state.withLockedValue { $0.ready += 1 }
                        }
                    }
                }
            }
            // Open in rounds, as a client would: what was refused (429 while the node admits a
            // burst, 503, a reset) is retried a second later, a few times, and reported.
            var opened = 0
            var remaining = count
            for round in 0..<Self.rounds where remaining > 0 {
                if round > 0 { try await Task.sleep(for: .seconds(1)) }
                var refused = 0
                var pending: [EventLoopFuture<BenchConnection>] = []
                for i in 0..<remaining {
                    pending.append(open())
                    // Do not open thousands at once: keep a bounded number of handshakes in flight.
                    guard pending.count >= 200 || i == remaining - 1 else { continue }
                    for f in pending {
                        do {
                            _ = try await f.get()
                            opened += 1
                        } catch {
                            refused += 1
                            state.withLockedValue { $0.refused["\(error)", default: 0] += 1 }
                        }
                    }
                    pending.removeAll()
                    print("PROGRESS \(state.withLockedValue { $0.ready })")
                    fflush(nil)
                }
                remaining = refused
            }
            // Wait for the handshakes (and subscriptions) to complete.
            let deadline = ContinuousClock.now + .seconds(30)
            while state.withLockedValue({ $0.ready }) < opened, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            print("READY \(state.withLockedValue { $0.ready })")
            fflush(nil)
            // Report deliveries while the run lasts, so the parent sees when they stop.
            let reporter = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(200))
                    print("RECEIVED \(state.withLockedValue { $0.received })")
                    fflush(nil)
                }
            }
            // Hold until the parent closes our stdin.
            await Task.detached { while let _ = readLine() {} }.value
            reporter.cancel()
            let result = state.withLockedValue {
                WorkerResult(received: $0.received, histogram: fanout ? $0.histogram : nil, closes: $0.closes, refused: $0.refused)
            }
            let json = try JSONEncoder().encode(result)
            print("RESULT " + String(decoding: json, as: UTF8.self))
            fflush(nil)
            try? await group.shutdownGracefully()
        }

        static func bodyStart(_ view: ByteBufferView) -> ByteBufferView.Index? {
            var seen = 0
            for i in view.indices where view[i] == UInt8(ascii: "|") {
                seen += 1
                if seen == 3 { return view.index(after: i) }
            }
            return nil
        }
    }
}

struct WorkerState {
    var ready = 0
    var received: UInt64 = 0
    /// Connections the server closed during the run, by close code.
    var closes: [String: Int] = [:]
    /// Opening attempts the server refused or failed, by reason (retried up to `rounds` times).
    var refused: [String: Int] = [:]
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
}

struct WorkerResult: Codable {
    var received: UInt64
    var histogram: Histogram<UInt64>?
    var closes: [String: Int]
    var refused: [String: Int]
}

extension Duration {
    var seconds: Double { Double(self.components.seconds) + Double(self.components.attoseconds) / 1e18 }
}
