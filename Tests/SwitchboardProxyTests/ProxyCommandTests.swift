import Foundation
import NIOCore
import RedisTestSupport
import Testing

@testable import SwitchboardProxy

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `switchboard proxy` as an operator runs it: a real process, configured by flags and the
/// environment, with its health, metrics and shutdown.
@Suite("switchboard proxy, the command", .timeLimit(.minutes(1)))
struct ProxyCommandTests {
    static func run(_ arguments: [String], environment: [String: String] = [:]) throws -> (Process, Pipe) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: switchboardBinary)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return (process, errors)
    }

    static func get(_ url: String) async throws -> (status: Int, body: String) {
        let (data, response) = try await URLSession.shared.data(for: URLRequest(url: URL(string: url)!, timeoutInterval: 5))
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    @Test func servesHealthAndMetricsRelaysAndClosesClientsWith1001OnSIGTERM() async throws {
        let upstream = try await echoUpstream()
        defer { Task { await upstream.kill() } }
        let port = try await freePort()
        // The upstream from the environment, the rest from flags.
        let (process, _) = try Self.run(
            ["proxy", "--port", String(port), "--log-level", "error", "--upstream-header", "X-Proxy-Key: k1"],
            environment: ["SWITCHBOARD_PROXY_UPSTREAM": upstream.url]
        )
        defer { if process.isRunning { process.terminate() } }
        try await waitFor("the proxy to listen") { (try? await Self.get("http://127.0.0.1:\(port)/health/ready").status) == 200 }

        let health = try await Self.get("http://127.0.0.1:\(port)/health")
        #expect(health.status == 200)
        #expect(health.body.contains(#""mode":"sender""#))

        let client = try await TestClient.connect(port: port)
        try await client.send("hi")
        let got = try await client.texts(1)
        #expect(got == ["echo:hi"])
        #expect(upstream.handshakes.value.first?["x-proxy-key"] == ["k1"])

        // Delivered once the upstream's pong confirmed it, which may follow the echo.
        try await waitFor("the delivery in the metrics") {
            let metrics = try? await Self.get("http://127.0.0.1:\(port)/metrics").body
            return metrics?.contains(#"switchboard_proxy_messages_delivered_total{direction="to_upstream"} 1"#) == true
        }
        let metrics = try await Self.get("http://127.0.0.1:\(port)/metrics")
        #expect(metrics.body.contains(#"switchboard_proxy_client_connects_total{session="new"} 1"#))
        #expect(metrics.body.contains(#"switchboard_proxy_clients_open 1"#))

        kill(process.processIdentifier, SIGTERM)
        let event = try await client.next()
        #expect(event == .close(ProxyCloseCode.goingAway, "proxy shutting down"))
        try await waitFor("the process to exit") { !process.isRunning }
        #expect(process.terminationStatus == 0)
        try await waitFor("the upstream to hear 1001") { upstream.closes.value == [ProxyCloseCode.goingAway] }
    }

    /// A proxy near its open-file limit closes client connections past its maximum at accept
    /// (and counts them) instead of running out of descriptors, where SwiftNIO's accept loop
    /// would spin a core; it still serves its health endpoint.
    @Test func aProxyAtItsFileLimitClosesExtraConnectionsWithoutSpinning() async throws {
        let port = try await freePort()
        let process = Process()
        // exec keeps the process id: /proc and signals reach the proxy.
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = [
            "-c", "ulimit -n 256 && exec \"$0\" \"$@\"", switchboardBinary,
            "proxy", "--upstream", "ws://127.0.0.1:1/nowhere", "--port", String(port), "--log-level", "error",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        try await waitFor("the proxy to listen") { (try? await Self.get("http://127.0.0.1:\(port)/health").status) == 200 }

        var sockets: [Int32] = []
        defer { for fd in sockets { close(fd) } }
        for _ in 0..<300 { sockets.append(try ProcessProbes.silentSocket(port: port)) }
        // Past the maximum (256 less a reserve of 32) connections are closed at once.
        let maximum = 256 - 32
        try await waitFor("the extra connections to be closed") { sockets.filter { ProcessProbes.closedByPeer($0) }.count >= 300 - maximum }
        let before = ProcessProbes.cpuSeconds(pid: process.processIdentifier)
        try await Task.sleep(for: .seconds(2))
        let spent = ProcessProbes.cpuSeconds(pid: process.processIdentifier) - before
        #expect(spent < 0.5, "the proxy used \(spent) s of CPU in 2 s while holding silent connections")
        #expect(process.isRunning)

        for fd in sockets { close(fd) }
        sockets = []
        try await waitFor("the proxy to count them and serve again") {
            let metrics = try? await Self.get("http://127.0.0.1:\(port)/metrics").body
            let line = metrics?.split(separator: "\n").first { $0.hasPrefix("switchboard_proxy_connections_over_capacity_total") }
            return (line?.split(separator: " ").last).flatMap { Double($0) }.map { $0 >= Double(300 - maximum) } == true
        }
    }

    /// A client connection that never sends a request, or sends its request head a byte at a
    /// time, is closed after the handshake timeout; one that sends a request is served.
    @Test func silentAndSlowConnectionsAreClosedAfterTheHandshakeTimeout() async throws {
        let port = try await freePort()
        let (process, _) = try Self.run([
            "proxy", "--upstream", "ws://127.0.0.1:1/nowhere", "--port", String(port), "--log-level", "error", "--handshake-timeout", "1",
            "--connect-timeout", "0.5",
        ])
        defer { if process.isRunning { process.terminate() } }
        try await waitFor("the proxy to listen") { (try? await Self.get("http://127.0.0.1:\(port)/health").status) == 200 }
        let silent = try ProcessProbes.silentSocket(port: port)
        let slow = try ProcessProbes.silentSocket(port: port)
        defer {
            close(silent)
            close(slow)
        }
        let started = ContinuousClock.now
        for byte in Array("GET /health HTTP/1.1\r\n".utf8) {
            guard !ProcessProbes.closedByPeer(slow) else { break }
            _ = withUnsafePointer(to: byte) { send(slow, $0, 1, Int32(MSG_NOSIGNAL)) }
            try await Task.sleep(for: .milliseconds(100))
        }
        try await waitFor("both to be closed", timeout: .seconds(5)) { ProcessProbes.closedByPeer(silent) && ProcessProbes.closedByPeer(slow) }
        #expect(ContinuousClock.now - started >= .milliseconds(1400), "closed before the timeout (1 s + 0.5 s)")
        let metrics = try await Self.get("http://127.0.0.1:\(port)/metrics").body
        #expect(metrics.contains("switchboard_proxy_handshake_timeouts_total 2"), "\(metrics)")
    }

    @Test func badSettingsStopTheProcessWithTheOptionNamed() async throws {
        for (arguments, message) in [
            (["proxy", "--upstream", "http://127.0.0.1:1/x"], "--upstream must be a ws:// or wss:// URL"),
            (["proxy", "--upstream", "ws://127.0.0.1:1/x", "--mode", "both"], "--mode must be sender or receiver"),
            (["proxy", "--upstream", "ws://127.0.0.1:1/x", "--max-queue-bytes", "10"], "--max-queue-bytes (10) must be at least --max-message-size"),
            (["proxy", "--upstream", "ws://127.0.0.1:1/x", "--max-connections", "0"], "--max-connections must be 1-100000000, got 0"),
            (["proxy"], "--upstream is required"),
        ] {
            let (process, errors) = try Self.run(arguments)
            process.waitUntilExit()
            let output = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus != 0, "\(arguments)")
            #expect(output.contains(message), "\(arguments): \(output)")
        }
    }
}
