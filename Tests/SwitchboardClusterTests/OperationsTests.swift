import Foundation
import RedisTestSupport
import Switchboard
import SwitchboardClient
import SwitchboardTesting
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// What an operator relies on, on real `switchboard serve` processes: metrics that count a
/// known load, readiness while draining, a per-user limit shared by nodes, and the config file.
@Suite("Operating nodes", .serialized, .timeLimit(.minutes(3)))
struct OperationsTests {
    /// One scrape of `/metrics`: each sample with its labels.
    struct Scrape {
        var samples: [(name: String, labels: [String: String], value: Double)] = []

        init(_ text: String) {
            for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
                let series = line[..<space]
                var labels: [String: String] = [:]
                var name = String(series)
                if let open = series.firstIndex(of: "{"), series.last == "}" {
                    name = String(series[..<open])
                    let body = series[series.index(after: open)..<series.index(before: series.endIndex)]
                    for pair in body.split(separator: ",") {
                        let kv = pair.split(separator: "=", maxSplits: 1)
                        if kv.count == 2 { labels[String(kv[0])] = kv[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
                    }
                }
                self.samples.append((name, labels, value))
            }
        }

        /// The sum of every sample of `name` whose labels include `labels`.
        func value(_ name: String, _ labels: [String: String] = [:]) -> Double {
            self.samples.filter { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }.reduce(0) {
                $0 + $1.value
            }
        }

        static func of(_ node: NodeProcess) async throws -> Scrape {
            let reply = try await node.get("/metrics")
            guard reply.status == 200 else { throw ClusterTestFailure("/metrics answered \(reply.status)") }
            return Scrape(reply.body)
        }
    }

    @Test func metricsCountAKnownLoad() async throws {
        try await ClusterTests.withNodes(1) { _, nodes in
            let node = nodes[0]
            let stream = "/streams/metrics"
            let before = try await Scrape.of(node)
            let clients = [try await ClusterTests.client("m1", nodes), try await ClusterTests.client("m2", nodes)]
            let inboxes = try await clients.asyncMap { ClusterTests.Inbox(try await $0.subscribe(stream)) }
            for i in 1...5 { #expect(try await node.api("POST", "/publish", ["stream": stream, "data": "\(i)"]).status == 201) }
            for inbox in inboxes { #expect(try await inbox.waitFor(5) == (1...5).map(String.init)) }
            let during = try await Scrape.of(node)
            func delta(_ name: String, _ labels: [String: String] = [:]) -> Double { during.value(name, labels) - before.value(name, labels) }
            #expect(delta("switchboard_connections_opened_total") == 2)
            #expect(during.value("switchboard_connections_open") == 2)
            #expect(delta("switchboard_deliveries_total", ["source": "live"]) == 10)
            #expect(delta("switchboard_messages_in_total", ["kind": "sub"]) == 2)
            #expect(delta("switchboard_publish_duration_seconds_count") == 5)
            // Each message handed to the hub (two subscribers, perhaps on two loops) is timed once.
            #expect(delta("switchboard_fanout_duration_seconds_count") == 5)
            #expect(delta("switchboard_fanout_duration_seconds_bucket", ["le": "1.0"]) == 5)
            #expect(delta("switchboard_requests_total", ["route": "/api/publish", "method": "POST", "status": "201", "transport": "http"]) == 5)
            #expect(delta("switchboard_requests_total", ["method": "SUB", "status": "200", "transport": "ws"]) == 2)
            #expect(during.value("switchboard_engine_available") == 1)
            #expect(during.value("switchboard_engine_round_trip_seconds") > 0)
            // Every series has the node label, the routed request series included.
            let unlabelled = Set(during.samples.filter { $0.name.hasPrefix("switchboard_") && $0.labels["node"] != node.id }.map(\.name))
            #expect(unlabelled.isEmpty, "\(unlabelled)")
            #expect(during.value("switchboard_requests_total", ["node": node.id]) > 0)

            for client in clients { await client.close() }
            #expect(try await eventually { (try? await Scrape.of(node).value("switchboard_connections_open")) == 0 })
            let after = try await Scrape.of(node)
            #expect(
                after.value("switchboard_connections_closed_total", ["code": "1000"])
                    - before.value("switchboard_connections_closed_total", ["code": "1000"]) == 2)
        }
    }

    /// A node near its open-file limit closes connections past its maximum at accept (and
    /// counts them) instead of running out of descriptors, where SwiftNIO's accept loop would
    /// spin a core; once they go, it serves again.
    @Test func aNodeAtItsFileLimitClosesExtraConnectionsWithoutSpinning() async throws {
        let node = try await NodeProcess(id: "fdlimit", redis: nil, openFiles: 256)
        defer { node.kill() }
        var sockets: [Int32] = []
        defer { for fd in sockets { close(fd) } }
        for _ in 0..<300 { sockets.append(try ProcessProbes.silentSocket(port: node.port)) }
        // Every connection was accepted: the ones past the maximum (256 less a reserve of 32)
        // were closed at once, long before the 10 s handshake timeout.
        let maximum = 256 - 32
        #expect(
            try await eventually(timeout: .seconds(5)) {
                sockets.filter { ProcessProbes.closedByPeer($0) }.count >= 300 - maximum
            })
        let before = node.cpuSeconds
        try await Task.sleep(for: .seconds(2))
        let spent = node.cpuSeconds - before
        #expect(spent < 0.5, "the node used \(spent) s of CPU in 2 s while holding silent connections")
        #expect(node.isRunning)

        for fd in sockets { close(fd) }
        sockets = []
        var closed: Substring?
        _ = try await eventually(timeout: .seconds(5)) {
            let metrics = try? await node.get("/metrics")
            closed = metrics?.body.split(separator: "\n").first { $0.hasPrefix("switchboard_connections_over_capacity_total") }
            return closed != nil
        }
        #expect((closed?.split(separator: " ").last).flatMap { Double($0) }.map { $0 >= Double(300 - maximum) } == true, "\(closed ?? "no metric")")
        #expect(try await node.get("/health/ready").status == 200)
        let client = try await ClusterTests.client("after-limit", [node])
        await client.close()
    }

    /// A body published over HTTP that is not UTF-8 is refused (400): subscribers receive it in
    /// WebSocket text frames, which must be UTF-8. (A WebSocket frame's body already is.)
    @Test func aPublishedBodyThatIsNotUTF8IsRefused() async throws {
        let node = try await NodeProcess(id: "utf8", redis: nil, extra: ["--allow-anonymous"])
        defer { node.kill() }
        let bad = try await node.request("POST", "/streams/utf8", body: Data([0x66, 0xFF, 0xFE]))
        #expect(bad.status == 400, "\(bad.body)")
        let good = try await node.request("POST", "/streams/utf8", body: Data("fine".utf8))
        #expect(good.status == 201, "\(good.body)")
    }

    @Test func aDrainingNodeIsNotReadyRefusesUpgradesThenExits() async throws {
        let redis = try await RedisServer()
        defer { redis.stop() }
        let node = try await NodeProcess(id: "drainer", redis: redis.url, extra: ["--drain-window", "4"])
        defer { node.kill() }
        var clients: [SwitchboardClient] = []
        for i in 0..<4 { clients.append(try await ClusterTests.client("d\(i)", [node])) }
        #expect(await node.isReady())
        await node.signal(SIGTERM)
        // Closes are spread over the window; meanwhile the listener stays up and says so.
        #expect(
            try await eventually(timeout: .seconds(3)) {
                let reply = try? await node.get("/health/ready")
                return reply?.status == 503 && reply?.body.contains("draining") == true
            })
        // HTTP clients drop Upgrade headers, so the handshake goes over a plain TCP socket.
        let handshake =
            "GET /ws HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
            + "Sec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n"
        let upgrade = try await Self.run(
            ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(node.port); printf '\(handshake)' >&3; timeout 5 head -1 <&3"], executable: "/bin/bash")
        #expect(upgrade.output.hasPrefix("HTTP/1.1 503"), "\(upgrade.output)")
        #expect(try await eventually(timeout: .seconds(20)) { !node.isRunning })
        for client in clients { await client.close() }
    }

    @Test func aUsersRequestRateIsSharedByEveryNode() async throws {
        let redis = try await RedisServer()
        defer { redis.stop() }
        let limit = ["--user-request-rate", "0.01", "--user-request-burst", "3"]
        let a = try await NodeProcess(id: "rate-a", redis: redis.url, extra: limit)
        let b = try await NodeProcess(id: "rate-b", redis: redis.url, extra: limit)
        defer {
            a.kill()
            b.kill()
        }
        let token = try await TestTokens.make(user: "greedy", expiresIn: 3600, secret: NodeProcess.secret)
        let auth = ["Authorization": "Bearer \(token)"]
        let body = Data(#"{"n":1}"#.utf8)
        var statuses: [Int] = []
        for node in [a, b, a, b] {
            statuses.append(try await node.request("POST", "/streams/rate", body: body, headers: auth).status)
        }
        // Three requests in all (not three per node), then 429 on whichever node.
        #expect(statuses == [201, 201, 201, 429])
        let ws = try await ClusterTests.client("greedy", [b])
        let reply = try await ws.request("POST", "/streams/rate", body: #"{"n":2}"#)
        #expect(reply.status == 429)
        #expect(reply.body.contains("rate_limited"))
        let other = try await TestTokens.make(user: "modest", expiresIn: 3600, secret: NodeProcess.secret)
        #expect(try await a.request("POST", "/streams/rate", body: body, headers: ["Authorization": "Bearer \(other)"]).status == 201)
        await ws.close()
    }

    // MARK: configuration

    /// Runs the binary to its end on a thread of its own: the cooperative pool has one thread per
    /// core, and a blocking wait on it would stall every test running beside this one.
    static func run(
        _ arguments: [String], environment: [String: String] = [:], executable: String = NodeProcess.binary
    ) async throws -> (status: Int32, output: String) {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result { try Self.runBlocking(arguments, environment: environment, executable: executable) })
            }
        }
    }

    private static func runBlocking(
        _ arguments: [String], environment: [String: String], executable: String
    ) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SWITCHBOARD_") }
        env.merge(environment) { $1 }
        p.environment = env
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func file(_ json: String) throws -> String {
        let path = NSTemporaryDirectory() + "switchboard-config-\(UUID().uuidString).json"
        try json.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func configCheckAcceptsAGoodFileAndNamesWhatIsWrongInABadOne() async throws {
        let good = try Self.file(
            #"{"port": 9123, "jwt-secret": "a-secret-of-at-least-32-bytes-long!!", "api-keys": ["k1"], "max-connections-per-user": 4, "allowed-origins": ["https://chat.example.com"], "history-age": 60}"#
        )
        let ok = try await Self.run(["config", "check", good])
        #expect(ok.status == 0, "\(ok.output)")
        #expect(ok.output.contains("OK"))
        #expect(ok.output.contains("listen 127.0.0.1:9123"))
        #expect(ok.output.contains("4 connections"))
        #expect(!ok.output.contains("a-secret-of"), "the secret is never printed")

        let cases: [(String, String)] = [
            (#"{"prot": 80}"#, "unknown key 'prot' (did you mean 'port'?)"),
            (#"{"port": "80"}"#, "'port' must be an integer, got \"80\""),
            (#"{"port": 70000}"#, "--port must be 0-65535"),
            (#"{"allow-anonymous": 1}"#, "'allow-anonymous' must be true or false"),
            (#"{"api-keys": "k1"}"#, "'api-keys' must be an array of strings"),
            (#"{"allowed-origins": ["https://x.example/"]}"#, "--allowed-origin must look like"),
            (#"{"log-level": "loud"}"#, "--log-level must be one of"),
            (#"{"port": 80"#, "not valid JSON"),
            (#"[1, 2]"#, "the top level must be a JSON object"),
            // The same validation as serve: the secret's length, every bound, and the value named.
            (#"{"jwt-secret": "short"}"#, "--jwt-secret: an HS256 secret must be at least 32 bytes long (this one has 5)"),
            (#"{"history-size": -5}"#, "--history-size must be 1…100000000, got -5"),
            (#"{"drain-window": -1}"#, "--drain-window must be a number at least 0 and at most 86400, got -1"),
            (#"{"ping-interval": 1e300}"#, "--ping-interval must be a number above 0 and at most 86400, got 1e+300"),
            (#"{"handshake-timeout": 0}"#, "--handshake-timeout must be a number above 0"),
            (#"{"redis": "http://x"}"#, "--redis http://x: invalid redis URL: unsupported scheme 'http'"),
            (#"{"jwt-jwks": "/nonexistent/jwks.json"}"#, "--jwt-jwks /nonexistent/jwks.json:"),
        ]
        for (json, message) in cases {
            let result = try await Self.run(["config", "check", try Self.file(json)])
            #expect(result.status != 0, "\(json) was accepted")
            #expect(result.output.contains(message), "\(json): \(result.output)")
        }
        let missing = try await Self.run(["config", "check", "/nonexistent/switchboard.json"])
        #expect(missing.status != 0)
        #expect(missing.output.contains("cannot read the file"))
        // The environment is validated too: serve would apply it over the file.
        let badEnv = try await Self.run(["config", "check", good], environment: ["SWITCHBOARD_PING_INTERVAL": "often"])
        #expect(badEnv.status != 0)
        #expect(badEnv.output.contains("SWITCHBOARD_PING_INTERVAL must be a number, got 'often'"))
    }

    @Test func configCheckValidatesStreamRulesAndBackendsWithPreciseErrors() async throws {
        let good = try Self.file(
            #"""
            {"allow-anonymous": true, "backends": ["http://127.0.0.1:3000", "/api=http://127.0.0.1:3001"], "backend-secret": "0123456789abcdef",
             "backend-connect-hook": "/switchboard/connect", "allowed-origins": ["https://chat.example.com"],
             "streams": [
               {"pattern": "/rooms/*", "history": {"size": 500, "age": 86400}, "retention": "log", "subscribe": "backend", "publish": "backend"},
               {"pattern": "/users/{user}/**", "subscribe": "owner", "presence": false},
               {"pattern": "/ticks/**", "history": "none", "subscribe": "anyone"}
             ]}
            """#)
        let ok = try await Self.run(["config", "check", good])
        #expect(ok.status == 0, "\(ok.output)")
        #expect(
            ok.output.contains("stream /rooms/*: subscribe backend, publish backend, presence on, history 500 messages, 86400.0 s, retention log"))
        #expect(ok.output.contains("stream /users/{user}/**: subscribe owner, publish none, presence off"))
        #expect(ok.output.contains("stream /ticks/**: subscribe anyone, publish none, presence on, no history"))
        #expect(ok.output.contains("backend: /=http://127.0.0.1:3000, /api=http://127.0.0.1:3001; signed"))
        #expect(!ok.output.contains("0123456789abcdef"), "the secret is never printed")

        let cases: [(String, String)] = [
            (#"{"streams": {"pattern": "/a/*"}}"#, "'streams' must be an array of objects"),
            (#"{"streams": [{"pattern": "/a/*", "subscibe": "anyone"}]}"#, "streams[0]: unknown key 'subscibe'"),
            (#"{"streams": [{"subscribe": "anyone"}]}"#, "streams[0]: 'pattern' must be a string"),
            (#"{"streams": [{"pattern": "rooms/*"}]}"#, "streams[0]: the pattern 'rooms/*' must start with /"),
            (#"{"streams": [{"pattern": "/a/**/b"}]}"#, "streams[0]: in '/a/**/b', ** may only be the last segment"),
            (#"{"streams": [{"pattern": "/a/*"}, {"pattern": "/b/*", "subscribe": "owner"}]}"#, "streams[1]: '/b/*': subscribe 'owner' needs {user}"),
            (
                #"{"streams": [{"pattern": "/a/*", "subscribe": "everyone"}]}"#,
                "'subscribe' must be one of 'anyone', 'authenticated', 'owner', 'backend', 'none'"
            ),
            (#"{"streams": [{"pattern": "/a/*", "retention": "forever"}]}"#, "'retention' must be one of 'queue', 'log'"),
            (#"{"streams": [{"pattern": "/a/*", "history": {"size": -1}}]}"#, "history size must be an integer 0…100000000"),
            (#"{"streams": [{"pattern": "/a/*", "history": {"age": 0}}]}"#, "history age must be a number of seconds"),
            (#"{"streams": [{"pattern": "/a/*", "history": "all"}]}"#, "'history' must be \"none\" or an object"),
            (#"{"streams": [{"pattern": "/a/*", "presence": "yes"}]}"#, "'presence' must be true or false"),
            (#"{"streams": [{"pattern": "/sessions/*"}]}"#, "/sessions is the node's own"),
            (#"{"streams": [{"pattern": "/api/**"}]}"#, "/api is the node's own"),
            (#"{"streams": [{"pattern": "/**"}]}"#, "the first segment must be a name, not a wildcard"),
            (#"{"backends": ["http://x"], "backend-connect-hook": "/c"}"#, "give the pages' origins with --allowed-origin"),
            (#"{"streams": [{"pattern": "/a/*", "publish": "backend"}]}"#, "the rule '/a/*' asks the backend, but no --backend is given"),
            (#"{"backends": ["ftp://x"]}"#, "--backend 'ftp://x': backend URL 'ftp://x' must be http:// or https://"),
            (#"{"backends": ["api=http://x"]}"#, "--backend 'api=http://x'"),
            (#"{"backend-secret": "0123456789abcdef"}"#, "--backend-secret is set but no --backend is given"),
            (#"{"backends": ["http://x"], "backend-secret": "short"}"#, "--backend-secret must be at least 16 bytes"),
            (#"{"backends": ["http://x"], "backend-meta": ["Tenant"]}"#, "--backend-meta 'Tenant' is not a META key"),
            (#"{"backends": ["http://x"], "backend-timeout": 0}"#, "--backend-timeout must be a number above 0"),
            (
                #"{"backends": ["http://x"], "backend-connect-hook": "connect", "allowed-origins": ["http://x.example"]}"#,
                "--backend-connect-hook must be a path starting with '/'"
            ),
        ]
        for (json, message) in cases {
            let result = try await Self.run(["config", "check", try Self.file(json)])
            #expect(result.status != 0, "\(json) was accepted")
            #expect(result.output.contains(message), "\(json): \(result.output)")
        }
    }

    /// A bad value in the environment is refused even when the flag it would add to is given
    /// (the flag alone would start the node, hiding the typo).
    @Test func aBadBooleanInTheEnvironmentIsRefusedEvenBesideItsFlag() async throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: NodeProcess.binary)
        p.arguments = ["serve", "--allow-anonymous", "--port", "0", "--log-level", "warning"]
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SWITCHBOARD_") }
        env["SWITCHBOARD_ALLOW_ANONYMOUS"] = "maybe"
        p.environment = env
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let deadline = ContinuousClock.now + .seconds(20)
        while p.isRunning, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(output.contains("SWITCHBOARD_ALLOW_ANONYMOUS must be 1 or 0, got 'maybe'"), "\(output)")
    }

    /// `switchboard token` signs with what `serve` reads (flag, environment, file, key set), and a
    /// node started with the same settings accepts the token with its user and roles.
    @Test func theTokenCommandSignsWhatANodeWithTheSameSettingsAccepts() async throws {
        let secret = "a-secret-of-at-least-32-bytes-long!!"
        let flag = try await Self.run(["token", "--jwt-secret", secret, "--sub", "ann", "--roles", "admin,ops", "--ttl", "15m"])
        #expect(flag.status == 0, "\(flag.output)")
        let identity = try await TokenVerifier.hs256(secret: secret).verify(flag.output.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(identity.user == "ann" && identity.roles == ["admin", "ops"])
        #expect(abs(identity.expiresAt.timeIntervalSinceNow - 900) < 60)
        // The environment and the config file, as serve reads them.
        let env = try await Self.run(["token", "--sub", "bob"], environment: ["SWITCHBOARD_JWT_SECRET": secret])
        #expect(try await TokenVerifier.hs256(secret: secret).verify(env.output.trimmingCharacters(in: .whitespacesAndNewlines)).user == "bob")
        let file = try await Self.run(["token", "--sub", "cy", "--config", try Self.file(#"{"jwt-secret": "\#(secret)"}"#)])
        #expect(try await TokenVerifier.hs256(secret: secret).verify(file.output.trimmingCharacters(in: .whitespacesAndNewlines)).user == "cy")
        // An oct key of a key set, chosen by kid; the node verifying that set accepts it.
        let jwks = try Self.file(
            #"{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"\#(Data(secret.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: ""))"}]}"#
        )
        let keyed = try await Self.run(["token", "--jwt-jwks", jwks, "--sub", "dee"])
        #expect(keyed.status == 0, "\(keyed.output)")
        let verifier = try await TokenVerifier.jwks(json: try String(contentsOfFile: jwks, encoding: .utf8))
        #expect(try await verifier.verify(keyed.output.trimmingCharacters(in: .whitespacesAndNewlines)).user == "dee")
        // Refused with the reason.
        for (arguments, message) in [
            (["token", "--sub", "ann"], "no secret"),
            (["token", "--jwt-secret", "short", "--sub", "ann"], "at least 32 bytes long (this one has 5)"),
            (["token", "--jwt-secret", secret, "--sub", "ann", "--ttl", "soon"], "--ttl must be a positive duration"),
            (["token", "--jwt-secret", secret, "--sub", ""], "--sub must not be empty"),
        ] {
            let result = try await Self.run(arguments)
            #expect(result.status != 0)
            #expect(result.output.contains(message), "\(arguments): \(result.output)")
        }
    }

    @Test func aFlagWinsOverTheEnvironmentWhichWinsOverTheFile() async throws {
        let port = try await freePort()
        let path = try Self.file(#"{"port": \#(port), "node-id": "from-file", "allow-anonymous": true, "log-level": "warning"}"#)
        for (environment, flags, expected) in [
            ([String: String](), [String](), "from-file"),
            (["SWITCHBOARD_NODE_ID": "from-env"], [], "from-env"),
            (["SWITCHBOARD_NODE_ID": "from-env"], ["--node-id", "from-flag"], "from-flag"),
        ] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: NodeProcess.binary)
            p.arguments = ["serve", "--config", path] + flags
            var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SWITCHBOARD_") }
            env.merge(environment) { $1 }
            p.environment = env
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            defer {
                kill(p.processIdentifier, SIGKILL)
                p.waitUntilExit()
            }
            // The port came from the file: the node answers there.
            var node: String?
            _ = try await eventually(timeout: .seconds(20)) {
                guard let data = try? await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/health")!).0,
                    let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
                else { return false }
                node = json["node"] as? String
                return true
            }
            #expect(node == expected)
        }
    }
}
