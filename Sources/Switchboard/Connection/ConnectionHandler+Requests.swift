import HTTPTypes
import Hummingbird
import NIOCore
import SwitchboardWire

extension ConnectionHandler {
    /// First thing on a new connection: greet with the session, then subscribe the
    /// streams every connection has (its session, its user, broadcast).
    func start() {
        let opened = self.core.connectionOpened(self.handle, previousNode: self.previousNode)
        self.previousNode = nil
        let resumed = self.resumedCursors
        var meta = Meta()
        meta[MetaKey.session] = self.session
        meta["resumed"] = resumed == nil ? "0" : "1"
        meta["node"] = self.core.nodeID
        let body = JSONBody.hello(session: self.session, user: self.identity?.user, node: self.core.nodeID, cursors: resumed)
        self.writeFrame(method: .hello, status: 200, target: "/", meta: meta, body: body)
        let streams = self.core.personalStreams(session: self.session, user: self.identity?.user) + self.serverStreams
        let subscriptions = streams.compactMap {
            self.prepareSubscription($0, since: resumed?[$0], epoch: nil, tag: nil, requestID: nil)
        }
        self.resumedCursors = nil
        self.sessionMark = .setting
        let loop = self.loopHub.loop
        // One task per connection, not one per step: the session is registered as this node's
        // first (so a message to it finds this node), then the built-in streams, in turn.
        Task {
            await opened()
            let closed =
                (try? await loop.submit { () -> Bool in
                    if case .closed = self.state { return true }
                    self.sessionMark = .set
                    return false
                }.get()) ?? true
            if closed {
                // Closed while the mark was being set: cleared here, after it was set.
                await self.core.clearSessionMark(self.handle)
                return
            }
            for subscription in subscriptions { await self.run(subscription) }
        }
    }

    /// Route one parsed frame.
    func dispatch(_ frame: Frame) {
        let requestID = frame.meta[MetaKey.requestID]
        let target = String(frame.path)
        if frame.status != nil {
            return self.replyError(
                status: 400, method: frame.method, target: target, requestID: requestID, error: "bad_frame", reason: "requests carry no status")
        }
        let metrics = self.core.metrics
        switch frame.method {
        case .sub: metrics.messageIn(.sub)
        case .unsub: metrics.messageIn(.unsub)
        case .ack: metrics.messageIn(.ack)
        case .auth: metrics.messageIn(.auth)
        case .hello, .push, .error: metrics.messageIn(.invalid)
        default: metrics.messageIn(.request)
        }
        switch frame.method {
        case .sub:
            self.handleSubscribe(frame, stream: target, requestID: requestID)
        case .unsub:
            guard self.streams[target] != nil else {
                return self.replyError(
                    status: 404, method: .unsub, target: target, requestID: requestID, error: "not_subscribed", reason: "not subscribed to \(target)")
            }
            self.unsubscribe(target)
            if let requestID { self.writeFrame(method: .unsub, status: 200, target: target, meta: [MetaKey.requestID: requestID]) }
        case .ack:
            guard let offset = frame.meta[MetaKey.offset].flatMap({ StreamOffset.parse($0) }) else {
                return self.replyError(
                    status: 400, method: .ack, target: target, requestID: requestID, error: "bad_ack",
                    reason: "ACK needs id=<offset> (0…\(StreamOffset.maximum))")
            }
            guard self.acknowledge(target, offset: offset, requestID: requestID) else {
                return self.replyError(
                    status: 404, method: .ack, target: target, requestID: requestID, error: "not_subscribed", reason: "not subscribed to \(target)")
            }
        case .auth:
            self.handleAuth(token: frame.bodyString.trimmingCharacters(in: .whitespacesAndNewlines), requestID: requestID)
        case .hello, .push, .error:
            self.replyError(
                status: 400, method: frame.method, target: target, requestID: requestID, error: "bad_frame",
                reason: "\(frame.method) is sent by the server only")
        default:
            self.route(frame, requestID: requestID) { response, body in
                var meta = Meta()
                if let requestID { meta[MetaKey.requestID] = requestID }
                ResponseMeta.carry(response.headers, into: &meta)
                self.writeFrame(method: frame.method, status: Int(response.status.code), target: frame.target, meta: meta, body: body)
            }
        }
    }

    /// SUB: built-in streams are authorised here; any other goes through the router
    /// (`SUB /rooms/:id` routes), and a 2xx answer subscribes.
    private func handleSubscribe(_ frame: Frame, stream: String, requestID: String?) {
        var since: Int64? = nil
        if let value = frame.meta[MetaKey.since] {
            guard let parsed = StreamOffset.parse(value) else {
                return self.replyError(
                    status: 400, method: .sub, target: stream, requestID: requestID, error: "bad_since",
                    reason: "since must be an offset 0…\(StreamOffset.maximum)")
            }
            since = parsed
        }
        let epoch = frame.meta[MetaKey.epoch]
        let tag = frame.meta[MetaKey.tag]
        let resumeAfter = since
        if self.streams[stream] == nil, self.applicationStreamCount >= self.configuration.maxSubscriptions {
            return self.replyError(
                status: 429, method: .sub, target: stream, requestID: requestID, error: "too_many_subscriptions",
                reason: "at most \(self.configuration.maxSubscriptions) subscriptions per connection")
        }
        switch self.core.authorizeBuiltin(stream: stream, session: self.session, user: self.identity?.user) {
        case .allowed:
            self.subscribe(stream, since: since, epoch: epoch, tag: tag, requestID: requestID)
        case .forbidden:
            self.replyError(status: 403, method: .sub, target: stream, requestID: requestID, error: "forbidden", reason: "not your stream")
        case .notBuiltin:
            // A presence stream is authorised by the route of the stream it describes.
            let subject = PresenceEvents.subject(of: stream)
            let presence = self.core.hasPresence(subject ?? stream, asSubject: true)
            if subject != nil, !presence {
                return self.replyError(
                    status: 404, method: .sub, target: stream, requestID: requestID, error: "no_presence",
                    reason: "no presence is kept for \(subject!)")
            }
            var routed = frame
            if let subject { routed.target = subject }
            self.route(routed, requestID: requestID) { response, body in
                guard (200..<300).contains(response.status.code) else {
                    var meta = Meta()
                    if let requestID { meta[MetaKey.requestID] = requestID }
                    return self.writeFrame(method: .sub, status: Int(response.status.code), target: stream, meta: meta, body: body)
                }
                guard self.streams[stream] != nil || self.applicationStreamCount < self.configuration.maxSubscriptions else {
                    return self.replyError(
                        status: 429, method: .sub, target: stream, requestID: requestID, error: "too_many_subscriptions",
                        reason: "at most \(self.configuration.maxSubscriptions) subscriptions per connection")
                }
                self.subscribe(stream, since: resumeAfter, epoch: epoch, tag: tag, requestID: requestID)
                if subject == nil, presence {
                    let member = self.presenceMember
                    let presenceStore = self.core.presenceStore
                    let streamStore = self.core.streamStore
                    Task { await PresenceEvents.record(.join, member, on: stream, presence: presenceStore, streams: streamStore) }
                }
            }
        }
    }

    /// Subscriptions that count toward `maxSubscriptions`: the built-in streams every connection
    /// has (its session's, its user's, broadcast) do not.
    var applicationStreamCount: Int {
        self.streams.count(where: { !BuiltinStream.isBuiltin($0) })
    }

    /// Send a frame through the router in a task; `completion` runs back on the loop.
    private func route(_ frame: Frame, requestID: String?, completion: @escaping @Sendable (Response, ByteBuffer) -> Void) {
        guard self.inFlight < self.configuration.maxInFlightRequests else {
            return self.replyError(
                status: 429, method: frame.method, target: frame.target, requestID: requestID, error: "too_many_requests",
                reason: "at most \(self.configuration.maxInFlightRequests) requests in flight per connection")
        }
        guard let method = HTTPRequest.Method(frameMethod: frame.method) else {
            return self.replyError(
                status: 400, method: frame.method, target: frame.target, requestID: requestID, error: "bad_frame", reason: "unsupported method")
        }
        self.inFlight += 1
        let source = SwitchboardContextSource(
            logger: self.logger, transport: .webSocket(self.handle), identity: self.identity, meta: frame.meta, gateway: self.core
        )
        let request = Request(
            head: HTTPRequest(method: method, scheme: nil, authority: nil, path: frame.target),
            body: RequestBody(buffer: frame.body)
        )
        let core = self.core
        let loopHub = self.loopHub
        let limit = self.configuration.maxMessageSize
        loopHub.startTask {
            var routed = await core.responder.respond(request, source)
            // A frame's status is 100…599 (protocol.md §2); whatever a route or backend made of it.
            if !(100...599).contains(routed.status.code) {
                routed = Response(
                    status: .internalServerError, body: ResponseBody(byteBuffer: JSONBody.error("internal", reason: "bad response status")))
            }
            var result: (Response, ByteBuffer)
            do {
                let (body, overflow) = try await BodyCollector.collect(routed.body, limit: limit)
                result =
                    overflow
                    ? (Response(status: .internalServerError), JSONBody.error("response_too_large", reason: "response body over \(limit) bytes"))
                    : (routed, body)
            } catch {
                result = (Response(status: .internalServerError), JSONBody.error("internal", reason: "response body failed"))
            }
            let (response, body) = result
            loopHub.onLoop {
                self.inFlight -= 1
                if case .open = self.state { completion(response, body) }
            }
        }
    }

    /// AUTH: replace the connection's token before it expires. The new token must be
    /// valid and name the same user.
    private func handleAuth(token: String, requestID: String?) {
        guard let verifier = self.core.verifier else {
            return self.replyError(
                status: 400, method: .auth, target: "/", requestID: requestID, error: "auth_disabled", reason: "this node verifies no tokens")
        }
        let loop = self.loopHub.loop
        Task {
            let result: Result<Identity, AuthError>
            do throws(AuthError) { result = .success(try await verifier.verify(token)) } catch { result = .failure(error) }
            loop.execute {
                guard case .open = self.state else { return }
                switch result {
                case .failure(let error):
                    self.replyError(status: 401, method: .auth, target: "/", requestID: requestID, error: "unauthorized", reason: error.description)
                case .success(let identity):
                    guard identity.user == self.identity?.user else {
                        return self.replyError(
                            status: 403, method: .auth, target: "/", requestID: requestID, error: "forbidden",
                            reason: "a refreshed token must name the same user")
                    }
                    self.identity = identity
                    self.loopHub.watchExpiry(identity.expiresAt)
                    var meta = Meta()
                    if let requestID { meta[MetaKey.requestID] = requestID }
                    self.writeFrame(
                        method: .auth, status: 200, target: "/", meta: meta, body: JSONBody.object(["expiresAt": Int(identity.expiresAtSeconds)]))
                }
            }
        }
    }
}

extension Meta {
    init(_ pairs: [String: String]) {
        self.init()
        for (k, v) in pairs.sorted(by: { $0.key < $1.key }) { self[k] = v }
    }
}
