import Foundation
import NIOConcurrencyHelpers
import RedisTestSupport

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A real `switchboard serve` process on a free loopback port, started the way an operator
/// would, with its output in a log file that is printed when something goes wrong.
final class NodeProcess: @unchecked Sendable {
    static let secret = "cluster-test-secret-of-32-bytes-long!"
    static let apiKey = "cluster-test-key"

    let id: String
    let port: Int
    let arguments: [String]
    let log: URL
    private let process = NIOLockedValueBox<Process?>(nil)

    var url: String { "ws://127.0.0.1:\(self.port)/ws" }
    var http: String { "http://127.0.0.1:\(self.port)" }

    /// `redis: nil` runs the memory engine; `openFiles` starts the node under `ulimit -n`.
    init(id: String, redis: String?, cluster: Bool = false, extra: [String] = [], openFiles: Int? = nil) async throws {
        self.id = id
        self.port = try await freePort()
        self.openFiles = openFiles
        self.log = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("switchboard-\(id)-\(UUID().uuidString).log")
        self.arguments =
            [
                "serve", "--port", String(self.port), "--node-id", id, "--jwt-secret", Self.secret,
                "--api-key", Self.apiKey, "--log-level", "info", "--drain-window", "1", "--ping-interval", "5",
            ]
            + (redis.map { ["--redis", $0] } ?? []) + (cluster ? ["--redis-cluster"] : []) + extra
        try await self.start()
    }

    let openFiles: Int?

    static var binary: String { switchboardBinary }

    /// Starts (or restarts, on the same port) and waits until the node reports ready.
    func start() async throws {
        if !FileManager.default.fileExists(atPath: self.log.path) { _ = FileManager.default.createFile(atPath: self.log.path, contents: nil) }
        let output = try FileHandle(forWritingTo: self.log)
        output.seekToEndOfFile()
        let p = Process()
        if let openFiles {
            // exec keeps the process id: signals and /proc still reach the node.
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "ulimit -n \(openFiles) && exec \"$0\" \"$@\"", Self.binary] + self.arguments
        } else {
            p.executableURL = URL(fileURLWithPath: Self.binary)
            p.arguments = self.arguments
        }
        p.standardOutput = output
        p.standardError = output
        try p.run()
        self.process.withLockedValue { $0 = p }
        guard try await eventually(timeout: .seconds(30), { await self.isReady() }) else {
            self.kill()
            throw ClusterTestFailure("node \(self.id) did not become ready:\n\(self.output)")
        }
    }

    func isReady() async -> Bool {
        (try? await self.get("/health/ready").status) == 200
    }

    var isRunning: Bool { self.process.withLockedValue { $0?.isRunning ?? false } }

    /// CPU time (user + system) the node has used so far, from /proc.
    var cpuSeconds: Double {
        self.process.withLockedValue { $0?.processIdentifier }.map { ProcessProbes.cpuSeconds(pid: $0) } ?? 0
    }

    /// SIGKILL, as a crash would: no drain, no goodbye to Redis.
    func kill() {
        guard let p = self.process.withLockedValue({ $0 }), p.isRunning else { return }
        Foundation.kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// Sends `signal` and returns at once.
    func signal(_ signal: Int32) async {
        guard let p = self.process.withLockedValue({ $0 }), p.isRunning else { return }
        Foundation.kill(p.processIdentifier, signal)
    }

    /// SIGTERM: the node drains (clients told to reconnect elsewhere) and exits.
    func terminate() async {
        guard let p = self.process.withLockedValue({ $0 }), p.isRunning else { return }
        Foundation.kill(p.processIdentifier, SIGTERM)
        _ = try? await eventually(timeout: .seconds(30)) { !p.isRunning }
        self.kill()
    }

    var output: String { (try? String(contentsOf: self.log, encoding: .utf8)) ?? "" }

    deinit {
        self.kill()
        try? FileManager.default.removeItem(at: self.log)
    }

    // MARK: HTTP

    struct Reply {
        let status: Int
        let body: String
        var json: Any? { try? JSONSerialization.jsonObject(with: Data(self.body.utf8)) }
    }

    func get(_ path: String) async throws -> Reply {
        try await self.request("GET", path, body: nil)
    }

    /// The server API, with the node's API key.
    func api(_ method: String, _ path: String, _ body: [String: Any]? = nil) async throws -> Reply {
        try await self.request(method, "/api" + path, body: body.map { try JSONSerialization.data(withJSONObject: $0) }, apiKey: Self.apiKey)
    }

    func request(_ method: String, _ path: String, body: Data?, apiKey: String? = nil, headers: [String: String] = [:]) async throws -> Reply {
        var request = URLRequest(url: URL(string: self.http + path)!, timeoutInterval: 10)
        request.httpMethod = method
        request.httpBody = body
        if body != nil { request.setValue("application/json", forHTTPHeaderField: "Content-Type") }
        if let apiKey { request.setValue(apiKey, forHTTPHeaderField: "X-API-Key") }
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        let (data, response) = try await URLSession.shared.data(for: request)
        return Reply(status: (response as? HTTPURLResponse)?.statusCode ?? 0, body: String(decoding: data, as: UTF8.self))
    }
}

struct ClusterTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
