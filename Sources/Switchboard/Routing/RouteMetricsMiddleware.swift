import Hummingbird
import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// Counts and times every routed request by route pattern, method, status and transport
/// (`http` or `ws`): `switchboard_requests_total` and `switchboard_request_duration_seconds`,
/// labelled with the node like every other series.
/// Add it first, so it sees what every other middleware answers.
public struct RouteMetricsMiddleware<Context: SwitchboardRequestContextProtocol>: RouterMiddleware {
    private let cache = RouteMetricsCache()

    public init() {}

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = NIODeadline.now()
        let transport: String
        if case .http = context.transport { transport = "http" } else { transport = "ws" }
        let status: HTTPResponse.Status
        do {
            let response = try await next(request, context)
            status = response.status
            self.record(request, context, transport, status, since: start)
            return response
        } catch {
            status = (error as? any HTTPResponseError)?.status ?? .internalServerError
            self.record(request, context, transport, status, since: start)
            throw error
        }
    }

    private func record(_ request: Request, _ context: Context, _ transport: String, _ status: HTTPResponse.Status, since start: NIODeadline) {
        // Unmatched paths share one label, so a scanner cannot grow the label set.
        let key = RouteMetricsCache.Key(
            node: context.switchboard.nodeID, route: context.endpointPath ?? "unmatched", method: request.method.rawValue,
            status: Int(status.code), transport: transport
        )
        let (counter, timer) = self.cache.metrics(for: key)
        counter.increment()
        timer.recordNanoseconds((NIODeadline.now() - start).nanoseconds)
    }
}

final class RouteMetricsCache: Sendable {
    struct Key: Hashable {
        let node: String
        let route: String
        let method: String
        let status: Int
        let transport: String
    }

    private let storage = NIOLockedValueBox<[Key: (Counter, Metrics.Timer)]>([:])

    func metrics(for key: Key) -> (Counter, Metrics.Timer) {
        self.storage.withLockedValue { storage in
            if let made = storage[key] { return made }
            let dimensions = [
                ("node", key.node), ("route", key.route), ("method", key.method), ("status", String(key.status)), ("transport", key.transport),
            ]
            let made = (
                Counter(label: "switchboard_requests_total", dimensions: dimensions),
                Metrics.Timer(label: "switchboard_request_duration_seconds", dimensions: dimensions, preferredDisplayUnit: .seconds)
            )
            storage[key] = made
            return made
        }
    }
}
