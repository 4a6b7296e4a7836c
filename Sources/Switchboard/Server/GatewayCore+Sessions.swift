import NIOCore
import SwitchboardWire

/// Built-in streams: every connection has its session's, its user's and the broadcast stream.
enum BuiltinAuthorization {
    case allowed, forbidden, notBuiltin
}

extension GatewayCore {
    static let broadcastStream = BuiltinStream.broadcast

    static func userStream(_ user: String) -> String { BuiltinStream.user(user) }
    static func sessionStream(_ session: String) -> String { BuiltinStream.session(session) }

    func personalStreams(session: String, user: String?) -> [String] {
        var streams = [Self.sessionStream(session), Self.broadcastStream]
        if let user { streams.append(Self.userStream(user)) }
        return streams
    }

    func isBuiltinStream(_ stream: String) -> Bool {
        BuiltinStream.isBuiltin(stream)
    }

    /// Streams whose subscribers are tracked as presence: those subscribed through a route, unless
    /// their stream rule turns presence off. `asSubject`: `stream` is known not to be a presence stream.
    func hasPresence(_ stream: String, asSubject: Bool = false) -> Bool {
        guard !self.isBuiltinStream(stream), asSubject || PresenceEvents.subject(of: stream) == nil else { return false }
        return self.configuration.streamRules?.rule(for: stream)?.rule.presence ?? true
    }

    func authorizeBuiltin(stream: String, session: String, user: String?) -> BuiltinAuthorization {
        if stream == Self.broadcastStream { return .allowed }
        if BuiltinStream.isUserStream(stream) { return user.map { Self.userStream($0) == stream } == true ? .allowed : .forbidden }
        if stream.hasPrefix(BuiltinStream.sessionPrefix) { return Self.sessionStream(session) == stream ? .allowed : .forbidden }
        return .notBuiltin
    }

    /// A connection is up: it becomes its session's live connection, closing an older one
    /// here or, through the engine, on the node that held it. Returns the engine's part, for the
    /// connection's task to run.
    func connectionOpened(_ handle: ConnectionHandle, previousNode: String?) -> @Sendable () async -> Void {
        if let old = self.hub.claimSession(handle.session, by: handle), old.id != handle.id {
            old.close(code: .sessionTakenOver, reason: "session resumed by a newer connection")
        }
        let sessions = self.sessionStore
        let nodes = self.nodeRegistry
        let takeOver = previousNode.flatMap { $0 == self.nodeID ? nil : $0 }
        return {
            try? await sessions.touchSession(handle.session, user: handle.user, connected: true)
            if let takeOver {
                let message = ControlMessage.closeSession(
                    handle.session, code: CloseCode.sessionTakenOver.rawValue, reason: "session resumed by a newer connection")
                try? await nodes.send(message, to: takeOver)
            }
        }
    }

    /// A connection closed: its presence ends on every stream it had, its shares of the
    /// node-level subscriptions it `held` go back, and the session's "connected" mark is
    /// cleared if this connection had set it (`clearSessionMark`).
    func connectionClosed(_ handle: ConnectionHandle, streams: [String], held: [String], clearSessionMark: Bool) {
        self.hub.releaseSession(handle.session, by: handle)
        let streamStore = self.streamStore
        let presenceStore = self.presenceStore
        let sessions = self.sessionStore
        let member = PresenceMember(user: handle.user, session: handle.session, connection: "\(self.nodeID)/\(handle.id)")
        let presence = streams.filter { self.hasPresence($0) }
        self.bookkeeping {
            for stream in held { await streamStore.unsubscribe(stream) }
            for stream in presence { await PresenceEvents.record(.leave, member, on: stream, presence: presenceStore, streams: streamStore) }
            if clearSessionMark { try? await sessions.touchSession(handle.session, user: handle.user, connected: false) }
        }
        if let backend = self.backend {
            // A notification, outside the bookkeeping: a slow backend must not hold up a drain.
            let caller = BackendCaller(
                user: handle.user, roles: [], session: handle.session, connection: member.connection, node: self.nodeID, transport: "websocket")
            Task { await backend.disconnected(caller) }
        }
    }

    /// Clears the session's "connected" mark set by a connection that closed while setting it.
    func clearSessionMark(_ handle: ConnectionHandle) async {
        try? await self.sessionStore.touchSession(handle.session, user: handle.user, connected: false)
    }
}
