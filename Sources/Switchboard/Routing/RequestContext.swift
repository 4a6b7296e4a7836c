import Foundation
import Hummingbird
import Logging
import NIOCore
import SwitchboardWire

/// How a request reached the router.
public enum Transport: Sendable {
    /// An HTTP request on `channel`.
    case http(any Channel)
    /// A frame on a WebSocket connection.
    case webSocket(ConnectionHandle)
}

/// What the gateway knows when it builds a request context, for either transport.
public struct SwitchboardContextSource: RequestContextSource {
    public let logger: Logger
    public let transport: Transport
    /// Set at the upgrade for WebSocket frames; for HTTP, `IdentityMiddleware` sets it.
    public let identity: Identity?
    /// The frame's META (WebSocket only).
    public let meta: Meta?
    let gateway: GatewayCore

    init(logger: Logger, transport: Transport, identity: Identity?, meta: Meta?, gateway: GatewayCore) {
        self.logger = logger
        self.transport = transport
        self.identity = identity
        self.meta = meta
        self.gateway = gateway
    }
}

/// A request context a Switchboard router can use: routes see the caller's identity
/// and, over WebSocket, the connection, whichever transport carried the request.
public protocol SwitchboardRequestContextProtocol: RequestContext where Source == SwitchboardContextSource {
    var identity: Identity? { get set }
    var transport: Transport { get }
    var meta: Meta? { get }
    /// Publish and send from inside a route.
    var switchboard: SwitchboardPublisher { get }
}

/// The default context.
public struct SwitchboardRequestContext: SwitchboardRequestContextProtocol {
    public var coreContext: CoreRequestContextStorage
    public var identity: Identity?
    public let transport: Transport
    public let meta: Meta?
    public let switchboard: SwitchboardPublisher

    public init(source: SwitchboardContextSource) {
        self.coreContext = .init(source: source)
        self.identity = source.identity
        self.transport = source.transport
        self.meta = source.meta
        self.switchboard = SwitchboardPublisher(core: source.gateway)
    }

    /// JSON replies as clients expect them: `"/streams/lobby"`, not `"\/streams\/lobby"`.
    public var responseEncoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes
        return encoder
    }
}

extension SwitchboardRequestContextProtocol {
    /// No route matched the request (Hummingbird's not-found responder marks the context so),
    /// as opposed to a route that answered 404 itself.
    var isUnrouted: Bool { self.endpointPath == nil || self.endpointPath == "NotFound" }

    /// The WebSocket connection that sent this request, if any.
    public var connection: ConnectionHandle? {
        if case .webSocket(let handle) = self.transport { return handle }
        return nil
    }
}
