import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import Switchboard
import SwitchboardBridge

/// The Express test backend (Tests/Fixtures/backend/app.cjs) as a real Node.js process on a free
/// loopback port, stopped when `body` returns.
struct ExpressBackend: Sendable {
    static let secret = "bridge-test-secret-0123456789"
    let port: Int
    let process: Process

    var url: URL { URL(string: "http://127.0.0.1:\(self.port)")! }

    static func with<R>(port: Int = 0, _ body: (ExpressBackend) async throws -> R) async throws -> R {
        let backend = try await Self.start(port: port)
        defer { backend.stop() }
        return try await body(backend)
    }

    static func start(port: Int = 0) async throws -> ExpressBackend {
        let app = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fixtures/backend/app.cjs")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["node", app.path, Self.secret, String(port)]
        var environment = ProcessInfo.processInfo.environment
        environment["NODE_PATH"] = "/usr/share/nodejs"
        process.environment = environment
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        // "listening PORT", within 10 s. Read by a readability handler (a dispatch queue), never
        // by a blocking read on the cooperative pool: it has one thread per core, and tests run
        // in parallel on it.
        let (lines, continuation) = AsyncStream.makeStream(of: String.self)
        let collected = NIOLockedValueBox("")
        output.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty {
                handle.readabilityHandler = nil
                continuation.finish()
                return
            }
            let text = collected.withLockedValue { text -> String? in
                text += String(decoding: data, as: UTF8.self)
                return text.contains("\n") ? text : nil
            }
            if let text {
                handle.readabilityHandler = nil
                continuation.yield(text)
                continuation.finish()
            }
        }
        let line = try await withThrowingTaskGroup(of: String.self) { group in
            group.addTask {
                for await line in lines { return line }
                return ""
            }
            group.addTask {
                try await Task.sleep(for: .seconds(10))
                throw TestFailure("the Express backend did not start in 10 s")
            }
            defer {
                group.cancelAll()
                continuation.finish()
            }
            return try await group.next()!
        }
        guard let port = line.split(separator: " ").last.flatMap({ Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
            process.terminate()
            throw TestFailure("the Express backend said '\(line)' (is node-express installed?)")
        }
        return ExpressBackend(port: port, process: process)
    }

    func stop() {
        if self.process.isRunning {
            kill(self.process.processIdentifier, SIGKILL)
            self.process.waitUntilExit()
        }
    }

    /// A bridge to this backend (or to `url`), its pool closed after `body`.
    static func bridge<R>(
        to url: URL, _ modify: (inout BackendConfiguration) -> Void = { _ in }, _ body: (HTTPBackend) async throws -> R
    ) async throws -> R {
        var configuration = BackendConfiguration(targets: [try BackendConfiguration.Target(url: url)], secret: Self.secret)
        configuration.timeout = 2
        configuration.metaKeys = ["tenant"]
        modify(&configuration)
        let backend = HTTPBackend(
            configuration: configuration, eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "bridge"))
        do {
            let result = try await body(backend)
            try await backend.shutdown()
            return result
        } catch {
            try? await backend.shutdown()
            throw error
        }
    }
}
