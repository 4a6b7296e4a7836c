import Foundation
import HTTPTypes
import NIOCore
import SwitchboardAuth
import SwitchboardWire

/// The application's backend as the gateway asks it: requests no Swift route answers, and the
/// stream rules' `backend` decisions. `SwitchboardBridge.HTTPBackend` asks one over HTTP.
public protocol SwitchboardBackend: Sendable {
    /// A request (a WebSocket request frame) that no route of the router answers.
    func forward(_ request: BackendRequest) async -> BackendResponse
    /// May `caller` subscribe to `stream` (a rule with `subscribe: backend`)? A 2xx allows;
    /// any other status is the SUB reply.
    func authorizeSubscription(to stream: String, caller: BackendCaller) async -> BackendResponse
    /// A WebSocket connection closed (a notification; its answer is not awaited).
    func disconnected(_ caller: BackendCaller) async
    /// An upgrade that carries no token: who is it (from its cookies or `Authorization`), and
    /// which streams to subscribe it to? Nil: this backend has no connect hook.
    func connect(_ request: BackendConnectRequest) async -> BackendConnectDecision?
}

extension SwitchboardBackend {
    public func disconnected(_ caller: BackendCaller) async {}
    public func connect(_ request: BackendConnectRequest) async -> BackendConnectDecision? { nil }
}

/// What an upgrade shows the connect hook: the credentials a browser sends by itself.
public struct BackendConnectRequest: Sendable {
    public var cookie: String?
    public var authorization: String?
    public var origin: String?
    public var node: String

    public init(cookie: String?, authorization: String?, origin: String?, node: String) {
        self.cookie = cookie
        self.authorization = authorization
        self.origin = origin
        self.node = node
    }
}

public enum BackendConnectDecision: Sendable, Equatable {
    /// The connection is `user` (nil: anonymous) until `expiresAt` (nil: for as long as it is
    /// open), subscribed to `streams` besides its built-in ones.
    case accept(user: String?, roles: [String], expiresAt: Date?, streams: [String])
    /// The upgrade is answered `status` with `reason`.
    case refuse(HTTPResponse.Status, String)
}

/// Who is asking: what the gateway vouches for (the backend gets it in signed headers).
public struct BackendCaller: Sendable, Equatable {
    public var user: String?
    public var roles: [String]
    public var session: String?
    /// `<node>/<connection id>`, unique in the cluster.
    public var connection: String?
    public var node: String
    public var transport: String

    public init(user: String?, roles: [String], session: String?, connection: String?, node: String, transport: String) {
        self.user = user
        self.roles = roles
        self.session = session
        self.connection = connection
        self.node = node
        self.transport = transport
    }
}

public struct BackendRequest: Sendable {
    public var method: HTTPRequest.Method
    /// Path and query, as the frame's target carried them.
    public var target: String
    public var body: ByteBuffer
    /// The frame's META (request id, content type, trace context, application keys).
    public var meta: Meta
    public var caller: BackendCaller

    public init(method: HTTPRequest.Method, target: String, body: ByteBuffer, meta: Meta, caller: BackendCaller) {
        self.method = method
        self.target = target
        self.body = body
        self.meta = meta
        self.caller = caller
    }
}

public struct BackendResponse: Sendable {
    public var status: HTTPResponse.Status
    /// Headers the gateway passes on (the bridge keeps only those it allows).
    public var headers: HTTPFields
    public var body: ByteBuffer

    public init(status: HTTPResponse.Status, headers: HTTPFields = [:], body: ByteBuffer = ByteBuffer()) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// An answer the gateway makes itself (backend down, slow, overloaded): `{"error":…,"reason":…}`.
    public static func failure(_ status: HTTPResponse.Status, _ error: String, _ reason: String, retryAfter: Int? = nil) -> BackendResponse {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        return BackendResponse(status: status, headers: headers, body: JSONBody.error(error, reason: reason))
    }

    /// The backend's answer to a `publish: backend` request asks the gateway to publish its body.
    public var asksToPublish: Bool { self.headers[HTTPField.Name("Switchboard-Publish")!] == "1" }
}

extension BackendCaller {
    /// The caller of a request the router serves, on either transport.
    init(_ context: some SwitchboardRequestContextProtocol, node: String) {
        let connection = context.connection
        self.init(
            user: context.identity?.user, roles: context.identity.map { $0.roles.sorted() } ?? [],
            session: connection?.session, connection: connection.map { "\($0.node)/\($0.id)" }, node: node,
            transport: connection == nil ? "http" : "websocket")
    }
}
