import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import SwitchboardWire

/// The routes `switchboard serve` offers out of the box, for deployments that do not
/// embed the library: health, a server API for backends, and open `/streams/…`.
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

    struct PublishBody: Decodable {
        let stream: String
        let data: String
        let idempotencyKey: String?
    }

    struct Published: ResponseEncodable {
        let stream: String
        let offset: Int64
        let epoch: String
        let duplicate: Bool
    }

    public static func add<Context: SwitchboardRequestContextProtocol>(to router: Router<Context>, options: Options) {
        router.get("/health/live") { _, _ in ["status": "ok"] }
        router.get("/health/ready") { _, context -> Response in
            let ready = !context.switchboard.core.isDraining
            return Response(
                status: ready ? .ok : .serviceUnavailable,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: ready ? #"{"status":"ready"}"# : #"{"status":"draining"}"#))
            )
        }
        if !options.apiKeys.isEmpty {
            let api = router.group("/api").add(middleware: APIKeyMiddleware(keys: options.apiKeys))
            api.post("/publish") { request, context -> EditedResponse<Published> in
                let body = try await request.decode(as: PublishBody.self, context: context)
                let result = try await Self.publish(context, body.data, to: body.stream, key: body.idempotencyKey)
                return EditedResponse(status: .created, response: Published(stream: body.stream, offset: result.offset, epoch: result.epoch, duplicate: result.duplicate))
            }
        }
        if options.openStreams {
            router.sub("/streams/**") { _, context -> HTTPResponse.Status in
                guard context.identity != nil || context.switchboard.core.configuration.allowAnonymous else {
                    throw HTTPError(.unauthorized)
                }
                return .ok
            }
            router.post("/streams/**") { request, context -> EditedResponse<Published> in
                guard context.identity != nil || context.switchboard.core.configuration.allowAnonymous else {
                    throw HTTPError(.unauthorized)
                }
                let body = try await request.body.collect(upTo: context.maxUploadSize)
                let stream = request.uri.path
                let key = context.meta?[MetaKey.idempotencyKey] ?? request.headers[HTTPField.Name("Idempotency-Key")!]
                let result = try await Self.publish(context, String(buffer: body), to: stream, key: key)
                return EditedResponse(status: .created, response: Published(stream: stream, offset: result.offset, epoch: result.epoch, duplicate: result.duplicate))
            }
        }
    }

    static func publish<Context: SwitchboardRequestContextProtocol>(_ context: Context, _ data: String, to stream: String, key: String?) async throws -> PublishResult {
        do {
            return try await context.switchboard.publish(data, to: stream, idempotencyKey: key)
        } catch let error as EngineError {
            switch error {
            case .invalidStream(let why): throw HTTPError(.badRequest, message: why)
            case .unavailable(let why): throw HTTPError(.serviceUnavailable, message: why)
            }
        }
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
