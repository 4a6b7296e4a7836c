import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import SwitchboardWire

/// The routes `switchboard serve` offers out of the box, for deployments that do not
/// embed the library: health (`HealthRoutes`), the server API for backends (`ServerAPI`),
/// and open `/streams/…` that connected clients may subscribe and publish to.
public enum StandardRoutes {
    public struct Options: Sendable {
        /// Keys accepted in `X-API-Key` by the server API; the API is off when empty.
        public var apiKeys: Set<String> = []
        /// Let connected clients subscribe to and publish on `/streams/**`.
        public var openStreams: Bool = true

        public init(apiKeys: Set<String> = [], openStreams: Bool = true) {
            self.apiKeys = apiKeys
            self.openStreams = openStreams
        }
    }

    struct Published: ResponseEncodable {
        let stream: String
        let offset: Int64
        let epoch: String
        let duplicate: Bool
    }

    public static func add<Context: SwitchboardRequestContextProtocol>(to router: Router<Context>, options: Options) {
        HealthRoutes.add(to: router)
        if !options.apiKeys.isEmpty {
            ServerAPI.add(to: router.group("/api").add(middleware: APIKeyMiddleware(keys: options.apiKeys)))
        }
        if options.openStreams {
            router.sub("/streams/**") { _, context -> HTTPResponse.Status in
                guard context.identity != nil || context.switchboard.core.configuration.allowAnonymous else {
                    throw HTTPError(.unauthorized)
                }
                return .ok
            }
            router.post("/streams/**") { request, context -> Response in
                guard context.identity != nil || context.switchboard.core.configuration.allowAnonymous else {
                    throw HTTPError(.unauthorized)
                }
                let body = try await request.body.collect(upTo: context.maxUploadSize)
                return try await Self.publish(body, to: request.uri.path, for: request, context)
            }
        }
    }

    /// Publishes `body` to `stream` for a client's request (idempotency key in META `k` or the
    /// `Idempotency-Key` header) and answers `201 {"stream","offset","epoch","duplicate"}`.
    static func publish<Context: SwitchboardRequestContextProtocol>(
        _ body: ByteBuffer, to stream: String, for request: Request, _ context: Context
    ) async throws -> Response {
        let key = context.meta?[MetaKey.idempotencyKey] ?? request.headers[HTTPField.Name("Idempotency-Key")!]
        // Pushed in WebSocket text frames: UTF-8 or refused (a frame's body already is).
        guard UTF8Validation.isValid(body) else { throw HTTPError(.badRequest, message: "the message body is not UTF-8") }
        // An EngineError answers for itself (503 + Retry-After while the engine is away).
        let result = try await context.switchboard.publish(body, to: stream, idempotencyKey: key)
        let published = Published(stream: stream, offset: result.offset, epoch: result.epoch, duplicate: result.duplicate)
        return try EditedResponse(status: .created, response: published).response(from: request, context: context)
    }
}
