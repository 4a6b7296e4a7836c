import Crypto
import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import SwitchboardAuth

/// How an upgrade ended, for the child channel to act on.
enum UpgradeOutcome: Sendable {
    /// The connection now speaks WebSocket; its handler lives in the pipeline.
    case webSocket
    /// A plain HTTP request.
    case http(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
    /// An upgrade was asked for and refused: answer `status` with `reason` and close.
    case refused(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, HTTPResponse.Status, String)
}

/// What the upgrade decided about one connection, carried from the handshake to the pipeline.
struct AcceptedUpgrade {
    var identity: Identity?
    var session: String
    var resumedCursors: [String: Int64]?
    /// The node that held the resumed session's connection, if any (it is told to close it).
    var previousNode: String?
    /// Streams the backend's connect hook subscribes the connection to.
    var streams: [String] = []
    /// An echo connection (conformance testing): no identity, no session, no protocol.
    var echo = false
}

/// RFC 6455 upgrade that authenticates before accepting and installs a
/// `ConnectionHandler` (not an async channel): the connection then costs no task.
/// The handler reads and writes WebSocket frames itself: no decoder handler per
/// connection, and a push is framed once for all sockets.
struct SwitchboardWebSocketUpgrader: NIOTypedHTTPServerProtocolUpgrader {
    typealias UpgradeResult = UpgradeOutcome

    let core: GatewayCore
    /// Set when the handshake was refused, read by the not-upgrading path.
    let refusal: NIOLockedValueBox<(HTTPResponse.Status, String)?>
    let accepted: NIOLockedValueBox<AcceptedUpgrade?>

    var supportedProtocol: String { "websocket" }
    var requiredUpgradeHeaders: [String] { [] }

    static let magicGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    static let subprotocol = "switchboard.v1"

    struct Refused: Error {}

    func buildUpgradeResponse(
        channel: any Channel, upgradeRequest: HTTPRequestHead, initialResponseHeaders: HTTPHeaders
    ) -> EventLoopFuture<HTTPHeaders> {
        let promise = channel.eventLoop.makePromise(of: HTTPHeaders.self)
        promise.completeWithTask {
            try await self.decide(upgradeRequest, headers: initialResponseHeaders)
        }
        // Accepted: the HTTP guard leaves before the upgrade handler removes the decoder (which
        // may pass on bytes the client sent after its request), so only WebSocket handlers follow.
        promise.futureResult.whenSuccess { _ in HTTPConnectionGuard.remove(from: channel) }
        return promise.futureResult
    }

    private func refuse(_ status: HTTPResponse.Status, _ reason: String) -> Refused {
        self.refusal.withLockedValue { $0 = (status, reason) }
        return Refused()
    }

    private func decide(_ head: HTTPRequestHead, headers initial: HTTPHeaders) async throws -> HTTPHeaders {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let configuration = self.core.configuration
        let echo = configuration.echoPath == path
        guard path == configuration.webSocketPath || echo else {
            throw self.refuse(.notFound, "no WebSocket endpoint at \(path); use \(configuration.webSocketPath)")
        }
        guard head.method == .GET else { throw self.refuse(.badRequest, "WebSocket upgrades use GET") }
        // RFC 6455 §4.1: the opening handshake is an HTTP/1.1 (or later) request.
        guard (head.version.major, head.version.minor) >= (1, 1) else { throw self.refuse(.badRequest, "WebSocket upgrades need HTTP/1.1") }
        guard head.headers["sec-websocket-version"].first == "13",
            let key = head.headers["sec-websocket-key"].first, Data(base64Encoded: key)?.count == 16
        else {
            throw self.refuse(.badRequest, "bad WebSocket handshake (Sec-WebSocket-Key / Version 13)")
        }
        guard !self.core.isDraining else {
            throw self.refuse(.serviceUnavailable, "node is draining; connect to another node")
        }
        // Browsers always send Origin; a page on another site must not use the user's cookies here.
        if !configuration.allowedOrigins.isEmpty, let origin = head.headers["origin"].first,
            !configuration.allowedOrigins.contains(origin)
        {
            throw self.refuse(.forbidden, "origin \(origin) is not allowed")
        }
        guard self.core.admitConnection() else {
            throw self.refuse(.tooManyRequests, "too many new connections on this node; retry with backoff")
        }
        if echo {
            self.accepted.withLockedValue { $0 = AcceptedUpgrade(identity: nil, session: "", resumedCursors: nil, echo: true) }
            return Self.acceptHeaders(key: key, offered: [], initial: initial)
        }
        let request = try HTTPRequest(head, secure: false, splitCookie: false)

        // Auth before anything else: a refused upgrade never sees an application frame.
        var identity: Identity? = nil
        var streams: [String] = []
        let token = TokenExtractor.token(from: request)
        if let verifier = self.core.verifier, let token {
            do {
                identity = try await verifier.verify(token)
            } catch {
                throw self.refuse(.unauthorized, error.description)
            }
        } else if token == nil, let backend = self.core.backend,
            let decision = await backend.connect(
                BackendConnectRequest(
                    cookie: head.headers["cookie"].first, authorization: head.headers["authorization"].first,
                    origin: head.headers["origin"].first, node: self.core.nodeID))
        {
            // Session-cookie auth: the application's backend says who this is.
            switch decision {
            case .refuse(let status, let reason):
                throw self.refuse(status, reason)
            case .accept(let user, let roles, let expiresAt, let subscribed):
                if let user {
                    identity = Identity(user: user, roles: Set(roles), expiresAt: expiresAt ?? SwitchboardClaims.latestDate)
                } else if !configuration.allowAnonymous {
                    throw self.refuse(.unauthorized, "the backend named no user and this node accepts no anonymous connections")
                }
                streams = subscribed
            }
        } else if !self.core.configuration.allowAnonymous {
            throw self.refuse(
                .unauthorized, self.core.verifier == nil ? "this node accepts no anonymous connections and verifies no tokens" : "missing token")
        }

        // A fast refusal the client can see; the handler enforces the limit exactly (1008).
        if let max = configuration.maxConnectionsPerUser, let user = identity?.user, self.core.connectionCount(of: user) >= max {
            throw self.refuse(.tooManyRequests, "user \(user) already holds \(max) connections")
        }

        // Resume the session named by the client, if it is still alive and belongs to this user.
        let query = head.uri.split(separator: "?", maxSplits: 1).dropFirst().first ?? ""
        let requested = QueryString.value(of: "sid", in: query) ?? head.headers["switchboard-session"].first
        var accepted = AcceptedUpgrade(identity: identity, session: GatewayCore.newSessionID(), resumedCursors: nil)
        accepted.streams = streams
        do {
            if let requested, let record = try await self.core.sessionStore.loadSession(requested) {
                if record.user == identity?.user {
                    accepted.session = record.id
                    accepted.resumedCursors = record.cursors
                    accepted.previousNode = record.node
                }
            }
            if accepted.resumedCursors == nil {
                try await self.core.sessionStore.saveSession(SessionRecord(id: accepted.session, user: identity?.user))
            }
        } catch {
            self.core.logger.warning("upgrade refused: session store unavailable", metadata: ["error": "\(error)"])
            throw self.refuse(.serviceUnavailable, EngineFailure.unavailableReason)
        }
        self.accepted.withLockedValue { $0 = accepted }
        let offered = head.headers["sec-websocket-protocol"].flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
        return Self.acceptHeaders(key: key, offered: offered, initial: initial)
    }

    private static func acceptHeaders(key: String, offered: [String], initial: HTTPHeaders) -> HTTPHeaders {
        var headers = initial
        var sha = Insecure.SHA1()
        sha.update(data: Data((key + Self.magicGUID).utf8))
        headers.replaceOrAdd(name: "Upgrade", value: "websocket")
        headers.replaceOrAdd(name: "Connection", value: "upgrade")
        headers.add(name: "Sec-WebSocket-Accept", value: Data(sha.finalize()).base64EncodedString())
        // Browsers fail a connection whose offered subprotocols get no answer, so echo
        // ours when offered; the token entry (`bearer.…`) is never echoed.
        if offered.contains(Self.subprotocol) {
            headers.add(name: "Sec-WebSocket-Protocol", value: Self.subprotocol)
        }
        return headers
    }

    func upgrade(channel: any Channel, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<UpgradeOutcome> {
        channel.eventLoop.makeCompletedFuture {
            guard let accepted = self.accepted.withLockedValue({ $0 }) else { throw Refused() }
            let handler = ConnectionHandler(
                core: self.core, loopHub: self.core.hub.loopHub(for: channel.eventLoop),
                session: accepted.session, identity: accepted.identity, resumedCursors: accepted.resumedCursors,
                previousNode: accepted.previousNode, echo: accepted.echo
            )
            handler.serverStreams = accepted.streams
            try channel.pipeline.syncOperations.addHandler(handler)
            return .webSocket
        }
    }
}
