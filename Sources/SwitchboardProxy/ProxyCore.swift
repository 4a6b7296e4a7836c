import Foundation
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import SwitchboardWire

/// What every connection of a proxy shares: settings, the upstream connector, metrics and
/// the sessions by id.
final class ProxyCore: Sendable {
    let configuration: ProxyConfiguration
    let connector: UpstreamConnector
    let metrics = ProxyMetrics()
    let logger: Logger
    private let sessions = NIOLockedValueBox<[String: ProxySession]>([:])
    private let draining = NIOLockedValueBox(false)
    /// Client connections held (accepted and not yet closed), and how many may be.
    let connectionLimit: ConnectionLimit

    /// The request header and query parameter a client resumes its session with.
    static let sessionHeader = "Switchboard-Proxy-Session"
    static let sessionQuery = "proxy_session"
    static let resumedHeader = "Switchboard-Proxy-Resumed"
    /// The one session of receiver mode.
    static let receiverID = "receiver"

    init(configuration: ProxyConfiguration, group: any EventLoopGroup, logger: Logger) throws {
        self.configuration = configuration
        self.connector = try UpstreamConnector(
            url: configuration.upstream, maxMessageSize: configuration.maxMessageSize, connectTimeout: configuration.connectTimeout, group: group
        )
        self.logger = logger
        self.connectionLimit = ConnectionLimit(maximum: configuration.maxConnections)
    }

    var isDraining: Bool { self.draining.withLockedValue { $0 } }
    var sessionCount: Int { self.sessions.withLockedValue { $0.count } }

    func session(_ id: String) -> ProxySession? {
        self.sessions.withLockedValue { $0[id] }
    }

    func remove(_ session: ProxySession) {
        self.sessions.withLockedValue { if $0[session.id] === session { $0[session.id] = nil } }
    }

    /// Receiver mode: the single session, created at start.
    func startReceiver() async {
        let session = ProxySession(id: Self.receiverID, core: self, forwardedHeaders: [:])
        self.sessions.withLockedValue { $0[session.id] = session }
        await session.start(first: nil)
    }

    /// Stops taking clients and closes every session with 1001.
    func shutdown() async {
        self.draining.withLockedValue { $0 = true }
        let all = self.sessions.withLockedValue { Array($0.values) }
        for session in all { await session.shutdown() }
    }

    /// A refused upgrade: the client gets `status` with a JSON reason.
    struct Refusal: Error {
        let status: HTTPResponse.Status
        let reason: String
    }

    /// Decides an upgrade: the session the client joins and the extra response headers.
    /// A new sender session makes its first upstream connection here, so an upstream that
    /// refuses the client (401, 403…) refuses it at the proxy too.
    func admit(_ head: HTTPRequestHead, remote: SocketAddress?) async throws(Refusal) -> (ProxySession, HTTPHeaders) {
        guard !self.isDraining else { throw Refusal(status: .serviceUnavailable, reason: "proxy is shutting down") }
        var response = HTTPHeaders()
        let offered = head.headers["sec-websocket-protocol"].flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
        if self.configuration.mode == .receiver {
            guard let session = self.session(Self.receiverID), await !session.unavailable else {
                throw Refusal(status: .serviceUnavailable, reason: "upstream unavailable; retry later")
            }
            response.add(name: Self.sessionHeader, value: session.id)
            if let first = offered.first { response.add(name: "Sec-WebSocket-Protocol", value: first) }
            return (session, response)
        }

        let query = head.uri.split(separator: "?", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
        let requested = head.headers[Self.sessionHeader].first ?? Self.queryValue(Self.sessionQuery, in: query)
        if let requested, let session = self.session(requested), await session.isResumable {
            self.metrics.sessionsResumed.increment()
            response.add(name: Self.sessionHeader, value: session.id)
            response.add(name: Self.resumedHeader, value: "true")
            if let subprotocol = session.subprotocol { response.add(name: "Sec-WebSocket-Protocol", value: subprotocol) }
            return (session, response)
        }
        guard self.sessionCount < self.configuration.maxSessions else {
            throw Refusal(status: .serviceUnavailable, reason: "proxy holds the most sessions allowed (\(self.configuration.maxSessions))")
        }
        let forwarded = self.forwardedHeaders(head, remote: remote)
        let first = await self.connector.connect(
            headers: ProxySession.handshakeHeaders(forwarded: forwarded, resumeID: nil, configuration: self.configuration)
        )
        var subprotocol = offered.first
        switch first {
        case .refused(let status) where (400..<500).contains(status.code) && status != .requestTimeout && status != .tooManyRequests:
            self.metrics.upstreamRefused.increment()
            let passed: HTTPResponse.Status = [401, 403, 404].contains(status.code) ? .init(code: Int(status.code)) : .badGateway
            throw Refusal(status: passed, reason: "upstream refused the connection: HTTP \(status.code)")
        case .connected(let connection):
            subprotocol = connection.response.headers["sec-websocket-protocol"].first
        case .refused, .failed:
            // The upstream is away: the client is taken in and the session keeps trying.
            break
        }
        let session = ProxySession(id: Self.newSessionID(), core: self, forwardedHeaders: forwarded, subprotocol: subprotocol)
        self.sessions.withLockedValue { $0[session.id] = session }
        await session.start(first: first)
        if self.isDraining {
            // Shutdown began while this session was being made and did not see it.
            await session.shutdown()
            throw Refusal(status: .serviceUnavailable, reason: "proxy is shutting down")
        }
        self.metrics.sessionsNew.increment()
        response.add(name: Self.sessionHeader, value: session.id)
        response.add(name: Self.resumedHeader, value: "false")
        if let subprotocol { response.add(name: "Sec-WebSocket-Protocol", value: subprotocol) }
        return (session, response)
    }

    /// The client headers named in `forwardHeaders`, plus X-Forwarded-For.
    private func forwardedHeaders(_ head: HTTPRequestHead, remote: SocketAddress?) -> HTTPHeaders {
        var headers = HTTPHeaders()
        for name in self.configuration.forwardHeaders {
            for value in head.headers[name] { headers.add(name: name, value: value) }
        }
        if let ip = remote?.ipAddress {
            let previous = head.headers["x-forwarded-for"].joined(separator: ", ")
            headers.add(name: "X-Forwarded-For", value: previous.isEmpty ? ip : "\(previous), \(ip)")
        }
        return headers
    }

    static func queryValue(_ name: String, in query: String) -> String? {
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.first.map(String.init) == name {
                return parts.count > 1 ? String(parts[1]).removingPercentEncoding : ""
            }
        }
        return nil
    }

    /// 128 random bits, base64url: a session id nobody can guess.
    static func newSessionID() -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        return Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }
}
