import HTTPTypes
import Hummingbird
import NIOCore
import SwitchboardWire

/// Sends a WebSocket request frame that no route answers to the application's backend
/// (`GatewayCore.backend`), and its answer back as the response frame. HTTP requests are not
/// forwarded: the gateway is not a reverse proxy. Add it before the routes.
public struct BackendFallbackMiddleware<Context: SwitchboardRequestContextProtocol>: RouterMiddleware {
    public init() {}

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        // A SUB reaches the backend only through a rule's subscribe hook.
        guard context.connection != nil, request.method != .sub, let backend = context.switchboard.core.backend else {
            return try await next(request, context)
        }
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound && context.isUnrouted {
            let body = try await request.body.collect(upTo: context.maxUploadSize)
            let caller = BackendCaller(context, node: context.switchboard.core.nodeID)
            let answer = await backend.forward(
                BackendRequest(method: request.method, target: request.uri.description, body: body, meta: context.meta ?? Meta(), caller: caller))
            return answer.response
        }
    }
}
