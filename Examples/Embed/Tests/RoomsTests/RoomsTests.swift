import Rooms
import Switchboard
import SwitchboardTesting
import Testing

@Suite(.timeLimit(.minutes(1)))
struct RoomsTests {
    @Test func aMessagePostedOverTheSocketReachesTheRoomAndHTTPAnswersToo() async throws {
        // TestNode signs its tokens with `TestNode.defaultSecret`: the application's verifier
        // must check them with the same key.
        let verifier = try await TokenVerifier.hs256(secret: TestNode.defaultSecret)
        try await TestNode.with(router: roomsRouter(verifier: verifier)) { node in
            let ann = try await node.connect(user: "ann")
            let lobby = try await ann.subscribe("/rooms/lobby")
            let reply = try await ann.request("POST", "/rooms/lobby/messages", body: "hi")
            #expect(reply.status == 201)
            #expect(reply.body == #"{"offset":1}"#)
            for await message in lobby {
                #expect(message.body == "hi" && message.offset == 1)
                break
            }
            // The same route over HTTP, with a token, and refused without one.
            let token = try await node.token(user: "bob")
            #expect(try await node.http("POST", "/rooms/lobby/messages", body: "hello", token: token).status == 201)
            #expect(try await node.http("POST", "/rooms/lobby/messages", body: "hello", token: nil).status == 401)
            await ann.close()
        }
    }
}
