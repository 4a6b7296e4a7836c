import Foundation
import NIOConcurrencyHelpers
import RedisTestSupport
import SwitchboardClient
import SwitchboardTesting
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The nginx and HAProxy configurations of `docs/deploy/`, as `docs/operations.md` shows them,
/// in front of three nodes: clients connect through the balancer only, one node is killed, its
/// clients come back through the balancer to the others and miss nothing.
@Suite("Behind a load balancer", .serialized, .timeLimit(.minutes(3)))
struct LoadBalancerTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// A balancer process running one of the documented configurations, with the documented
    /// ports replaced by the test's.
    final class Balancer: @unchecked Sendable {
        let process = Process()
        let port: Int
        let directory: String

        init(kind: String, nodes: [NodeProcess]) async throws {
            self.port = try await freePort()
            self.directory = NSTemporaryDirectory() + "lb-\(kind)-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
            let file = kind == "nginx" ? "nginx.conf" : "haproxy.cfg"
            var config = try String(contentsOf: LoadBalancerTests.root.appendingPathComponent("docs/deploy/\(file)"), encoding: .utf8)
            let documented = try String(contentsOf: LoadBalancerTests.root.appendingPathComponent("docs/operations.md"), encoding: .utf8)
            guard documented.contains(config) else { throw ClusterTestFailure("docs/operations.md does not show docs/deploy/\(file) as it is") }
            for (i, node) in nodes.enumerated() { config = config.replacingOccurrences(of: "127.0.0.1:900\(i + 1)", with: "127.0.0.1:\(node.port)") }
            config = config.replacingOccurrences(of: "listen 8080", with: "listen 127.0.0.1:\(self.port)")
                .replacingOccurrences(of: "bind :8080", with: "bind 127.0.0.1:\(self.port)")
            if kind == "nginx" {
                // Run unprivileged-friendly: everything nginx writes goes to the test's directory.
                config = config.replacingOccurrences(
                    of: "http {",
                    with: """
                        http {
                            access_log off;
                            client_body_temp_path \(self.directory)/body;
                            proxy_temp_path \(self.directory)/proxy;
                            fastcgi_temp_path \(self.directory)/fastcgi;
                            uwsgi_temp_path \(self.directory)/uwsgi;
                            scgi_temp_path \(self.directory)/scgi;
                        """)
                config = "pid \(self.directory)/nginx.pid;\nerror_log \(self.directory)/error.log warn;\n" + config
                try config.write(toFile: self.directory + "/nginx.conf", atomically: true, encoding: .utf8)
                self.process.executableURL = URL(fileURLWithPath: "/usr/sbin/nginx")
                self.process.arguments = [
                    "-p", self.directory, "-c", self.directory + "/nginx.conf", "-e", self.directory + "/error.log",
                    "-g", "daemon off;",
                ]
            } else {
                try config.write(toFile: self.directory + "/haproxy.cfg", atomically: true, encoding: .utf8)
                self.process.executableURL = URL(fileURLWithPath: "/usr/sbin/haproxy")
                self.process.arguments = ["-f", self.directory + "/haproxy.cfg", "-db"]
            }
            self.process.standardOutput = FileHandle.nullDevice
            self.process.standardError = FileHandle.nullDevice
            try self.process.run()
            let up = try await eventually(timeout: .seconds(15)) {
                (try? await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(self.port)/health/ready")!).1 as? HTTPURLResponse)?
                    .statusCode == 200
            }
            guard up else { throw ClusterTestFailure("\(kind) did not start") }
        }

        var url: String { "ws://127.0.0.1:\(self.port)/ws" }

        deinit {
            if self.process.isRunning {
                self.process.terminate()
                self.process.waitUntilExit()
            }
            try? FileManager.default.removeItem(atPath: self.directory)
        }
    }

    @Test(arguments: ["nginx", "haproxy"])
    func clientsMoveThroughTheBalancerWhenANodeDies(balancerKind: String) async throws {
        try await ClusterTests.withNodes(3) { _, nodes in
            let balancer = try await Balancer(kind: balancerKind, nodes: nodes)
            let stream = "/streams/lb"
            var inboxes: [ClusterTests.Inbox] = []
            var clients: [SwitchboardClient] = []
            for i in 0..<6 {
                let token = try await TestTokens.make(user: "lb\(i)", secret: NodeProcess.secret)
                var configuration = SwitchboardClientConfiguration()
                configuration.minReconnectDelay = .milliseconds(50)
                configuration.maxReconnectDelay = .milliseconds(500)
                let client = SwitchboardClient(url: balancer.url, token: { token }, configuration: configuration)
                try await client.connect()
                clients.append(client)
                inboxes.append(ClusterTests.Inbox(try await client.subscribe(stream)))
            }
            // The balancer spread them over the nodes (no stickiness is needed for any of this).
            let perNode = try await nodes.asyncMap { node -> Int in
                let health = try await node.get("/health").json as? [String: Any]
                return health?["connections"] as? Int ?? 0
            }
            #expect(perNode.filter { $0 > 0 }.count >= 2, "connections per node: \(perNode)")

            for i in 1...5 { _ = try await nodes[2].api("POST", "/publish", ["stream": stream, "data": "\(i)"]) }
            // The busiest node dies; its clients reconnect through the balancer and resume.
            let victim = nodes[perNode.firstIndex(of: perNode.max()!)!]
            victim.kill()
            let survivor = nodes.first { $0 !== victim }!
            for i in 6...10 {
                var accepted = false
                while !accepted {
                    accepted = (try? await survivor.api("POST", "/publish", ["stream": stream, "data": "\(i)"]).status) == 201
                }
            }
            for inbox in inboxes { #expect(try await inbox.waitFor(10, timeout: .seconds(60)) == (1...10).map(String.init)) }
            for client in clients { await client.close() }
        }
    }
}
