import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Switchboard
import SwitchboardWire

/// The chat's routes. Every one answers HTTP requests and WebSocket frames alike (the page
/// uses the socket for everything but sign-in). Streams:
///
/// | stream | what | who subscribes |
/// |---|---|---|
/// | `/rooms` | the room directory: one `{"name","by","ts"}` per created room | every page, from offset 0 |
/// | `/rooms/<room>` | the room's messages `{"from","text","ts"}`: its log is the history | pages in the room |
/// | `/presence/rooms/<room>` | join/leave of the room's members (the gateway publishes it) | pages in the room |
/// | `/rooms/<room>/typing` | `{"from","ts"}` while someone types (nobody replays it) | pages in the room |
/// | `/chat/users/<user>/room` | the user's current room `{"room"}`, for restoring it | nobody (read by the server) |
///
/// Pages subscribe to `/rooms` and `/rooms/<room>` with `ack: false`: acks let the gateway
/// trim history every subscriber has acked, and these logs are what later joiners read.
struct ChatRoutes: Sendable {
    struct Limits: Sendable {
        var messageRate: Double
        var messageBurst: Double
        var historySize: Int
    }

    let engine: any SwitchboardEngine
    let tokens: SignIn
    let limits: Limits

    /// Always there, never created.
    static let lobby = "lobby"
    static let directory = "/rooms"
    /// Messages a join replays (the page subscribes from `top - joinHistory`).
    static let joinHistory: Int64 = 100

    static func roomStream(_ room: String) -> String { "/rooms/\(room)" }
    static func lastRoomStream(_ user: String) -> String { "/chat/users/\(user)/room" }

    struct Message: Codable {
        var from: String
        var text: String
        var ts: Int
    }

    struct DirectoryEntry: Codable {
        var name: String
        var by: String
        var ts: Int
    }

    struct LastRoom: Codable {
        var room: String?
    }

    struct Member: Codable {
        var user: String
        var connection: String
    }

    struct RoomInfo: ResponseEncodable {
        var room: String
        /// Offset of the newest message and the stream's epoch: subscribe with
        /// `since: max(0, top - 100), epoch` to replay the recent history, then go live.
        var top: Int64
        var epoch: String
        var members: [Member]
    }

    struct HistoryMessage: Codable {
        var offset: Int64
        var from: String
        var text: String
        var ts: Int
    }

    struct History: ResponseEncodable {
        var room: String
        var epoch: String
        var top: Int64
        var messages: [HistoryMessage]
    }

    struct Posted: ResponseEncodable {
        var room: String
        var offset: Int64
        var epoch: String
        var duplicate: Bool
    }

    func add(to router: Router<SwitchboardRequestContext>) {
        router.post("/auth/sign-in") { request, context -> SignIn.Issued in
            struct Body: Decodable { var name: String }
            let body = try await Self.decode(Body.self, request, context, limit: 1024)
            return try await self.tokens.issue(user: try Validation.userName(body.name))
        }

        let users = router.group().add(middleware: RequireIdentity())
        users.get("/me") { _, context -> [String: String?] in
            let user = try Self.user(context)
            return ["user": user, "room": try await self.lastRoom(of: user)]
        }
        users.get("/rooms") { _, _ -> [String: [String]] in
            ["rooms": try await self.rooms()]
        }
        users.post("/rooms") { request, context -> EditedResponse<[String: String]> in
            struct Body: Decodable { var name: String }
            let user = try Self.user(context)
            let room = try Validation.roomName(try await Self.decode(Body.self, request, context, limit: 1024).name)
            if try await self.rooms().contains(room) {
                return EditedResponse(status: .ok, response: ["room": room])
            }
            let entry = DirectoryEntry(name: room, by: user, ts: Self.now())
            try await self.publish(entry, to: Self.directory, key: "room:" + room, context: context)
            return EditedResponse(status: .created, response: ["room": room])
        }
        // Subscribing: the directory is open to signed-in users, a room's streams (and its
        // presence stream, which the gateway authorises through this route) once it exists.
        users.sub("/rooms") { _, _ in HTTPResponse.Status.ok }
        users.sub("/rooms/:room") { _, context -> HTTPResponse.Status in
            _ = try await self.existingRoom(context)
            return .ok
        }
        users.sub("/rooms/:room/typing") { _, context -> HTTPResponse.Status in
            _ = try await self.existingRoom(context)
            return .ok
        }
        users.get("/rooms/:room") { _, context -> RoomInfo in
            try await self.info(of: try await self.existingRoom(context), context: context)
        }
        users.post("/rooms/:room/join") { _, context -> RoomInfo in
            let room = try await self.existingRoom(context)
            try await self.publish(LastRoom(room: room), to: Self.lastRoomStream(try Self.user(context)), key: nil, context: context)
            return try await self.info(of: room, context: context)
        }
        users.post("/rooms/:room/leave") { _, context -> [String: String] in
            let user = try Self.user(context)
            let room = try Validation.roomName(context.parameters.get("room") ?? "")
            if try await self.lastRoom(of: user) == room {
                try await self.publish(LastRoom(room: nil), to: Self.lastRoomStream(user), key: nil, context: context)
            }
            return ["room": room]
        }
        users.get("/rooms/:room/messages") { request, context -> History in
            let room = try await self.existingRoom(context)
            let limit = min(200, max(1, request.uri.queryParameters.get("limit", as: Int.self) ?? 50))
            let position = try await self.engine.position(of: Self.roomStream(room))
            let after = request.uri.queryParameters.get("after", as: Int64.self) ?? max(0, position.top - Int64(limit))
            switch try await context.switchboard.history(of: Self.roomStream(room), after: after, limit: limit) {
            case .gone(let position):
                throw ChatError(.gone, "history_gone", "messages after \(after) are no longer kept (top \(position.top))")
            case .messages(let messages, let position):
                let decoded = messages.compactMap { m -> HistoryMessage? in
                    guard let msg = try? JSONDecoder().decode(Message.self, from: Data(buffer: m.body)) else { return nil }
                    return HistoryMessage(offset: m.offset, from: msg.from, text: msg.text, ts: msg.ts)
                }
                return History(room: room, epoch: position.epoch, top: position.top, messages: decoded)
            }
        }
        users.post("/rooms/:room/messages") { request, context -> EditedResponse<Posted> in
            struct Body: Decodable { var text: String }
            let user = try Self.user(context)
            let room = try await self.existingRoom(context)
            let text = try Validation.messageText(try await Self.decode(Body.self, request, context, limit: 8192).text)
            // Per user, across tabs and nodes: the bucket lives in the engine (Redis with --redis-url).
            guard try await self.engine.takeToken("chat:messages:" + user, rate: self.limits.messageRate, burst: self.limits.messageBurst) else {
                throw ChatError(
                    .tooManyRequests, "rate_limited",
                    "at most \(self.limits.messageRate) messages a second (bursts of \(Int(self.limits.messageBurst)))",
                    headers: [.retryAfter: "1"])
            }
            // The client's idempotency key (META `k` over the socket, `Idempotency-Key` over
            // HTTP): a request resent after a reconnect is not appended twice.
            let key = context.meta?[MetaKey.idempotencyKey] ?? request.headers[HTTPField.Name("Idempotency-Key")!]
            let result = try await self.publish(
                Message(from: user, text: text, ts: Self.now()), to: Self.roomStream(room), key: key.map { user + ":" + $0 }, context: context)
            return EditedResponse(
                status: .created, response: Posted(room: room, offset: result.offset, epoch: result.epoch, duplicate: result.duplicate))
        }
        users.post("/rooms/:room/typing") { _, context -> HTTPResponse.Status in
            let user = try Self.user(context)
            let room = try await self.existingRoom(context)
            struct Typing: Codable {
                var from: String
                var ts: Int
            }
            try await self.publish(Typing(from: user, ts: Self.now()), to: Self.roomStream(room) + "/typing", key: nil, context: context)
            return .accepted
        }
    }

    // MARK: - helpers

    static func user(_ context: SwitchboardRequestContext) throws -> String {
        guard let user = context.identity?.user else { throw ChatError(.unauthorized, "unauthorized", "sign in first") }
        return user
    }

    static func now() -> Int { Int(Date().timeIntervalSince1970 * 1000) }

    static func decode<T: Decodable>(_ type: T.Type, _ request: Request, _ context: SwitchboardRequestContext, limit: Int) async throws -> T {
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: limit)
        } catch {
            throw ChatError(.contentTooLarge, "too_large", "the body is over \(limit) bytes")
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer: body))
        } catch {
            throw ChatError(.badRequest, "bad_body", "the body is not the JSON object this route expects")
        }
    }

    /// The `:room` parameter, validated, of a room that exists (404 otherwise).
    func existingRoom(_ context: SwitchboardRequestContext) async throws -> String {
        let room = try Validation.roomName(context.parameters.get("room") ?? "")
        guard try await self.rooms().contains(room) else { throw ChatError(.notFound, "no_room", "there is no room '\(room)'") }
        return room
    }

    /// The lobby, then every room of the directory in creation order.
    func rooms() async throws -> [String] {
        var names = [Self.lobby]
        let position = try await self.engine.position(of: Self.directory)
        guard position.top > 0 else { return names }
        let after = max(0, position.top - Int64(self.limits.historySize))
        guard case .messages(let entries, _) = try await self.engine.read(Self.directory, after: after, epoch: nil, limit: self.limits.historySize)
        else {
            return names
        }
        var seen = Set(names)
        for entry in entries {
            if let e = try? JSONDecoder().decode(DirectoryEntry.self, from: Data(buffer: entry.body)), seen.insert(e.name).inserted {
                names.append(e.name)
            }
        }
        return names
    }

    func lastRoom(of user: String) async throws -> String? {
        let stream = Self.lastRoomStream(user)
        let position = try await self.engine.position(of: stream)
        guard position.top > 0,
            case .messages(let messages, _) = try await self.engine.read(stream, after: position.top - 1, epoch: nil, limit: 1),
            let last = messages.last
        else { return nil }
        guard let room = try? JSONDecoder().decode(LastRoom.self, from: Data(buffer: last.body)).room,
            try await self.rooms().contains(room)
        else { return nil }
        return room
    }

    func info(of room: String, context: SwitchboardRequestContext) async throws -> RoomInfo {
        let stream = Self.roomStream(room)
        let position = try await self.engine.position(of: stream)
        let members = try await context.switchboard.presence(of: stream).compactMap { m in
            m.user.map { Member(user: $0, connection: m.connection) }
        }
        return RoomInfo(room: room, top: position.top, epoch: position.epoch, members: members)
    }

    @discardableResult
    func publish(_ value: some Encodable, to stream: String, key: String?, context: SwitchboardRequestContext) async throws -> PublishResult {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let body = String(decoding: try encoder.encode(value), as: UTF8.self)
        do {
            return try await context.switchboard.publish(body, to: stream, idempotencyKey: key)
        } catch let error as EngineError {
            if case .unavailable = error { throw ChatError(.serviceUnavailable, "unavailable", "try again shortly (nothing was sent)") }
            throw ChatError(.badRequest, "bad_stream", error.description)
        }
    }
}
