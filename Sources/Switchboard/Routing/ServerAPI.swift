import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import SwitchboardWire

/// The HTTP API for backends in any language (`/api/…`, API key in `X-API-Key`): publish to
/// streams, users, sessions and everyone, read history and presence, disconnect, list nodes.
/// `docs/api.md` documents every endpoint.
public enum ServerAPI {
    /// A message body: a JSON string is sent as its text, any other JSON value as its JSON.
    struct Payload: Decodable {
        let text: String

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let string = try? container.decode(String.self) {
                self.text = string
            } else {
                let value = try container.decode(JSONValue.self)
                self.text = String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
            }
        }
    }

    struct Publish: Decodable {
        let stream: String
        let data: Payload
        let idempotencyKey: String?
    }

    struct Message: Decodable {
        let data: Payload
        let idempotencyKey: String?
    }

    struct Batch: Decodable {
        let messages: [Publish]
    }

    struct Published: ResponseEncodable {
        let stream: String
        let offset: Int64
        let epoch: String
        let duplicate: Bool

        init(_ stream: String, _ result: PublishResult) {
            self.stream = stream
            self.offset = result.offset
            self.epoch = result.epoch
            self.duplicate = result.duplicate
        }
    }

    struct BatchResult: ResponseEncodable {
        let results: [Published]
    }

    struct History: ResponseEncodable {
        struct Entry: Encodable {
            let offset: Int64
            let data: String
        }
        let stream: String
        let epoch: String
        let top: Int64
        let messages: [Entry]
    }

    struct PresenceList: Encodable {
        let stream: String
        let members: [PresenceMember]
    }

    struct Disconnected: ResponseEncodable {
        let disconnected: Bool
    }

    static let maxBatch = 1000

    public static func add<Context: SwitchboardRequestContextProtocol>(to api: RouterGroup<Context>) {
        api.post("/publish") { request, context -> EditedResponse<Published> in
            let body = try await request.decode(as: Publish.self, context: context)
            let result = try await context.switchboard.publish(body.data.text, to: body.stream, idempotencyKey: body.idempotencyKey)
            return EditedResponse(status: .created, response: Published(body.stream, result))
        }
        // Many publishes in one request, pipelined to the engine; results in request order.
        api.post("/publish/batch") { request, context -> EditedResponse<BatchResult> in
            let body = try await request.decode(as: Batch.self, context: context)
            guard !body.messages.isEmpty, body.messages.count <= Self.maxBatch else {
                throw HTTPError(.badRequest, message: "a batch holds 1 to \(Self.maxBatch) messages")
            }
            // Every name is checked first: a bad one refuses the whole batch before any is appended.
            for m in body.messages { try SwitchboardPublisher.validate(stream: m.stream) }
            let publisher = context.switchboard
            let results = try await withThrowingTaskGroup(of: (Int, PublishResult).self) { group in
                for (i, m) in body.messages.enumerated() {
                    group.addTask { (i, try await publisher.publish(m.data.text, to: m.stream, idempotencyKey: m.idempotencyKey)) }
                }
                var out = [PublishResult?](repeating: nil, count: body.messages.count)
                for try await (i, r) in group { out[i] = r }
                return out.map { $0! }
            }
            return EditedResponse(status: .created, response: BatchResult(results: zip(body.messages, results).map { Published($0.stream, $1) }))
        }
        api.post("/users/:user/messages") { request, context -> EditedResponse<Published> in
            let user = try Self.pathParameter(context, "user")
            let body = try await request.decode(as: Message.self, context: context)
            let result = try await context.switchboard.send(body.data.text, toUser: user, idempotencyKey: body.idempotencyKey)
            return EditedResponse(status: .created, response: Published(GatewayCore.userStream(user), result))
        }
        api.post("/sessions/:session/messages") { request, context -> EditedResponse<Published> in
            let session = try Self.pathParameter(context, "session")
            let body = try await request.decode(as: Message.self, context: context)
            let result = try await context.switchboard.send(body.data.text, toSession: session, idempotencyKey: body.idempotencyKey)
            return EditedResponse(status: .created, response: Published(GatewayCore.sessionStream(session), result))
        }
        api.post("/broadcast") { request, context -> EditedResponse<Published> in
            let body = try await request.decode(as: Message.self, context: context)
            let result = try await context.switchboard.broadcast(body.data.text, idempotencyKey: body.idempotencyKey)
            return EditedResponse(status: .created, response: Published(GatewayCore.broadcastStream, result))
        }
        api.get("/history") { request, context -> History in
            let stream = try Self.query(request, "stream")
            let after = try Self.query(request, "after", default: 0)
            let limit = try Self.query(request, "limit", default: 100)
            guard (0...Int(StreamOffset.maximum)).contains(after), (1...1000).contains(limit) else {
                throw HTTPError(.badRequest, message: "after must be 0…\(StreamOffset.maximum), limit 1…1000")
            }
            switch try await context.switchboard.history(of: stream, after: Int64(after), limit: limit) {
            case .gone(let position):
                throw HTTPError(
                    .gone, message: "history no longer reaches back to offset \(after); the stream is at \(position.top) in epoch \(position.epoch)")
            case .messages(let messages, let position):
                return History(
                    stream: stream, epoch: position.epoch, top: position.top,
                    messages: messages.map { .init(offset: $0.offset, data: String(buffer: $0.body)) })
            }
        }
        api.get("/presence") { request, context -> Response in
            let stream = try Self.query(request, "stream")
            let members = try await context.switchboard.presence(of: stream)
            return Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: .init(byteBuffer: JSONBody.encode(PresenceList(stream: stream, members: members))))
        }
        api.post("/sessions/:session/disconnect") { _, context -> Disconnected in
            let session = try Self.pathParameter(context, "session")
            return Disconnected(disconnected: try await context.switchboard.disconnect(session: session))
        }
        api.post("/users/:user/disconnect") { _, context -> HTTPResponse.Status in
            let user = try Self.pathParameter(context, "user")
            try await context.switchboard.disconnect(user: user)
            return .accepted
        }
        api.get("/nodes") { _, context -> Response in
            let nodes = try await context.switchboard.nodes()
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: JSONBody.encode(["nodes": nodes])))
        }
    }

    /// A path segment, percent-decoded (`ann%40x.com` is the user `ann@x.com`).
    static func pathParameter<Context: SwitchboardRequestContextProtocol>(_ context: Context, _ name: String) throws -> String {
        let raw = try context.parameters.require(name)
        guard let decoded = raw.removingPercentEncoding, !decoded.isEmpty else {
            throw HTTPError(.badRequest, message: "\(name) '\(raw)' is not valid percent-encoding")
        }
        return decoded
    }

    static func query(_ request: Request, _ name: String) throws -> String {
        guard let value = request.uri.queryParameters[name[...]], !value.isEmpty else {
            throw HTTPError(.badRequest, message: "query parameter \(name) is required")
        }
        return String(value)
    }

    static func query(_ request: Request, _ name: String, default value: Int) throws -> Int {
        guard let raw = request.uri.queryParameters[name[...]] else { return value }
        guard let parsed = Int(raw) else { throw HTTPError(.badRequest, message: "query parameter \(name) must be an integer") }
        return parsed
    }
}

/// Server API access: `X-API-Key` must be one of the configured keys (401 otherwise).
public struct APIKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let keys: Set<String>

    public init(keys: Set<String>) { self.keys = keys }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let key = request.headers[HTTPField.Name("X-API-Key")!], self.keys.contains(key) else {
            throw HTTPError(.unauthorized, message: "missing or unknown X-API-Key")
        }
        return try await next(request, context)
    }
}
