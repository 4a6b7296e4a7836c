import ArgumentParser
import Foundation
import Histogram
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

extension Bench {
    /// The backend bridge's cost: the same request answered by the backend through the gateway
    /// (a WebSocket request frame) and sent straight to the backend (HTTP/1.1 keep-alive), from
    /// this one process, in alternating rounds of one run.
    struct Bridge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Requests answered by the backend: through the gateway (WebSocket frames) against straight to it (HTTP keep-alive).")
        @Option(help: "Gateway WebSocket URL (node started with --allow-anonymous and --backend).") var url = "ws://127.0.0.1:8080/ws"
        @Option(help: "The backend, straight: host:port.") var backend = "127.0.0.1:3000"
        @Option(help: "Path requested, on both.") var path = "/hello"
        @Option(help: "Connections per side.") var connections = 16
        @Option(help: "Requests in flight per connection.") var window = 4
        @Option(help: "Seconds per round.") var duration: Double = 5
        @Option(help: "Rounds per side, alternating.") var rounds = 3

        func run() async throws {
            let group = MultiThreadedEventLoopGroup.singleton
            let ws = Common.endpoint(url)
            let parts = backend.split(separator: ":")
            guard parts.count == 2, let backendPort = Int(parts[1]) else { throw BenchError("--backend must be host:port") }
            var summary: [String: Double] = [:]
            for side in ["bridged", "direct"] { summary[side + "RequestsPerSecond"] = 0 }
            var histograms: [String: Histogram<UInt64>] = [:]
            var totals: [String: (count: Int, seconds: Double)] = [:]
            for round in 1...rounds {
                for side in ["bridged", "direct"] {
                    let meter = RequestMeter()
                    let clients: [any BridgeClient]
                    if side == "bridged" {
                        clients = try await (0..<connections).asyncMap { _ in
                            try await FrameClient.connect(host: ws.host, port: ws.port, wsPath: ws.path, target: path, meter: meter, group: group)
                        }
                    } else {
                        clients = try await (0..<connections).asyncMap { _ in
                            try await HTTPClientConnection.connect(
                                host: String(parts[0]), port: backendPort, target: path, meter: meter, group: group)
                        }
                    }
                    let start = ContinuousClock.now
                    for client in clients { client.start(window: window) }
                    try await Task.sleep(for: .seconds(duration))
                    for client in clients { client.stop() }
                    let elapsed = (ContinuousClock.now - start).seconds
                    try await Task.sleep(for: .milliseconds(300))
                    for client in clients { client.close() }
                    let (count, histogram, errors) = meter.take()
                    histograms[side, default: Histogram(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)].add(histogram)
                    totals[side, default: (0, 0)].count += count
                    totals[side, default: (0, 0)].seconds += elapsed
                    FileHandle.standardError.write(
                        Data(
                            String(
                                format: "round %d %@: %.0f requests/s, p50 %llu µs, p99 %llu µs%@\n", round, side, Double(count) / elapsed,
                                histogram.valueAtPercentile(50), histogram.valueAtPercentile(99), errors > 0 ? ", \(errors) errors" : ""
                            ).utf8))
                    if errors > 0 { summary[side + "Errors", default: 0] += Double(errors) }
                }
            }
            for side in ["bridged", "direct"] {
                let h = histograms[side]!
                summary[side + "RequestsPerSecond"] = Double(totals[side]!.count) / totals[side]!.seconds
                summary[side + "P50Micros"] = Double(h.valueAtPercentile(50))
                summary[side + "P99Micros"] = Double(h.valueAtPercentile(99))
            }
            summary["addedP50Micros"] = summary["bridgedP50Micros"]! - summary["directP50Micros"]!
            summary["bridgedShareOfDirect"] = summary["bridgedRequestsPerSecond"]! / summary["directRequestsPerSecond"]!
            print(
                String(
                    format:
                        "bridged %.0f/s p50 %.0f µs p99 %.0f µs; direct %.0f/s p50 %.0f µs p99 %.0f µs; bridge adds %.0f µs at p50, reaches %.0f%% of direct",
                    summary["bridgedRequestsPerSecond"]!, summary["bridgedP50Micros"]!, summary["bridgedP99Micros"]!,
                    summary["directRequestsPerSecond"]!, summary["directP50Micros"]!, summary["directP99Micros"]!, summary["addedP50Micros"]!,
                    100 * summary["bridgedShareOfDirect"]!))
            print(String(data: try JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys]), encoding: .utf8)!)
        }
    }
}

/// Counts answered requests and their latency, from every connection's event loop.
final class RequestMeter: Sendable {
    private let state = NIOLockedValueBox(
        (count: 0, errors: 0, histogram: Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)))

    func record(_ started: NIODeadline, ok: Bool) {
        let micros = UInt64(max(0, (NIODeadline.now() - started).nanoseconds / 1000))
        self.state.withLockedValue {
            if ok {
                $0.count += 1
                _ = $0.histogram.record(micros)
            } else {
                $0.errors += 1
            }
        }
    }

    func take() -> (Int, Histogram<UInt64>, Int) {
        self.state.withLockedValue { s in
            let out = (s.count, s.histogram, s.errors)
            s = (0, 0, Histogram(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three))
            return out
        }
    }
}

protocol BridgeClient: Sendable {
    func start(window: Int)
    func stop()
    func close()
}

/// Request frames over one WebSocket, `window` in flight, each answer sending the next.
final class FrameClient: BridgeClient, @unchecked Sendable {
    // Touched on the connection's event loop only.
    private let connection: BenchConnection
    private let target: String
    private let meter: RequestMeter
    private var sent: [UInt64: NIODeadline] = [:]
    private var next: UInt64 = 0
    private var running = false

    private init(connection: BenchConnection, target: String, meter: RequestMeter) {
        self.connection = connection
        self.target = target
        self.meter = meter
    }

    static func connect(
        host: String, port: Int, wsPath: String, target: String, meter: RequestMeter, group: any EventLoopGroup
    ) async throws
        -> FrameClient
    {
        let box = NIOLockedValueBox<FrameClient?>(nil)
        let connection = try await BenchConnection.connect(host: host, port: port, path: wsPath, source: nil, group: group) { c in
            c.onText = { text in box.withLockedValue { $0 }?.received(text) }
        }.get()
        let client = FrameClient(connection: connection, target: target, meter: meter)
        box.withLockedValue { $0 = client }
        return client
    }

    func start(window: Int) {
        self.connection.loop?.execute {
            self.running = true
            for _ in 0..<window { self.send() }
        }
    }

    func stop() { self.connection.loop?.execute { self.running = false } }
    func close() { self.connection.close() }

    private func send() {
        self.next += 1
        self.sent[self.next] = .now()
        self.connection.sendText(ByteBuffer(string: "GET|\(self.target)|r=\(self.next)|"))
    }

    /// `GET200|/hello|r=7|…`: the reply to request 7.
    private func received(_ text: ByteBuffer) {
        let view = text.readableBytesView
        guard view.starts(with: "GET".utf8), let r = view.firstRange(of: "|r=".utf8) else { return }
        let digits = view[r.upperBound...].prefix { $0 >= 48 && $0 <= 57 }
        guard let id = UInt64(String(decoding: digits, as: UTF8.self)), let started = self.sent.removeValue(forKey: id) else { return }
        self.meter.record(started, ok: view.starts(with: "GET200".utf8))
        if self.running { self.send() }
    }
}

/// HTTP/1.1 keep-alive requests on one connection, `window` pipelined, each answer sending the next.
final class HTTPClientConnection: ChannelInboundHandler, BridgeClient, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    // Touched on the channel's event loop only.
    private let target: String
    private let meter: RequestMeter
    private var context: ChannelHandlerContext?
    private var buffer = ByteBuffer()
    private var sent: [NIODeadline] = []
    private var running = false

    private init(target: String, meter: RequestMeter) {
        self.target = target
        self.meter = meter
    }

    static func connect(host: String, port: Int, target: String, meter: RequestMeter, group: any EventLoopGroup) async throws -> HTTPClientConnection
    {
        let client = HTTPClientConnection(target: target, meter: meter)
        _ = try await ClientBootstrap(group: group)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(client) } }
            .connect(host: host, port: port).get()
        return client
    }

    func channelActive(context: ChannelHandlerContext) { self.context = context }

    func start(window: Int) {
        self.context?.eventLoop.execute {
            self.running = true
            for _ in 0..<window { self.send() }
        }
    }

    func stop() { self.context?.eventLoop.execute { self.running = false } }
    func close() { self.context?.close(promise: nil) }

    private func send() {
        guard let context else { return }
        self.sent.append(.now())
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: "GET \(self.target) HTTP/1.1\r\nHost: bench\r\n\r\n")), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = self.unwrapInboundIn(data)
        self.buffer.writeBuffer(&chunk)
        // Responses carry Content-Length (Express does); chunked ones are not expected here.
        while let end = self.buffer.readableBytesView.firstRange(of: "\r\n\r\n".utf8) {
            let head = String(decoding: self.buffer.readableBytesView[..<end.upperBound], as: UTF8.self)
            let length =
                head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
            let total = end.upperBound - self.buffer.readerIndex + length
            guard self.buffer.readableBytes >= total else { return }
            self.buffer.moveReaderIndex(forwardBy: total)
            guard !self.sent.isEmpty else { continue }
            self.meter.record(self.sent.removeFirst(), ok: head.hasPrefix("HTTP/1.1 200"))
            if self.running { self.send() }
        }
        self.buffer.discardReadBytes()
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for element in self { out.append(try await transform(element)) }
        return out
    }
}
