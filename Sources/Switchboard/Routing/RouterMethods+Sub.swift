import HTTPTypes
import Hummingbird

extension HTTPRequest.Method {
    /// `SUB`: a subscription request, routed so the application can authorise it.
    public static let sub = HTTPRequest.Method("SUB")!
}

extension RouterMethods {
    /// Authorise subscriptions to streams matching `path`: answer 2xx to allow,
    /// throw (403, 404 …) to refuse. The stream is the request's path.
    @discardableResult
    public func sub(
        _ path: RouterPath = "",
        use handler: @Sendable @escaping (Request, Context) async throws -> some ResponseGenerator
    ) -> Self {
        self.on(path, method: .sub, use: handler)
    }
}
