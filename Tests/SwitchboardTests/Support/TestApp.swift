import Foundation
import Hummingbird
import Switchboard
import SwitchboardTesting

/// The application the gateway tests run: a few routes that exercise both transports.
enum TestApp {
    static func router() -> Router<SwitchboardRequestContext> {
        let router = Router(context: SwitchboardRequestContext.self)
        // Written once, answers over HTTP and over WebSocket.
        router.get("/hello") { _, context -> String in
            let via = context.connection == nil ? "http" : "ws"
            return "hello \(context.identity?.user ?? "anonymous") via \(via)"
        }
        let rooms = router.group("/rooms").add(middleware: RequireIdentity())
        rooms.sub("/:id") { _, context -> HTTPResponse.Status in
            let id = try context.parameters.require("id")
            if id == "secret", context.identity?.roles.contains("admin") != true { throw HTTPError(.forbidden, message: "admins only") }
            return .ok
        }
        rooms.post("/:id/messages") { request, context -> EditedResponse<[String: Int64]> in
            let id = try context.parameters.require("id")
            let body = try await request.body.collect(upTo: 4096)
            let result = try await context.switchboard.publish(body, to: "/rooms/\(id)", idempotencyKey: context.meta?["k"])
            return EditedResponse(status: .created, response: ["offset": result.offset])
        }
        // The request body back, read as it arrives.
        router.post("/echo") { request, _ -> String in
            String(buffer: try await request.body.collect(upTo: 4096))
        }
        // 16 MiB written as it goes: more than a socket holds when the client does not read.
        router.get("/stream") { _, _ in
            Response(
                status: .ok,
                body: ResponseBody { writer in
                    let chunk = ByteBuffer(repeating: UInt8(ascii: "a"), count: 64 * 1024)
                    for _ in 0..<256 { try await writer.write(chunk) }
                    try await writer.finish(nil)
                })
        }
        router.group("/admin").add(middleware: RequireIdentity(anyOf: ["admin"])).get { _, _ in "welcome, admin" }
        return router
    }

    /// A node with the test app, HS256 auth, and `configure` applied.
    static func withNode<R: Sendable>(
        _ configure: (inout GatewayConfiguration) -> Void = { _ in },
        engine: MemoryEngine = MemoryEngine(),
        _ body: @Sendable (TestNode) async throws -> R
    ) async throws -> R {
        var configuration = GatewayConfiguration()
        configuration.pingInterval = 3600
        configure(&configuration)
        let router = Self.router()
        return try await TestNode.with(router: router, configuration: configuration, engine: engine, body)
    }
}

extension TestNode {
    /// A raw WebSocket for `user` past its greeting: returns the socket and its session id.
    func raw(user: String?, session: String? = nil, roles: [String] = []) async throws -> (RawSocket, String) {
        let socket = try await RawSocket.connect(port: self.port)
        var token: String? = nil
        if let user { token = try await self.token(user: user, roles: roles) }
        let reply = try await socket.upgrade(path: session.map { "/ws?sid=\($0)" } ?? "/ws", token: token)
        guard reply.status == 101 else { throw TestFailure("upgrade refused: \(reply.status) \(reply.body)") }
        let hello = Parsed(try await socket.nextText())
        guard hello.head == "HELLO200", let sid = hello.meta["s"] else { throw TestFailure("expected HELLO, got \(hello.head)") }
        // Built-in subscriptions: session, broadcast, and the user's stream.
        for _ in 0..<(user == nil ? 2 : 3) {
            let sub = Parsed(try await socket.nextText())
            guard sub.head == "SUB200" || sub.head == "SUB410" else { throw TestFailure("expected SUB200, got \(sub.head)") }
        }
        return (socket, sid)
    }
}
