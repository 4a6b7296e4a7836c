import Hummingbird
import Logging

/// A token bucket per user over every route it guards, for HTTP requests and WebSocket frames
/// alike, kept in the engine: with Redis every node draws from the same bucket, so a user
/// cannot multiply the limit by connecting to more nodes. Over the limit: 429
/// `rate_limited`. Anonymous callers pass (the per-connection limit still applies to them).
/// If the engine cannot be asked (Redis away) the request passes: a limiter must not turn
/// an engine outage into a refusal of routes that may not need the engine.
public struct UserRateLimitMiddleware<Context: SwitchboardRequestContextProtocol>: RouterMiddleware {
    let rate: Double
    let burst: Double

    /// `rate` requests a second per user, `burst` at once.
    public init(rate: Double, burst: Double) {
        precondition(rate > 0 && burst >= 1, "rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let user = context.identity?.user else { return try await next(request, context) }
        let allowed: Bool
        do {
            allowed = try await context.switchboard.core.rateBuckets.takeToken("user:" + user, rate: self.rate, burst: self.burst)
        } catch {
            context.logger.debug("user rate limit not checked: engine unavailable", metadata: ["error": "\(error)"])
            allowed = true
        }
        guard allowed else {
            return Response(
                status: .tooManyRequests, headers: [.contentType: "application/json", .retryAfter: "1"],
                body: .init(byteBuffer: JSONBody.error("rate_limited", reason: "user \(user) is over \(self.rate) requests per second"))
            )
        }
        return try await next(request, context)
    }
}
