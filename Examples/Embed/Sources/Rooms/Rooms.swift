import Hummingbird
import Switchboard

/// Chat rooms: who may subscribe to `/rooms/<room>`, and how a message gets there. Written once,
/// these routes answer an HTTP request and a WebSocket frame alike (`POST /rooms/lobby/messages`
/// over HTTP, `POST|/rooms/lobby/messages|r=7|hi` over the socket).
public func roomsRouter(verifier: TokenVerifier) -> Router<SwitchboardRequestContext> {
    let router = Router(context: SwitchboardRequestContext.self)
    // HTTP requests carry their own token; WebSocket frames carry the one checked at the upgrade.
    router.add(middleware: IdentityMiddleware(verifier: verifier))
    let rooms = router.group("/rooms").add(middleware: RequireIdentity())
    // A SUB to /rooms/<room> is allowed by a 2xx answer.
    rooms.sub(":room") { _, _ in HTTPResponse.Status.ok }
    rooms.post(":room/messages") { request, context -> EditedResponse<[String: Int64]> in
        let room = try context.parameters.require("room")
        let text = try await request.body.collect(upTo: 4096)
        // META `k` over the socket is the idempotency key: a resent request is applied once.
        let published = try await context.switchboard.publish(text, to: "/rooms/\(room)", idempotencyKey: context.meta?["k"])
        return EditedResponse(status: .created, response: ["offset": published.offset])
    }
    return router
}
