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

    struct HealthReport: Encodable {
        struct Engine: Encodable {
            let available: Bool
            let catchingUp: Bool
            let detail: String
            let roundTripMillis: Double?
        }
        let status: String
        let node: String
        let connections: Int
        let users: Int
        let engine: Engine
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
        // Not ready while draining, while the engine is unavailable (Redis away) and while it
        // catches subscriptions up after an outage.
        router.get("/health/ready") { _, context -> Response in
            let core = context.switchboard.core
            let health = await core.engine.health()
            let status = core.isDraining ? "draining" : !health.available ? "engine_unavailable" : health.catchingUp ? "catching_up" : "ready"
            return Response(
                status: status == "ready" ? .ok : .serviceUnavailable,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: JSONBody.encode(["status": status, "engine": health.detail]))
            )
        }
        router.get("/health") { _, context -> Response in
            let core = context.switchboard.core
            let health = await core.engine.health()
            let connections = core.hub.allConnections()
            let report = HealthReport(
                status: core.isDraining ? "draining" : health.isReady ? "ready" : "not_ready", node: core.nodeID,
                connections: connections.count, users: Set(connections.compactMap(\.user)).count,
                engine: .init(available: health.available, catchingUp: health.catchingUp, detail: health.detail,
                              roundTripMillis: health.roundTrip.map { Double($0.components.attoseconds) / 1e15 + Double($0.components.seconds) * 1000 })
            )
            return Response(
                status: report.status == "ready" ? .ok : .serviceUnavailable,
                headers: [.contentType: "application/json"], body: .init(byteBuffer: JSONBody.encode(report))
            )
        }
        if !options.apiKeys.isEmpty {
            let api = router.group("/api").add(middleware: APIKeyMiddleware(keys: options.apiKeys))
            api.get("/nodes") { _, context -> Response in
                do {
                    let nodes = try await context.switchboard.core.engine.nodes()
                    return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: JSONBody.encode(["nodes": nodes])))
                } catch {
                    throw HTTPError(.serviceUnavailable, message: "\(error)")
                }
            }
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
            case .unknownNode(let node): throw HTTPError(.notFound, message: "no live node \(node)")
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
