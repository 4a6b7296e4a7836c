import Hummingbird

/// How an engine failure reaches a caller. Clients get a status and a stable reason; the
/// detail (a Redis address, a connection error) only goes to the node's log.
enum EngineFailure {
    static let unavailableReason = "the stream store is unavailable; retry shortly"

    /// Status and reason for a frame reply (SUB, ACK) after `error`.
    static func status(of error: any Error) -> (status: Int, reason: String) {
        switch error as? EngineError {
        case .unavailable?: (503, unavailableReason)
        case .invalidStream(let why)?: (400, why)
        case .unknownNode(let node)?: (404, "no live node \(node)")
        case nil: (500, "internal error")
        }
    }
}

extension HTTPError {
    /// An engine failure as an HTTP error: 503 with `Retry-After` while the engine is away.
    init(_ error: EngineError) {
        switch error {
        case .invalidStream(let why): self.init(.badRequest, message: why)
        case .unavailable: self.init(.serviceUnavailable, headers: [.retryAfter: "1"], message: EngineFailure.unavailableReason)
        case .unknownNode(let node): self.init(.notFound, message: "no live node \(node)")
        }
    }
}

/// A route that lets an engine failure escape answers like the server API does (503 and
/// `Retry-After` when the engine is away) instead of a bare 500.
extension EngineError: HTTPResponseError {
    public var status: HTTPResponse.Status { HTTPError(self).status }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        if case .unavailable(let detail) = self {
            context.logger.warning("engine unavailable", metadata: ["detail": "\(detail)", "path": "\(request.uri.path)"])
        }
        return try HTTPError(self).response(from: request, context: context)
    }
}
