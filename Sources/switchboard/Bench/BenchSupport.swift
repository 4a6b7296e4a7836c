import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Memory and CPU of a process, from /proc (Linux).
struct ProcStat {
    var rssBytes: Int
    var cpuSeconds: Double

    static func read(pid: Int32) throws -> ProcStat {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let rssLine = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        let rssKiB = Int(rssLine.split(separator: " ").dropFirst().first ?? "0") ?? 0
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // Fields after the command name (which may contain spaces) start after ") ".
        let fields = stat[stat.range(of: ") ")!.upperBound...].split(separator: " ")
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let utime = Double(fields[11]) ?? 0
        let stime = Double(fields[12]) ?? 0
        return ProcStat(rssBytes: rssKiB * 1024, cpuSeconds: (utime + stime) / ticks)
    }

    /// Memory and CPU of several processes added up.
    static func total(_ pids: [Int32]) throws -> ProcStat {
        try pids.map { try ProcStat.read(pid: $0) }.reduce(ProcStat(rssBytes: 0, cpuSeconds: 0)) {
            ProcStat(rssBytes: $0.rssBytes + $1.rssBytes, cpuSeconds: $0.cpuSeconds + $1.cpuSeconds)
        }
    }
}

/// The worker processes of a bench run. Each prints `PROGRESS n` while connecting, `READY n`,
/// `RECEIVED n` while it runs, and `RESULT {json}` when its stdin closes.
final class WorkerPool: @unchecked Sendable {
    struct Child {
        let process: Process
        let stdin: Pipe
    }

    /// What a worker reported last.
    struct Report {
        var connected = 0
        var ready: Int?
        var received: UInt64 = 0
        var result: WorkerResult?
        var exited = false
    }

    let children: [Child]
    let total: Int
    private let reports: NIOLockedValueBox<[Report]>

    private init(children: [Child], total: Int, reports: NIOLockedValueBox<[Report]>) {
        self.children = children
        self.total = total
        self.reports = reports
    }

    static func start(common: Bench.Common, mode: String, total: Int, extra: [String]) throws -> WorkerPool {
        let executable = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        let processes = max(1, common.processes)
        let reports = NIOLockedValueBox([Report](repeating: Report(), count: processes))
        var children: [Child] = []
        for i in 0..<processes {
            let share = total / processes + (i < total % processes ? 1 : 0)
            let process = Process()
            process.executableURL = executable
            // Each worker uses its own loopback source address, so ports never run out.
            let urls = common.urls
            process.arguments =
                ["bench", "worker", "--url", urls[i % urls.count], "--mode", mode, "--count", String(share), "--source", "127.0.0.\(2 + i)"] + extra
            let stdin = Pipe()
            let stdout = Pipe()
            process.standardInput = stdin
            process.standardOutput = stdout
            let reader = LineReader()
            // A thread of its own per worker: Foundation's readabilityHandler was seen to stop
            // delivering a pipe's data on Linux, losing a worker's RESULT.
            let handle = stdout.fileHandleForReading
            Thread.detachNewThread {
                while true {
                    let data = handle.availableData
                    if data.isEmpty { break }
                    for line in reader.feed(data) {
                        reports.withLockedValue { Self.apply(line, to: &$0[i]) }
                    }
                }
                reports.withLockedValue { $0[i].exited = true }
            }
            try process.run()
            children.append(Child(process: process, stdin: stdin))
        }
        return WorkerPool(children: children, total: total, reports: reports)
    }

    private static func apply(_ line: String, to report: inout Report) {
        if line.hasPrefix("RESULT ") {
            do {
                report.result = try JSONDecoder().decode(WorkerResult.self, from: Data(line.dropFirst(7).utf8))
            } catch {
                FileHandle.standardError.write(Data("worker result undecodable: \(error)\n".utf8))
            }
            return
        }
        let parts = line.split(separator: " ")
        guard parts.count == 2, let n = UInt64(parts[1]) else { return }
        switch parts[0] {
        case "PROGRESS": report.connected = Int(n)
        case "READY": report.ready = Int(n)
        case "RECEIVED": report.received = n
        default: break
        }
    }

    /// Waits until every worker printed READY; returns how many connections are ready.
    func waitReady(progress: @escaping @Sendable (Int) -> Void) async throws -> Int {
        while true {
            let (ready, connected, exited) = self.reports.withLockedValue { r in
                (
                    r.allSatisfy { $0.ready != nil } ? r.reduce(0) { $0 + $1.ready! } : nil, r.reduce(0) { $0 + $1.connected },
                    r.contains { $0.exited && $0.ready == nil }
                )
            }
            if let ready { return ready }
            if exited { throw BenchError("a worker exited before it was ready") }
            progress(connected)
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Messages received so far by all workers.
    var received: UInt64 { self.reports.withLockedValue { $0.reduce(0) { $0 + $1.received } } }

    /// Waits until `expected` messages arrived, or nothing arrived for `quiet` (bounded by `limit`).
    func waitDelivered(_ expected: UInt64, quiet: Duration = .seconds(2), limit: Duration = .seconds(60)) async throws {
        let deadline = ContinuousClock.now + limit
        var last = self.received
        var lastChange = ContinuousClock.now
        while self.received < expected, ContinuousClock.now < deadline, ContinuousClock.now - lastChange < quiet {
            try await Task.sleep(for: .milliseconds(100))
            let now = self.received
            if now != last {
                last = now
                lastChange = .now
            }
        }
    }

    /// Tell the workers to report and exit.
    func finish() {
        for child in self.children { try? child.stdin.fileHandleForWriting.close() }
    }

    func results() async throws -> [WorkerResult] {
        for child in self.children { child.process.waitUntilExit() }
        // The last lines may still be in flight from the readability handlers.
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            let done = self.reports.withLockedValue { r in r.allSatisfy { $0.result != nil || $0.exited } }
            if done { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        let reports = self.reports.withLockedValue { $0 }
        if reports.contains(where: { $0.result == nil }) {
            throw BenchError("\(reports.filter { $0.result == nil }.count) worker(s) reported no result")
        }
        return reports.compactMap(\.result)
    }
}

final class LineReader: @unchecked Sendable {
    private var pending = Data()
    private let lock = NIOLock()

    func feed(_ data: Data) -> [String] {
        self.lock.withLock {
            self.pending.append(data)
            var lines: [String] = []
            while let newline = self.pending.firstIndex(of: 0x0A) {
                lines.append(String(decoding: self.pending[self.pending.startIndex..<newline], as: UTF8.self))
                self.pending = Data(self.pending[self.pending.index(after: newline)...])
            }
            return lines
        }
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The publishing side of the fan-out scenario: requests over one WebSocket, each body
/// starting with its send time (uptime nanoseconds, the same clock in every process).
final class Publisher: @unchecked Sendable {
    let connection: BenchConnection
    let loop: any EventLoop
    private let replies = NIOLockedValueBox(0)

    private init(connection: BenchConnection, loop: any EventLoop) {
        self.connection = connection
        self.loop = loop
    }

    static func connect(host: String, port: Int, path: String) async throws -> Publisher {
        let group = MultiThreadedEventLoopGroup.singleton
        let replies = NIOLockedValueBox(0)
        let connection = try await BenchConnection.connect(host: host, port: port, path: path, source: nil, group: group) { c in
            c.onText = { text in
                if text.readableBytesView.starts(with: Array("POST".utf8)) { replies.withLockedValue { $0 += 1 } }
            }
        }.get()
        let publisher = Publisher(connection: connection, loop: connection.loop!)
        publisher.replyCounter = replies
        return publisher
    }

    private var replyCounter = NIOLockedValueBox(0)

    /// Publish for `duration` seconds at `rate` per second (0: flat out with `window` in flight).
    func run(stream: String, rate: Double, duration: Double, size: Int, window: Int, progress: @Sendable (Int) -> Void) async throws -> Int {
        let end = ContinuousClock.now + .seconds(duration)
        var sent = 0
        let padding = String(repeating: "x", count: max(0, size - 21))
        let interval = rate > 0 ? Duration.seconds(1.0 / rate) : .zero
        var next = ContinuousClock.now
        while ContinuousClock.now < end {
            if rate > 0 {
                next += interval
                if next > ContinuousClock.now { try await Task.sleep(until: next) }
            } else {
                while sent - self.replyCounter.withLockedValue({ $0 }) >= window {
                    try await Task.sleep(for: .microseconds(50))
                }
            }
            sent += 1
            let body = "\(NIODeadline.now().uptimeNanoseconds) \(padding)"
            let frame = ByteBuffer(string: "POST|\(stream)|r=\(sent)|\(body)")
            let connection = self.connection
            self.loop.execute { connection.sendText(frame) }
            if sent % 1000 == 0 { progress(sent) }
        }
        // Wait (bounded) for every publish to be acknowledged.
        let deadline = ContinuousClock.now + .seconds(10)
        while self.replyCounter.withLockedValue({ $0 }) < sent, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        return sent
    }
}
