import AsyncHTTPClient
import Foundation
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Switchboard
import SwitchboardWire

/// Asks the application's HTTP backend over a pooled, kept-alive HTTP/1.1 client: request frames
/// no route answers, the subscribe hook, the disconnect notification. Every answer is bounded
/// (in flight per node and per connection, time, size); whatever goes wrong is an answer too
/// (502, 503, 504, 429), so no frame is left without one. Run it as a service: it closes its
/// pool on shutdown.
public final class HTTPBackend: SwitchboardBackend, Service {
    public let configuration: BackendConfiguration
    private let client: HTTPClient
    private let logger: Logger
    private let load = NIOLockedValueBox(Load())

    struct Load {
        var node = 0
        var connections: [String: Int] = [:]
    }

    public init(configuration: BackendConfiguration, eventLoopGroup: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        var pool = HTTPClient.Configuration.ConnectionPool(
            idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: max(1, configuration.poolSize))
        // A backend that is down is a 502 now, not after retries for the whole connect timeout.
        pool.retryConnectionEstablishment = false
        var client = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: .milliseconds(Int64(configuration.connectTimeout * 1000)), read: nil),
            connectionPool: pool)
        client.httpVersion = .http1Only
        // No client spans: the gateway passes the frame's own `traceparent` on, and building span
        // attributes (a URL parse per request) was a tenth of the bridge's CPU with a no-op tracer.
        client.tracing.tracer = nil
        client.http1_1ConnectionDebugInitializer = { channel in ResponseStatusGuard.install(on: channel) }
        self.client = HTTPClient(eventLoopGroupProvider: .shared(eventLoopGroup), configuration: client)
    }

    public func run() async throws {
        try? await gracefulShutdown()
        try await self.client.shutdown()
    }

    /// Closes the pool (for callers that do not run it as a service).
    public func shutdown() async throws {
        try await self.client.shutdown()
    }

    // MARK: SwitchboardBackend

    public func forward(_ request: BackendRequest) async -> BackendResponse {
        // What the backend is sent is exactly what is signed: a target Foundation's URL would
        // re-encode or cut (`#`, `{`, dot segments) is refused, not passed on changed.
        guard ForwardTarget.isValid(request.target) else {
            return .failure(.badRequest, "bad_target", "the target has a fragment, a dot segment or a character that must be percent-encoded")
        }
        // The hooks are the gateway's own calls: a client's frame never reaches them.
        let path = request.target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.target
        if self.configuration.hookPaths.contains(path) {
            return .failure(.notFound, "not_found", "\(path) is a hook of the gateway's, not a route")
        }
        return await self.exchange(
            method: request.method, target: request.target, body: request.body, meta: request.meta, caller: request.caller, passMeta: true)
    }

    public func authorizeSubscription(to stream: String, caller: BackendCaller) async -> BackendResponse {
        let body = Self.json(["stream": stream, "user": caller.user, "session": caller.session, "connection": caller.connection])
        return await self.exchange(
            method: .post, target: self.configuration.subscribeHook, body: body, meta: Meta(), caller: caller, passMeta: false,
            contentType: "application/json")
    }

    public func disconnected(_ caller: BackendCaller) async {
        guard let hook = self.configuration.disconnectHook else { return }
        let body = Self.json(["user": caller.user, "session": caller.session, "connection": caller.connection])
        _ = await self.exchange(
            method: .post, target: hook, body: body, meta: Meta(), caller: caller, passMeta: false, contentType: "application/json")
    }

    public func connect(_ request: BackendConnectRequest) async -> BackendConnectDecision? {
        guard let hook = self.configuration.connectHook else { return nil }
        let caller = BackendCaller(user: nil, roles: [], session: nil, connection: nil, node: request.node, transport: "websocket")
        var passed: [(String, String)] = []
        // The browser's own credentials, as it sent them (a value that could break a header is dropped).
        if let cookie = request.cookie.flatMap(HeaderValue.checkedCookie) { passed.append(("Cookie", cookie)) }
        if let authorization = request.authorization.flatMap(HeaderValue.checked) { passed.append(("Authorization", authorization)) }
        let body = Self.json(["origin": request.origin])
        let answer = await self.exchange(
            method: .post, target: hook, body: body, meta: Meta(), caller: caller, passMeta: false, contentType: "application/json",
            extraHeaders: passed)
        return ConnectAnswer.decision(answer)
    }

    // MARK: the exchange

    private enum Admission {
        case admitted
        case nodeFull
        case connectionFull
    }

    private func admit(_ connection: String?) -> Admission {
        let c = self.configuration
        return self.load.withLockedValue { load in
            guard load.node < c.maxInFlight else { return .nodeFull }
            if let connection {
                let n = load.connections[connection, default: 0]
                guard n < c.maxInFlightPerConnection else { return .connectionFull }
                load.connections[connection] = n + 1
            }
            load.node += 1
            return .admitted
        }
    }

    private func release(_ connection: String?) {
        self.load.withLockedValue { load in
            load.node -= 1
            if let connection {
                let n = load.connections[connection, default: 1] - 1
                load.connections[connection] = n > 0 ? n : nil
            }
        }
    }

    private func exchange(
        method: HTTPRequest.Method, target: String, body: ByteBuffer, meta: Meta, caller: BackendCaller, passMeta: Bool,
        contentType: String? = nil, extraHeaders: [(String, String)] = []
    ) async -> BackendResponse {
        let path = target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? target
        guard let backend = self.configuration.target(for: path) else {
            return .failure(.notFound, "not_found", "no route and no backend for \(path)")
        }
        switch self.admit(caller.connection) {
        case .nodeFull:
            return .failure(.serviceUnavailable, "backend_busy", "too many requests in flight to the backend", retryAfter: 1)
        case .connectionFull:
            return .failure(
                .tooManyRequests, "too_many_requests",
                "at most \(self.configuration.maxInFlightPerConnection) backend requests in flight per connection", retryAfter: 1)
        case .admitted:
            break
        }
        defer { self.release(caller.connection) }
        var request = self.request(
            to: backend, method: method, target: target, body: body, meta: passMeta ? meta : Meta(), caller: caller, contentType: contentType)
        for (name, value) in extraHeaders { request.headers.add(name: name, value: value) }
        let prepared = request
        let timeout = Duration.milliseconds(Int64(self.configuration.timeout * 1000))
        do {
            // One deadline for the head and the whole body: a backend that sends its head and
            // then stalls is a timeout too, not a frame (and a slot) held forever.
            let (status, headers, received) = try await Self.within(timeout) {
                let response = try await self.client.execute(prepared, timeout: .milliseconds(Int64(self.configuration.timeout * 1000)))
                let received = try await response.body.collect(upTo: self.configuration.maxResponseBytes)
                return (response.status.code, response.headers, received)
            }
            // A frame's status is 100…599, and 101 means nothing in a reply.
            guard (100...599).contains(status), status != 101 else {
                return .failure(.badGateway, "backend_bad_status", "the backend answered with status \(status)")
            }
            return BackendResponse(status: HTTPResponse.Status(code: Int(status)), headers: Self.passed(headers), body: received)
        } catch is NIOTooManyBytesError {
            return .failure(.badGateway, "backend_response_too_large", "the backend's response is over \(self.configuration.maxResponseBytes) bytes")
        } catch let error as ResponseStatusGuard.BadStatus {
            return .failure(.badGateway, "backend_bad_status", "the backend answered with status \(error.code)")
        } catch is TimedOut {
            return .failure(.gatewayTimeout, "backend_timeout", "the backend did not answer within \(self.configuration.timeout) s")
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout {
            return .failure(.gatewayTimeout, "backend_timeout", "the backend did not answer within \(self.configuration.timeout) s")
        } catch {
            self.logger.warning("backend request failed", metadata: ["target": "\(target)", "error": "\(error)"])
            return .failure(.badGateway, "backend_unavailable", "the backend could not be reached")
        }
    }

    struct TimedOut: Error {}

    /// `body`'s result, or `TimedOut` once `timeout` passed (`body` is then cancelled).
    static func within<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw TimedOut()
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }

    private func request(
        to backend: BackendConfiguration.Target, method: HTTPRequest.Method, target: String, body: ByteBuffer, meta: Meta,
        caller: BackendCaller, contentType: String?
    ) -> HTTPClientRequest {
        var request = HTTPClientRequest(url: backend.base + target)
        request.method = NIOHTTP1.HTTPMethod(rawValue: method.rawValue)
        let fields = BackendSignature.Fields(
            timestamp: String(Int(Date().timeIntervalSince1970)), method: method.rawValue, target: target,
            user: caller.user.map(HeaderValue.encode) ?? "", roles: caller.roles.map(HeaderValue.encode).joined(separator: ","),
            session: caller.session ?? "", connection: caller.connection ?? "", node: caller.node, transport: caller.transport)
        var h = HTTPHeaders()
        h.add(name: "Switchboard-Timestamp", value: fields.timestamp)
        if caller.user != nil { h.add(name: "Switchboard-User", value: fields.user) }
        if !fields.roles.isEmpty { h.add(name: "Switchboard-Roles", value: fields.roles) }
        if !fields.session.isEmpty { h.add(name: "Switchboard-Session", value: fields.session) }
        if !fields.connection.isEmpty { h.add(name: "Switchboard-Connection", value: fields.connection) }
        h.add(name: "Switchboard-Node", value: fields.node)
        h.add(name: "Switchboard-Transport", value: fields.transport)
        if let secret = self.configuration.secret {
            h.add(name: "Switchboard-Signature", value: BackendSignature.sign(fields, body: body, secret: secret))
        }
        if let type = contentType ?? meta["content-type"].flatMap(HeaderValue.checked) {
            h.add(name: "Content-Type", value: type)
        } else if body.readableBytes > 0 {
            h.add(name: "Content-Type", value: "application/json")
        }
        if let trace = meta["traceparent"].flatMap(HeaderValue.checked) { h.add(name: "traceparent", value: trace) }
        for item in meta where self.configuration.metaKeys.contains(item.key) {
            // Keys are `a-z 0-9 - _` on the wire; a value with a control byte never becomes a header.
            guard HeaderValue.isToken(item.key), let value = HeaderValue.checked(item.value) else { continue }
            h.add(name: "Switchboard-Meta-" + item.key, value: value)
        }
        request.headers = h
        request.body = .bytes(body)
        return request
    }

    /// Backend response headers a frame passes on (as META, see `ResponseMeta`) or a
    /// `publish: backend` answer uses; everything else stays between the two.
    static func passed(_ headers: HTTPHeaders) -> HTTPFields {
        var out = HTTPFields()
        for name in ["Content-Type", "Retry-After", "Location", "ETag", "Switchboard-Publish"] {
            if let value = headers.first(name: name), let field = HTTPField.Name(name) { out[field] = value }
        }
        return out
    }

    static func json(_ values: [String: String?]) -> ByteBuffer {
        var object: [String: String] = [:]
        for (key, value) in values { if let value { object[key] = value } }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return ByteBuffer(bytes: data)
    }
}

/// Header values the bridge builds from what clients and tokens chose.
enum HeaderValue {
    /// `value` when it is safe as a header value (visible ASCII and spaces, at most 1 KiB), else nil.
    static func checked(_ value: String) -> String? {
        guard value.utf8.count <= 1024, value.utf8.allSatisfy({ ($0 >= 0x20 && $0 < 0x7F) }) else { return nil }
        return value
    }

    /// A browser's `Cookie` header: large sites send several KiB, and values may hold obs-text;
    /// only control characters (a header break) are refused.
    static func checkedCookie(_ value: String) -> String? {
        guard value.utf8.count <= 16 * 1024, !value.utf8.contains(where: { $0 < 0x20 && $0 != 0x09 || $0 == 0x7F }) else { return nil }
        return value
    }

    static func isToken(_ name: String) -> Bool {
        !name.isEmpty
            && name.utf8.allSatisfy { b in
                (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
                    || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
            }
    }

    /// A user name or role in a header: percent-encoded beyond RFC 3986's unreserved characters,
    /// so a token's `sub` can hold anything and still never break a header.
    static func encode(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: Self.unencoded) ?? ""
    }

    /// ASCII letters and digits, `- . _ ~ @`: built once, not per header.
    private static let unencoded: CharacterSet = {
        var allowed = CharacterSet.alphanumerics.intersection(CharacterSet(charactersIn: Unicode.Scalar(0)...Unicode.Scalar(127)))
        allowed.insert(charactersIn: "-._~@")
        return allowed
    }()
}
