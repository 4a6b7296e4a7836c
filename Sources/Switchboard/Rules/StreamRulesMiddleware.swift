import HTTPTypes
import Hummingbird
import NIOCore
import SwitchboardWire

/// Enforces the gateway's stream rules (`GatewayConfiguration.streamRules`) on the router: a
/// `SUB` to a stream is allowed or refused by its rule (then by a `SUB` route, if one matches),
/// and a `POST` to a stream's path is a publish its rule allows, refuses or sends to the backend.
/// Streams no rule matches go on to the routes, so a `SUB` no route answers is a 404. Add it
/// after the identity middleware and before the routes.
public struct StreamRulesMiddleware<Context: SwitchboardRequestContextProtocol>: RouterMiddleware {
    public init() {}

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let core = context.switchboard.core
        let path = request.uri.path
        // Built-in and presence streams are never a rule's (`/users/<name>` matches `/users/*`).
        guard let rules = core.configuration.streamRules, !BuiltinStream.isBuiltin(path), PresenceEvents.subject(of: path) == nil,
            let (rule, match) = rules.rule(for: path)
        else {
            return try await next(request, context)
        }
        switch request.method {
        case .sub:
            // A subscription lives on a WebSocket; over HTTP there is nothing to subscribe.
            guard context.connection != nil else { throw HTTPError(.methodNotAllowed, message: "SUB is a WebSocket frame") }
            try await self.checkSubscribe(rule, match, path, context)
            do {
                return try await next(request, context)
            } catch let error as HTTPError where error.status == .notFound && context.isUnrouted {
                // The rule allowed it and no SUB route has a say.
                return Response(status: .ok)
            }
        case .post:
            return try await self.publish(request, rule, match, path, context)
        default:
            return try await next(request, context)
        }
    }

    private func checkSubscribe(_ rule: StreamRule, _ match: StreamPattern.Match, _ stream: String, _ context: Context) async throws {
        let user = context.identity?.user
        switch rule.subscribe {
        case .none:
            throw HTTPError(.forbidden, message: "nobody may subscribe to \(stream)")
        case .anyone:
            break
        case .authenticated, .owner:
            guard user != nil else { throw HTTPError(.unauthorized, message: "subscribing to \(stream) needs a token") }
        case .backend:
            break
        }
        // A path that names a user is that user's, whatever else the rule allows, and before the
        // backend is asked.
        guard match.isOwned(by: user) else { throw HTTPError(.forbidden, message: "\(stream) belongs to another user") }
        if case .backend = rule.subscribe {
            guard let backend = context.switchboard.core.backend else {
                throw HTTPError(.serviceUnavailable, message: "no backend is configured to authorise \(stream)")
            }
            let answer = await backend.authorizeSubscription(to: stream, caller: BackendCaller(context, node: context.switchboard.core.nodeID))
            guard (200..<300).contains(answer.status.code) else { throw BackendAnswer(answer) }
        }
    }

    private func publish(
        _ request: Request, _ rule: StreamRule, _ match: StreamPattern.Match, _ stream: String, _ context: Context
    ) async throws
        -> Response
    {
        let user = context.identity?.user
        switch rule.publish {
        case .none:
            throw HTTPError(.forbidden, message: "clients may not publish to \(stream)")
        case .anyone:
            break
        case .authenticated:
            guard user != nil else { throw HTTPError(.unauthorized, message: "publishing to \(stream) needs a token") }
        case .backend:
            break
        }
        guard match.isOwned(by: user) else { throw HTTPError(.forbidden, message: "\(stream) belongs to another user") }
        var body = try await request.body.collect(upTo: context.maxUploadSize)
        if case .backend = rule.publish {
            guard let backend = context.switchboard.core.backend else {
                throw HTTPError(.serviceUnavailable, message: "no backend is configured to take publishes to \(stream)")
            }
            let caller = BackendCaller(context, node: context.switchboard.core.nodeID)
            let answer = await backend.forward(
                BackendRequest(method: .post, target: request.uri.description, body: body, meta: context.meta ?? Meta(), caller: caller))
            guard (200..<300).contains(answer.status.code), answer.asksToPublish else { return answer.response }
            body = answer.body
        }
        return try await StandardRoutes.publish(body, to: stream, for: request, context)
    }
}

/// A backend's refusal, passed on as it came (status, allowed headers, body).
struct BackendAnswer: HTTPResponseError {
    let answer: BackendResponse
    init(_ answer: BackendResponse) { self.answer = answer }
    var status: HTTPResponse.Status { self.answer.status }
    func response(from request: Request, context: some RequestContext) throws -> Response { self.answer.response }
}

extension BackendResponse {
    var response: Response {
        Response(status: self.status, headers: self.headers, body: ResponseBody(byteBuffer: self.body))
    }
}
