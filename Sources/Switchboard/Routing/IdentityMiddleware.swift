import HTTPTypes
import Hummingbird

/// Verifies the HTTP caller's token (Bearer header, `sb_token` cookie or
/// `?access_token=`) and sets `context.identity`. WebSocket frames already carry the
/// identity verified at the upgrade, so they pass through unchanged. A request with
/// no token passes on without identity; an invalid token is refused with 401.
public struct IdentityMiddleware<Context: SwitchboardRequestContextProtocol>: RouterMiddleware {
    let verifier: TokenVerifier

    public init(verifier: TokenVerifier) {
        self.verifier = verifier
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard case .http = context.transport, context.identity == nil, let token = TokenExtractor.token(from: request.head) else {
            return try await next(request, context)
        }
        var context = context
        do {
            context.identity = try await self.verifier.verify(token)
        } catch {
            throw HTTPError(.unauthorized, message: error.description)
        }
        return try await next(request, context)
    }
}

/// Refuses callers without identity (401) or, with `roles`, without one of them (403).
/// Works the same for HTTP requests and WebSocket frames, like Express middleware.
public struct RequireIdentity<Context: SwitchboardRequestContextProtocol>: RouterMiddleware {
    let roles: Set<String>

    public init(anyOf roles: Set<String> = []) {
        self.roles = roles
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let identity = context.identity else { throw HTTPError(.unauthorized, message: "authentication required") }
        if !self.roles.isEmpty, identity.roles.isDisjoint(with: self.roles) {
            throw HTTPError(.forbidden, message: "requires one of the roles: \(self.roles.sorted().joined(separator: ", "))")
        }
        return try await next(request, context)
    }
}
