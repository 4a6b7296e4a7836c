import Foundation
import Hummingbird
import NIOCore
import Switchboard
import SwitchboardTesting
import Testing

@testable import SwitchboardBridge

/// The HTTP backend bridge (docs/backend.md) against a real Express application in Node.js,
/// which checks every request's signature: request frames no route answers, the subscribe hook,
/// `publish: backend`, and everything that can go wrong between the two.
@Suite("Backend bridge", .serialized, .timeLimit(.minutes(3)))
struct BackendBridgeTests {
    static let rules = [
        try! StreamRule.test("/rooms/*", storage: StreamStorage(retention: .log), subscribe: .authenticated, publish: .backend),
        try! StreamRule.test("/clubs/**", subscribe: .backend),
    ]

    static func reply(_ socket: RawSocket, _ request: String, id: String) async throws -> Parsed {
        try await StreamRulesTests.reply(socket, request, id: id)
    }

    static func json(_ text: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] ?? [:]
    }

    @Test func aRequestFrameIsAnsweredByTheBackendsRouteAndMiddleware() async throws {
        try await ExpressBackend.with { app in
            // `switchboard-user` is an allowed META key here: it still never becomes the identity.
            try await ExpressBackend.bridge(to: app.url, { $0.metaKeys = ["tenant", "switchboard-user"] }) { bridge in
                try await withRulesNode(.memory, rules: Self.rules, backend: bridge) { node in
                    let (ann, session) = try await node.raw(user: "ann", roles: ["editor"])
                    let hello = try await Self.reply(ann, "GET|/hello?x=1|r=1|", id: "1")
                    #expect(hello.head == "GET200")
                    let body = try Self.json(hello.body)
                    #expect(body["user"] as? String == "ann")
                    #expect(body["transport"] as? String == "websocket")
                    #expect((body["query"] as? [String: String])?["x"] == "1")
                    // The backend's own validation and status, and its Location as META.
                    let created = try await Self.reply(ann, "POST|/notes|r=2|{\"text\":\"hi\"}", id: "2")
                    #expect(created.head == "POST201")
                    #expect(created.meta["location"] == "/notes/1")
                    #expect(try await Self.reply(ann, "POST|/notes|r=3|{}", id: "3").head == "POST422")
                    // Its role check.
                    #expect(try await Self.reply(ann, "GET|/admin|r=4|", id: "4").head == "GET403")
                    let (root, _) = try await node.raw(user: "root", roles: ["admin"])
                    #expect(try await Self.reply(root, "GET|/admin|r=1|", id: "1").head == "GET200")
                    // Anonymous: the backend's login check.
                    let (guest, _) = try await node.raw(user: nil)
                    #expect(try await Self.reply(guest, "GET|/admin|r=1|", id: "1").head == "GET401")
                    // What reached the backend: the identity, signed; only allowed META; no forgery.
                    let seen = try Self.json(
                        try await Self.reply(
                            ann,
                            "GET|/headers|r=5;tenant=acme;switchboard-user=mallory;x-other=1;traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01|",
                            id: "5"
                        ).body)
                    #expect(seen["switchboard-user"] as? String == "ann")
                    #expect(seen["switchboard-roles"] as? String == "editor")
                    #expect(seen["switchboard-session"] as? String == session)
                    #expect(seen["switchboard-transport"] as? String == "websocket")
                    #expect(seen["switchboard-meta-tenant"] as? String == "acme")
                    #expect(seen["switchboard-meta-switchboard-user"] as? String == "mallory")
                    #expect(seen["switchboard-meta-x-other"] == nil)
                    #expect(seen["traceparent"] as? String == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                    #expect((seen["switchboard-signature"] as? String)?.hasPrefix("v1=") == true)
                }
            }
        }
    }

    @Test func aWrongSecretIsRefusedByTheBackend() async throws {
        try await ExpressBackend.with { app in
            try await ExpressBackend.bridge(to: app.url, { $0.secret = "another-secret-0123456789" }) { bridge in
                try await withRulesNode(.memory, rules: Self.rules, backend: bridge) { node in
                    let (ann, _) = try await node.raw(user: "ann")
                    #expect(try await Self.reply(ann, "GET|/hello|r=1|", id: "1").head == "GET401")
                }
            }
        }
    }

    @Test(arguments: EngineKind.allCases)
    func theBackendDecidesSubscriptionsAndWhatIsPublished(_ kind: EngineKind) async throws {
        try await ExpressBackend.with { app in
            try await ExpressBackend.bridge(to: app.url) { bridge in
                try await withRulesNode(kind, rules: Self.rules, backend: bridge) { node in
                    let (ann, _) = try await node.raw(user: "ann")
                    #expect(try await Self.reply(ann, "SUB|/clubs/chess|r=1|", id: "1").head == "SUB200")
                    #expect(try await Self.reply(ann, "SUB|/clubs/vip/golf|r=2|", id: "2").head == "SUB403")
                    #expect(try await Self.reply(ann, "SUB|/clubs/a/missing|r=3|", id: "3").head == "SUB404")
                    let (vip, _) = try await node.raw(user: "vic", roles: ["vip"])
                    #expect(try await Self.reply(vip, "SUB|/clubs/vip/golf|r=1|", id: "1").head == "SUB200")

                    #expect(try await Self.reply(ann, "SUB|/rooms/lobby|r=4|", id: "4").head == "SUB200")
                    try await ann.send("POST|/rooms/lobby|r=5|{\"text\":\"hi\"}")
                    // The reply and the message itself, in either order.
                    var published: Parsed?
                    var push: Parsed?
                    while published == nil || push == nil {
                        let frame = Parsed(try await ann.nextText())
                        if frame.meta["r"] == "5" { published = frame } else if frame.head.hasPrefix("PUSH") { push = frame }
                    }
                    #expect(published?.head == "POST201")
                    #expect(published?.body.contains("\"offset\":1") == true)
                    guard let push else { return }
                    #expect(push.target == "/rooms/lobby")
                    #expect(try Self.json(push.body)["by"] as? String == "ann")
                    // Refused by the backend: its status, nothing published.
                    #expect(try await Self.reply(ann, "POST|/rooms/lobby|r=6|{\"text\":\"\"}", id: "6").head == "POST422")
                    if case .messages(let all, _) = try await node.publisher.history(of: "/rooms/lobby", after: 0, limit: 10) {
                        #expect(all.count == 1)
                    }
                }
            }
        }
    }

    @Test func slowBigAndBusyBackendsGetTheirDocumentedStatus() async throws {
        try await ExpressBackend.with { app in
            try await ExpressBackend.bridge(
                to: app.url,
                {
                    $0.timeout = 2
                    $0.maxInFlightPerConnection = 2
                    $0.maxResponseBytes = 64 * 1024
                }
            ) { bridge in
                try await withRulesNode(.memory, rules: Self.rules, backend: bridge) { node in
                    let (ann, _) = try await node.raw(user: "ann")
                    #expect(try await Self.reply(ann, "GET|/slow?ms=6000|r=1|", id: "1").head == "GET504")
                    let big = try await Self.reply(ann, "GET|/big|r=2|", id: "2")
                    #expect(big.head == "GET502")
                    #expect(big.body.contains("backend_response_too_large"))
                    // Per connection: two in flight, the third is 429 at once.
                    for i in 1...3 { try await ann.send("GET|/slow?ms=300|r=c\(i)|") }
                    var heads: [String: String] = [:]
                    for _ in 1...3 {
                        let p = Parsed(try await ann.nextText(where: { $0.contains("r=c") }))
                        heads[p.meta["r"]!] = p.head
                    }
                    #expect(heads["c3"] == "GET429")
                    #expect(heads["c1"] == "GET200" && heads["c2"] == "GET200")
                    // The connection is still served.
                    #expect(try await Self.reply(ann, "GET|/hello|r=3|", id: "3").head == "GET200")
                }
            }
            try await ExpressBackend.bridge(
                to: app.url,
                {
                    $0.maxInFlight = 1
                    $0.timeout = 10
                }
            ) { bridge in
                try await withRulesNode(.memory, rules: Self.rules, backend: bridge) { node in
                    let (ann, _) = try await node.raw(user: "ann")
                    let (bob, _) = try await node.raw(user: "bob")
                    try await ann.send("GET|/slow?ms=3000|r=1|")
                    try await Task.sleep(for: .milliseconds(1000))
                    let busy = try await Self.reply(bob, "GET|/hello|r=1|", id: "1")
                    #expect(busy.head == "GET503")
                    #expect(busy.meta["retry-after"] == "1")
                    #expect(Parsed(try await ann.nextText(where: { $0.contains("r=1") })).head == "GET200")
                }
            }
        }
    }

    @Test func aBackendThatIsDownOrRestartsLeavesNoFrameUnanswered() async throws {
        // Down: nothing listens on the port.
        let app = try await ExpressBackend.start()
        let port = app.port
        app.stop()
        try await ExpressBackend.bridge(
            to: app.url,
            {
                $0.timeout = 2
                $0.maxInFlightPerConnection = 32
            }
        ) { bridge in
            try await withRulesNode(.memory, rules: Self.rules, backend: bridge) { node in
                let (ann, _) = try await node.raw(user: "ann")
                let down = try await Self.reply(ann, "GET|/hello|r=1|", id: "1")
                #expect(down.head == "GET502")
                #expect(try await Self.reply(ann, "SUB|/clubs/chess|r=2|", id: "2").head == "SUB502")
                // Back on the same port: served again, on the same connection.
                let again = try await ExpressBackend.start(port: port)
                #expect(try await Self.reply(ann, "GET|/hello|r=3|", id: "3").head == "GET200")
                // Killed under load: every request gets an answer.
                let (bob, _) = try await node.raw(user: "bob")
                for i in 1...20 {
                    try await ann.send("GET|/slow?ms=\(100 + 20 * i)|r=a\(i)|")
                    try await bob.send("GET|/hello|r=b\(i)|")
                }
                try await Task.sleep(for: .milliseconds(300))
                again.stop()
                var answered: [String: String] = [:]
                for socket in [ann, bob] {
                    for _ in 1...20 {
                        let p = Parsed(try await socket.nextText(where: { $0.hasPrefix("GET") }))
                        answered[p.meta["r"]!] = p.head
                    }
                }
                #expect(answered.count == 40)
                #expect(answered.values.allSatisfy { $0 == "GET200" || $0 == "GET502" })
                #expect(answered.values.contains("GET502"))
            }
        }
    }

    @Test func theDisconnectHookHearsOfAClosedConnection() async throws {
        try await ExpressBackend.with { app in
            try await ExpressBackend.bridge(to: app.url, { $0.disconnectHook = "/switchboard/disconnect" }) { bridge in
                try await withRulesNode(.memory, rules: Self.rules, backend: bridge) { node in
                    let (ann, session) = try await node.raw(user: "ann")
                    await ann.close()
                    let deadline = ContinuousClock.now + .seconds(5)
                    var found = false
                    while !found, ContinuousClock.now < deadline {
                        let http = try await RawSocket.connect(port: app.port)
                        let stats = try Self.json(try await http.http("GET", "/stats").body)
                        await http.close()
                        found =
                            (stats["disconnects"] as? [[String: Any]])?.contains {
                                $0["session"] as? String == session && $0["user"] as? String == "ann"
                            } == true
                        if !found { try await Task.sleep(for: .milliseconds(100)) }
                    }
                    #expect(found)
                }
            }
        }
    }

    @Test func theConnectHookNamesTheUserFromASessionCookie() async throws {
        try await ExpressBackend.with { app in
            try await ExpressBackend.bridge(to: app.url, { $0.connectHook = "/switchboard/connect" }) { bridge in
                try await withRulesNode(.memory, rules: Self.rules, anonymous: false, backend: bridge) { node in
                    let socket = try await RawSocket.connect(port: node.port)
                    let accepted = try await socket.upgrade(headers: ["Cookie": "theme=dark; sid=carol"])
                    #expect(accepted.status == 101)
                    let hello = Parsed(try await socket.nextText())
                    #expect(hello.head == "HELLO200")
                    #expect(hello.body.contains("\"user\":\"carol\""))
                    // Subscribed by the backend: its SUB200 comes with the built-in ones.
                    var subscribed: Set<String> = []
                    for _ in 0..<4 { subscribed.insert(Parsed(try await socket.nextText()).target) }
                    #expect(subscribed.contains("/rooms/lobby"))
                    // The identity the backend gave is the one routes and rules see.
                    let seen = try Self.json(try await Self.reply(socket, "GET|/hello|r=1|", id: "1").body)
                    #expect(seen["user"] as? String == "carol")
                    for (cookie, status) in [(nil, 401), ("sid=expired", 403), ("sid=broken", 502)] as [(String?, Int)] {
                        let refused = try await RawSocket.connect(port: node.port)
                        let reply = try await refused.upgrade(headers: cookie.map { ["Cookie": $0] } ?? [:])
                        #expect(reply.status == status, "cookie \(cookie ?? "none")")
                        await refused.close()
                    }
                }
            }
        }
    }

    @Test func whatABackendMustNotSeeOrSendIsRefused() async throws {
        try await ExpressBackend.with { app in
            try await ExpressBackend.bridge(
                to: app.url,
                {
                    $0.timeout = 2
                    $0.disconnectHook = "/switchboard/disconnect"
                }
            ) { bridge in
                let routes: (Router<SwitchboardRequestContext>) -> Void = { router in
                    router.get("/mine") { _, _ -> String in throw HTTPError(.notFound, message: "none of mine") }
                }
                try await withRulesNode(.memory, rules: Self.rules, backend: bridge, routes: routes) { node in
                    let (ann, _) = try await node.raw(user: "ann")
                    // A status no reply may have is the backend's fault, not the node's end.
                    let odd = try await Self.reply(ann, "GET|/status99|r=1|", id: "1")
                    #expect(odd.head == "GET502")
                    #expect(odd.body.contains("backend_bad_status"))
                    // A head, then a body that stalls: a timeout, like no answer.
                    #expect(try await Self.reply(ann, "GET|/stall|r=2|", id: "2").head == "GET504")
                    // The gateway's hooks are not routes a frame can reach.
                    let forged = try await Self.reply(ann, "POST|/switchboard/disconnect|r=3|{\"user\":\"bob\"}", id: "3")
                    #expect(forged.head == "POST404")
                    // Targets the backend would read differently from what was signed.
                    for (i, target) in ["/hello#x", "/a/../admin", "/%2E%2e/admin", "/x{y}", "/a/./b"].enumerated() {
                        #expect(try await Self.reply(ann, "GET|\(target)|r=t\(i)|", id: "t\(i)").head == "GET400", "\(target)")
                    }
                    // A Swift route's own 404 is its answer, not a reason to ask the backend.
                    let mine = try await Self.reply(ann, "GET|/mine|r=4|", id: "4")
                    #expect(mine.head == "GET404")
                    #expect(!mine.body.contains("backend"))
                    // HTTP requests are not forwarded, and there is no SUB over HTTP.
                    let http = try await RawSocket.connect(port: node.port)
                    #expect(try await http.http("GET", "/hello").status == 404)
                    let sub = try await RawSocket.connect(port: node.port)
                    let subReply = try await sub.http("SUB", "/clubs/chess")
                    // HTTP's parser knows no SUB method: refused before any route or rule.
                    #expect(subReply.status == 400, "\(subReply.status) \(subReply.body)")
                    #expect(try await Self.reply(ann, "GET|/hello|r=5|", id: "5").head == "GET200")
                    let stats = try await RawSocket.connect(port: app.port)
                    let seen = try Self.json(try await stats.http("GET", "/stats").body)
                    #expect((seen["disconnects"] as? [Any])?.isEmpty == true, "the forged disconnect reached the backend")
                }
            }
        }
    }

    @Test func theConnectHookIsAskedOnlyWithoutAToken() async throws {
        try await ExpressBackend.with { app in
            try await ExpressBackend.bridge(to: app.url, { $0.connectHook = "/switchboard/connect" }) { bridge in
                try await withRulesNode(.memory, rules: Self.rules, anonymous: false, backend: bridge) { node in
                    // A token wins: the cookie names nobody here.
                    let (withToken, _) = try await node.raw(user: "dave")
                    #expect(try Self.json(try await Self.reply(withToken, "GET|/hello|r=1|", id: "1").body)["user"] as? String == "dave")
                    // The backend names no user and the node takes no anonymous connections.
                    let anonymous = try await RawSocket.connect(port: node.port)
                    #expect(try await anonymous.upgrade(headers: ["Cookie": "sid=anon"]).status == 401)
                    // A large cookie, as big sites send, reaches the backend whole.
                    let big = try await RawSocket.connect(port: node.port)
                    let filler = String(repeating: "x", count: 4000)
                    #expect(try await big.upgrade(headers: ["Cookie": "pref=\(filler); sid=erin"]).status == 101)
                }
            }
            app.stop()
            try await ExpressBackend.bridge(to: app.url, { $0.connectHook = "/switchboard/connect" }) { bridge in
                try await withRulesNode(.memory, rules: Self.rules, anonymous: false, backend: bridge) { node in
                    let down = try await RawSocket.connect(port: node.port)
                    #expect(try await down.upgrade(headers: ["Cookie": "sid=carol"]).status == 502)
                }
            }
        }
    }

    @Test func headerValuesFromClientsNeverBreakAHeader() {
        #expect(HeaderValue.checked("acme") == "acme")
        #expect(HeaderValue.checked("a\r\nX-Evil: 1") == nil)
        #expect(HeaderValue.checked("a\u{0}b") == nil)
        #expect(HeaderValue.isToken("tenant"))
        #expect(!HeaderValue.isToken("ten:ant"))
        #expect(!HeaderValue.isToken("a b"))
        #expect(HeaderValue.encode("ann\r\nX: 1") == "ann%0D%0AX%3A%201")
        #expect(HeaderValue.encode("zoë") == "zo%C3%AB")
        #expect(HeaderValue.checkedCookie("a=1; b=\u{e9}") != nil)
        #expect(HeaderValue.checkedCookie("a=1\r\nX: 1") == nil)
        #expect(ForwardTarget.isValid("/rooms/lobby?x=1&y=%20"))
        #expect(!ForwardTarget.isValid("/rooms/%2E%2E/x"))
        #expect(!ForwardTarget.isValid("/rooms/lobby#top"))
    }
}
