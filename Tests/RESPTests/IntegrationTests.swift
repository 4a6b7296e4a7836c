import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import RedisTestSupport
import Testing

@testable import RESP

@Suite(.timeLimit(.minutes(1)))
struct IntegrationTests {
    @Test func replyTypesAgainstRealServer() async throws {
        try await withRedis { server in
            let c = try await RESPConnection.connect(configuration: server.configuration)
            defer { Task { await c.close() } }
            #expect(c.protocolVersion == 3)
            #expect(try await c.send("SET", "k", "v") == .simpleString(ByteBuffer(string: "OK")))
            #expect(try await c.get("k")?.text == "v")
            #expect(try await c.send("INCR", "n") == .integer(1))
            #expect(try await c.send("GET", "missing") == .null)
            _ = try await c.hset("h", fields: [("a", "1"), ("b", .bytes(ByteBuffer(string: "2")))])
            let h = try await c.send("HGETALL", "h")
            guard case .map(let entries) = h else {
                Issue.record("HGETALL not map: \(h)")
                return
            }
            #expect(entries.count == 2)
            #expect(try await c.hgetall("h").mapValues(\.text) == ["a": "1", "b": "2"])
            _ = try await c.sadd("s", members: ["x", "y"])
            let s = try await c.send("SMEMBERS", "s")
            guard case .set(let members) = s else {
                Issue.record("SMEMBERS not set: \(s)")
                return
            }
            #expect(Set(members.compactMap(\.string)) == ["x", "y"])
            let hello = try await c.send("HELLO", "3")
            #expect(hello.stringMap?["proto"] == .integer(3))
            _ = try await c.zadd("z", members: [(2.5, "m"), (1, "n")])
            #expect(try await c.send("ZSCORE", "z", "m") == .double(2.5))
            #expect(try await c.send("EVAL", "redis.setresp(3); return {double=3.5}", 0) == .double(3.5))
            #expect(try await c.send("EVAL", "redis.setresp(3); return true", 0) == .boolean(true))
            #expect(try await c.send("EVAL", "redis.setresp(3); return false", 0) == .boolean(false))
            let big = try await c.send("EVAL", "redis.setresp(3); return {big_number='123456789012345678901234567890'}", 0)
            #expect(big == .bigNumber(ByteBuffer(string: "123456789012345678901234567890")))
            let info = try await c.send("CLIENT", "INFO")
            guard case .verbatimString(let fmt, let body) = info else {
                Issue.record("CLIENT INFO not verbatim: \(info)")
                return
            }
            #expect(fmt == "txt" && body.text.contains("id="))
            // The server's own samples of each RESP3 type.
            #expect(try await c.send("DEBUG", "PROTOCOL", "attrib").string == "Some real reply following the attribute")
            #expect(try await c.send("DEBUG", "PROTOCOL", "bignum") == .bigNumber(ByteBuffer(string: "1234567999999999999999999999999999999")))
            #expect(try await c.send("DEBUG", "PROTOCOL", "double") == .double(3.141))
            #expect(try await c.send("DEBUG", "PROTOCOL", "null") == .null)
            #expect(try await c.send("DEBUG", "PROTOCOL", "false") == .boolean(false))
            #expect(
                try await c.send("DEBUG", "PROTOCOL", "verbatim") == .verbatimString(format: "txt", ByteBuffer(string: "This is a verbatim\nstring")))
            #expect(
                try await c.send("DEBUG", "PROTOCOL", "map")
                    == .map([(.integer(0), .boolean(false)), (.integer(1), .boolean(true)), (.integer(2), .boolean(false))]))
            #expect(try await c.send("DEBUG", "PROTOCOL", "set") == .set([.integer(0), .integer(1), .integer(2)]))
            let arr = try await c.send("EVAL", "return {1, 'two', {3}}", 0)
            #expect(arr == .array([.integer(1), .blobString(ByteBuffer(string: "two")), .array([.integer(3)])]))
            await #expect(throws: RESPError.server(code: "WRONGTYPE", message: "Operation against a key holding the wrong kind of value")) {
                _ = try await c.send("GET", "h")
            }
            await #expect(throws: RESPError.self) { _ = try await c.send("NOSUCHCOMMAND") }
            // Typed commands.
            #expect(try await c.set("e", "1", expiration: .seconds(100), condition: .ifNotExists))
            #expect(try await !c.set("e", "2", condition: .ifNotExists))
            #expect(try await c.set("e", "3", expiration: .milliseconds(100000)))
            #expect(try await c.expire("e", seconds: 50))
            #expect(try await c.hincrby("h", field: "a", by: 5) == 6)
            #expect(try await c.hget("h", field: "a")?.text == "6")
            #expect(try await c.hget("h", field: "zz") == nil)
            let id1 = try await c.xadd("st", id: "1-1", fields: [("f", "a")])
            #expect(id1 == "1-1")
            _ = try await c.xadd("st", maxLength: 1000, fields: [("f", "b")])
            let range = try await c.xrange("st")
            #expect(range.count == 2 && range[0].id == "1-1" && range[0].value("f")?.text == "a")
            #expect(try await c.xrevrange("st", count: 1).first?.value("f")?.text == "b")
            #expect(try await c.xtrim("st", maxLength: 1, approximate: false) == 1)
            #expect(try await c.zrangebyscore("z", min: "-inf", max: "+inf").map(\.text) == ["n", "m"])
            #expect(try await c.zrangebyscore("z", min: 2, max: 3).map(\.text) == ["m"])
            #expect(try await c.zrem("z", members: ["m"]) == 1)
            #expect(try await c.srem("s", members: ["x"]) == 1)
            #expect(try await c.smembers("s").map(\.text) == ["y"])
            #expect(try await c.del("k", "n", "missing") == 2)
            #expect(try await c.publish("nobody", "x") == 0)
            #expect(try await c.spublish("nobody", "x") == 0)
        }
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")))
    func tlsConnection() async throws {
        let cert = try makeTestCertificate()
        defer { try? FileManager.default.removeItem(atPath: cert.dir) }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(cert.cert))
        let args = [
            "--tls-cert-file", cert.cert, "--tls-key-file", cert.key, "--tls-ca-cert-file", cert.cert,
            "--tls-auth-clients", "no", "--requirepass", "pw",
        ]
        try await withRedis(args, tls: tls) { server in
            var cfg = server.configuration
            cfg.password = "pw"
            let c = try await RESPConnection.connect(configuration: cfg)
            defer { Task { await c.close() } }
            #expect(c.protocolVersion == 3)
            #expect(try await c.send("ECHO", "over tls") == .blobString(ByteBuffer(string: "over tls")))
            // Untrusted certificate is rejected.
            var untrusted = cfg
            untrusted.tls = TLSConfiguration.makeClientConfiguration()
            await #expect(throws: (any Error).self) { _ = try await RESPConnection.connect(configuration: untrusted) }
        }
    }

    @Test func resp2Mode() async throws {
        try await withRedis { server in
            var cfg = server.configuration
            cfg.protocolVersion = 2
            cfg.clientName = "resp2client"
            cfg.database = 3
            let c = try await RESPConnection.connect(configuration: cfg)
            defer { Task { await c.close() } }
            #expect(c.protocolVersion == 2)
            _ = try await c.hset("h", field: "a", value: 1)
            #expect(try await c.send("HGETALL", "h") == .array([.blobString(ByteBuffer(string: "a")), .blobString(ByteBuffer(string: "1"))]))
            #expect(try await c.hgetall("h")["a"]?.text == "1")
            #expect(try await c.send("CLIENT", "GETNAME").string == "resp2client")
            #expect(try await c.send("CLIENT", "INFO").string?.contains("db=3") == true)
        }
    }

    @Test func fiveThousandConcurrentCommands() async throws {
        try await withRedis { server in
            let c = try await RESPConnection.connect(configuration: server.configuration)
            defer { Task { await c.close() } }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<5000 {
                    group.addTask {
                        let n = try await c.send("INCRBY", .string("key:\(i)"), .int(i))
                        #expect(n == .integer(Int64(i)))
                        let v = try await c.get("key:\(i)")
                        #expect(v?.text == String(i))
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    @Test func timeoutKeepsPairing() async throws {
        try await withRedis { server in
            let c = try await RESPConnection.connect(configuration: server.configuration)
            defer { Task { await c.close() } }
            await #expect(throws: RESPError.timeout) {
                _ = try await c.send(RESPCommand("DEBUG", "SLEEP", "0.3"), timeout: .milliseconds(50))
            }
            #expect(try await c.send("ECHO", "after") == .blobString(ByteBuffer(string: "after")))
            // Cancellation behaves the same way (Redis sleeps long enough that a busy machine
            // cannot deliver the reply before the cancellation).
            let t = Task { try await c.send(RESPCommand("DEBUG", "SLEEP", "1.5")) }
            try await Task.sleep(for: .milliseconds(100))
            t.cancel()
            await #expect(throws: CancellationError.self) { _ = try await t.value }
            #expect(try await c.send("ECHO", "again") == .blobString(ByteBuffer(string: "again")))
            #expect(try await c.incr("cnt") == 1)
        }
    }

    @Test func connectionLossFailsPending() async throws {
        try await withRedis { server in
            let c = try await RESPConnection.connect(configuration: server.configuration)
            let pending = Task { try await c.send(RESPCommand("DEBUG", "SLEEP", "0.5")) }
            try await Task.sleep(for: .milliseconds(50))
            await c.close()
            await #expect(throws: RESPError.connectionClosed) { _ = try await pending.value }
            // Nothing is sent on a closed connection: the caller learns it was not sent.
            await #expect(throws: RESPError.notConnected) { _ = try await c.send("PING") }
        }
    }

    @Test func pubSubAcrossConnections() async throws {
        try await withRedis { server in
            let pub = try await RESPConnection.connect(configuration: server.configuration)
            let sub = try await RESPSubscriber.connect(configuration: server.configuration)
            defer {
                Task {
                    await pub.close()
                    await sub.close()
                }
            }
            let s1 = try await sub.subscribe(["a", "b", "a"])
            #expect(s1.channels == ["a", "b"])
            let s2 = try await sub.subscribe(["a"])
            let received = NIOLockedValueBox<[String]>([])
            let h = try await sub.subscribe(["news.*"], kind: .pattern) { (m: RESPMessage) in
                received.withLockedValue { $0.append("\(m.pattern ?? ""):\(m.channel):\(m.payload.text)") }
            }
            #expect(try await pub.publish("a", "hello") == 1)  // one server-side subscriber connection
            #expect(try await pub.publish("b", .bytes(ByteBuffer(string: "world"))) == 1)
            #expect(try await pub.publish("news.x", "n1") == 1)
            var it = s1.messages.makeAsyncIterator()
            let m1 = await it.next()
            #expect(m1?.channel == "a" && m1?.payload.text == "hello")
            let m2 = await it.next()
            #expect(m2?.channel == "b" && m2?.payload.text == "world")
            var it2 = s2.messages.makeAsyncIterator()
            #expect(await it2.next()?.payload.text == "hello")
            try await eventually { received.withLockedValue { $0.count } == 1 }
            #expect(received.withLockedValue { $0 } == ["news.*:news.x:n1"])
            // Reference counting: "a" stays subscribed until the last local subscriber leaves.
            try await s1.unsubscribe()
            #expect(await it.next() == nil)
            #expect(try await pub.send("PUBSUB", "NUMSUB", "a", "b").array?[1] == .integer(1))
            #expect(try await pub.send("PUBSUB", "NUMSUB", "a", "b").array?[3] == .integer(0))
            try await s2.unsubscribe()
            #expect(try await pub.send("PUBSUB", "NUMSUB", "a").array?[1] == .integer(0))
            try await h.unsubscribe()
            #expect(try await pub.send("PUBSUB", "NUMPAT") == .integer(0))
            // The subscriber connection still serves regular commands.
            #expect(try await sub.connection?.send("PING") == .simpleString(ByteBuffer(string: "PONG")))
            // Sharded pub/sub.
            let sh = try await sub.subscribe(["shard1"], kind: .shard)
            #expect(try await pub.spublish("shard1", "s") == 1)
            var it3 = sh.messages.makeAsyncIterator()
            let m3 = await it3.next()
            #expect(m3?.kind == .shard && m3?.payload.text == "s")
            try await sh.unsubscribe()
        }
    }

    @Test func concurrentSubscribersOfOneChannel() async throws {
        try await withRedis { server in
            let pub = try await RESPConnection.connect(configuration: server.configuration)
            let sub = try await RESPSubscriber.connect(configuration: server.configuration)
            defer {
                Task {
                    await pub.close()
                    await sub.close()
                }
            }
            let count = NIOLockedValueBox(0)
            try await withThrowingTaskGroup(of: RESPSubscription.self) { group in
                for _ in 0..<50 {
                    group.addTask { try await sub.subscribe(["shared", "c2"]) { _, _ in count.withLockedValue { $0 += 1 } } }
                }
                var subs: [RESPSubscription] = []
                for try await s in group { subs.append(s) }
                // Every subscribe call returned after the server confirmed: the publish reaches all 50.
                #expect(try await pub.publish("shared", "x") == 1)
                try await eventually { count.withLockedValue { $0 } == 50 }
                #expect(count.withLockedValue { $0 } == 50)
                #expect(sub.subscribedChannels() == ["shared", "c2"])
                for s in subs { try await s.unsubscribe() }
            }
            #expect(sub.subscribedChannels().isEmpty)
            #expect(try await pub.send("PUBSUB", "NUMSUB", "shared", "c2").array?.compactMap(\.int) == [0, 0])
        }
    }

    @Test func noscriptRecovery() async throws {
        try await withRedis { server in
            let c = try await RESPConnection.connect(configuration: server.configuration)
            defer { Task { await c.close() } }
            let script = RESPScript(source: "return redis.call('INCRBY', KEYS[1], ARGV[1])")
            _ = try await c.send("SCRIPT", "FLUSH")
            #expect(try await c.run(script, keys: ["ctr"], args: [5]) == .integer(5))
            #expect(try await c.run(script, keys: ["ctr"], args: [2]) == .integer(7))
            #expect(try await c.send("SCRIPT", "EXISTS", .string(script.sha1)) == .array([.integer(1)]))
            _ = try await c.send("SCRIPT", "FLUSH")
            #expect(try await c.run(script, keys: ["ctr"], args: [1]) == .integer(8))
            await #expect(throws: RESPError.self) { _ = try await c.evalsha(String(repeating: "0", count: 40)) }
        }
    }

    @Test func authFailureAndSuccess() async throws {
        try await withRedis(["--requirepass", "s3cret"]) { server in
            var bad = server.configuration
            bad.password = "wrong"
            await #expect {
                _ = try await RESPConnection.connect(configuration: bad)
            } throws: { error in
                guard case RESPError.server(let code, _) = error else { return false }
                return code == "WRONGPASS"
            }
            var bad2 = bad
            bad2.protocolVersion = 2
            await #expect {
                _ = try await RESPConnection.connect(configuration: bad2)
            } throws: { error in
                guard case RESPError.server(let code, _) = error else { return false }
                return code == "WRONGPASS"
            }
            await #expect {
                _ = try await RESPConnection.connect(configuration: server.configuration)
            } throws: { error in
                guard case RESPError.server(let code, _) = error else { return false }
                return code == "NOAUTH"
            }
            var good = server.configuration
            good.password = "s3cret"
            good.clientName = "gw"
            let c = try await RESPConnection.connect(configuration: good)
            #expect(c.protocolVersion == 3)
            #expect(try await c.send("CLIENT", "GETNAME").string == "gw")
            await c.close()
        }
    }

    @Test func garbageServerGivesProtocolError() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(GarbageHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { server.close(promise: nil) }
        let port = server.localAddress!.port!
        for version in [3, 2] {
            do {
                let c = try await RESPConnection.connect(configuration: .init(port: port, protocolVersion: version))
                _ = try await c.send("PING")
                Issue.record("expected protocol error")
            } catch let e as RESPError {
                guard case .protocolError(let msg) = e else {
                    Issue.record("wrong error \(e)")
                    continue
                }
                #expect(!msg.isEmpty)
            }
        }
    }

    @Test func helloFallbackToRESP2() async throws {
        let log = NIOLockedValueBox<[String]>([])
        let server = try await fakeRedis { OldRedisHandler(log: log) }
        defer { server.close(promise: nil) }
        let cfg = RESPConfiguration(port: server.localAddress!.port!, username: "u", password: "pw", clientName: "gw", database: 2)
        let c = try await RESPConnection.connect(configuration: cfg)
        #expect(c.protocolVersion == 2)
        #expect(try await c.ping() == .simpleString(ByteBuffer(string: "PONG")))
        await c.close()
        #expect(log.withLockedValue { $0 } == ["HELLO 3 AUTH u pw SETNAME gw", "AUTH u pw", "CLIENT SETNAME gw", "SELECT 2", "PING"])
    }

    /// A cluster that answers CLUSTERDOWN (a failover in progress, full coverage required) is
    /// retried for the client's time budget, not a count of attempts: a short outage is ridden
    /// over, a long one fails with the cluster's own error once the budget is spent.
    @Test func clusterDownIsRetriedForTheBudget() async throws {
        let downUntil = NIOLockedValueBox(ContinuousClock.now)
        let server = try await fakeRedis { ClusterDownHandler(downUntil: downUntil) }
        defer { server.close(promise: nil) }
        let node = RESPClusterClient.Node(host: "127.0.0.1", port: server.localAddress!.port!)
        let client = try await RESPClusterClient.connect(seeds: [node], configuration: .init(port: node.port), retryBudget: .seconds(5))
        defer { Task { await client.close() } }
        let start = ContinuousClock.now
        downUntil.withLockedValue { $0 = start + .milliseconds(1500) }
        #expect(try await client.send(RESPCommand("GET", "k"), routingKey: "k").string == "v")
        #expect(ContinuousClock.now - start >= .milliseconds(1400))

        downUntil.withLockedValue { $0 = .now + .seconds(60) }
        let short = try await RESPClusterClient.connect(seeds: [node], configuration: .init(port: node.port), retryBudget: .seconds(1))
        defer { Task { await short.close() } }
        let failed = ContinuousClock.now
        await #expect(throws: RESPError.server(code: "CLUSTERDOWN", message: "The cluster is down")) {
            _ = try await short.send(RESPCommand("GET", "k"), routingKey: "k")
        }
        #expect(ContinuousClock.now - failed < .seconds(4))
    }

    @Test func clientReconnectsAndResubscribes() async throws {
        try await withRedis { server in
            let client = RESPClient(
                configuration: server.configuration,
                reconnectPolicy: .init(initialDelay: .milliseconds(20), maxDelay: .milliseconds(200)))
            var events = client.events.makeAsyncIterator()
            await #expect(throws: RESPError.notConnected) { _ = try await client.send("PING") }
            client.start()
            #expect(await events.next() == .connected)
            let received = NIOLockedValueBox<[String]>([])
            let sub = try await client.subscribe(["news"]) { channel, payload in
                received.withLockedValue { $0.append("\(channel)=\(payload.text)") }
            }
            #expect(try await client.publish("news", "one") == 1)
            try await eventually { received.withLockedValue { $0.count } == 1 }

            server.stop()
            #expect(await events.next() == .disconnected)
            // Fails at once, not after the 10 s command timeout: nothing waits for Redis to return.
            let start = ContinuousClock.now
            await #expect(throws: RESPError.notConnected) { _ = try await client.send("PING") }
            #expect(ContinuousClock.now - start < .seconds(5))
            // Subscribing while disconnected registers locally.
            let later = try await client.subscribe(["later"])

            try await server.start()
            #expect(await events.next() == .reconnected)
            #expect(try await client.ping() == .simpleString(ByteBuffer(string: "PONG")))
            #expect(try await client.publish("news", "two") == 1)
            #expect(try await client.publish("later", "three") == 1)
            var it = later.messages.makeAsyncIterator()
            #expect(await it.next()?.payload.text == "three")
            try await eventually { received.withLockedValue { $0.count } >= 2 }
            #expect(received.withLockedValue { $0 } == ["news=one", "news=two"])
            try await sub.unsubscribe()
            await client.shutdown()
            #expect(await events.next() == nil)
            await #expect(throws: RESPError.shutdown) { _ = try await client.send("PING") }
        }
    }
}

/// Fake server speaking RESP2 only: HELLO is an unknown command.
final class OldRedisHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = RESPValue
    typealias OutboundOut = ByteBuffer
    let log: NIOLockedValueBox<[String]>
    init(log: NIOLockedValueBox<[String]>) { self.log = log }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let args = unwrapInboundIn(data).array?.compactMap(\.string) ?? []
        log.withLockedValue { $0.append(args.joined(separator: " ")) }
        let reply: String
        switch args.first?.uppercased() {
        case "HELLO": reply = "-ERR unknown command 'HELLO'\r\n"
        case "AUTH": reply = args.last == "pw" ? "+OK\r\n" : "-WRONGPASS bad\r\n"
        case "CLIENT", "SELECT": reply = "+OK\r\n"
        case "PING": reply = "+PONG\r\n"
        default: reply = "-ERR unknown\r\n"
        }
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: reply)), promise: nil)
    }
}

final class GarbageHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "!!garbage\r\n")), promise: nil)
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

/// A loopback server that decodes RESP and answers with a fresh `handler()` per connection.
func fakeRedis<Handler: ChannelInboundHandler>(_ handler: @escaping @Sendable () -> Handler) async throws -> any Channel
where Handler.InboundIn == RESPValue {
    try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPDecoder()))
                try channel.pipeline.syncOperations.addHandler(handler())
            }
        }
        .bind(host: "127.0.0.1", port: 0).get()
}

/// One cluster node that owns every slot and answers CLUSTERDOWN until `downUntil`.
final class ClusterDownHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = RESPValue
    typealias OutboundOut = ByteBuffer
    let downUntil: NIOLockedValueBox<ContinuousClock.Instant>
    init(downUntil: NIOLockedValueBox<ContinuousClock.Instant>) { self.downUntil = downUntil }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let args = unwrapInboundIn(data).array?.compactMap(\.string) ?? []
        let port = context.channel.localAddress?.port ?? 0
        let reply: String
        switch args.first?.uppercased() {
        case "HELLO": reply = "-ERR unknown command 'HELLO'\r\n"
        case "CLUSTER": reply = "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:\(port)\r\n"
        case "GET": reply = ContinuousClock.now < downUntil.withLockedValue({ $0 }) ? "-CLUSTERDOWN The cluster is down\r\n" : "$1\r\nv\r\n"
        default: reply = "+OK\r\n"
        }
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: reply)), promise: nil)
    }
}
