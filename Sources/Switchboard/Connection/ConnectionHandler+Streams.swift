import NIOCore
import SwitchboardWire

extension ConnectionHandler {
    /// Subscribe to `stream`: live from now when `since` is nil, else replay what
    /// came after `since` (in `epoch`), then go live without gap or duplicate.
    ///
    /// The connection is registered for live messages *before* history is read, and
    /// live messages wait in the cursor while history is written, so nothing
    /// published in between is missed; offsets make the overlap harmless.
    func subscribe(_ stream: String, since: Int64?, epoch: String?, tag: String? = nil, requestID: String?) {
        guard let subscription = self.prepareSubscription(stream, since: since, epoch: epoch, tag: tag, requestID: requestID) else { return }
        Task { await self.run(subscription) }
    }

    /// A subscription registered on the loop, whose engine work is still to do.
    struct PendingSubscription: Sendable {
        let stream: String, generation: UInt32
        let since: Int64?, epoch: String?, tag: String?, requestID: String?
    }

    /// The subscription a task started for was replaced or dropped meanwhile: it stops quietly.
    struct Superseded: Error {}

    /// The loop's half of a SUB: a cursor catching up, registered for live messages. A
    /// re-subscription keeps the connection's share of the node-level subscription.
    func prepareSubscription(_ stream: String, since: Int64?, epoch: String?, tag: String?, requestID: String?) -> PendingSubscription? {
        guard case .open = self.state else { return nil }
        self.lastGeneration &+= 1
        let generation = self.lastGeneration
        self.streams[stream] = StreamCursor(
            stream: stream, since: since, epoch: epoch, tag: tag, generation: generation, engine: self.streams[stream]?.engine ?? .none
        )
        self.loopHub.addSubscriber(stream, self)
        return PendingSubscription(stream: stream, generation: generation, since: since, epoch: epoch, tag: tag, requestID: requestID)
    }

    /// The engine's half of a SUB (in a task): the node-level subscription, then the replay or
    /// the live start. Several run one after the other in one task when a connection starts.
    func run(_ s: PendingSubscription) async {
        let core = self.core
        let loop = self.loopHub.loop
        do {
            try await self.takeEngineShare(s.stream, generation: s.generation)
            if let since = s.since {
                let from = StreamCursor.ReadPoint(offset: since, epoch: s.epoch, tag: s.tag)
                try await self.replay(s.stream, generation: s.generation, from: from, requestID: s.requestID, first: true)
            } else {
                let position = try await core.streamStore.position(of: s.stream)
                try await self.stillSubscribed(s.stream, generation: s.generation)
                try await core.streamStore.ack(session: self.session, stream: s.stream, offset: position.top)
                loop.execute { self.startedLive(s.stream, generation: s.generation, position: position, requestID: s.requestID) }
            }
        } catch is Superseded {
            return
        } catch {
            loop.execute { self.subscriptionFailed(s.stream, generation: s.generation, requestID: s.requestID, error: error) }
        }
    }

    /// Makes sure this connection holds its share of the node-level subscription of `stream`
    /// (the engine's live channel) before the subscription of `generation` reads anything: it
    /// takes it, waits for the one being taken, or finds it held. Whoever takes it gives it back
    /// if the stream was dropped meanwhile, so a share is never leaked nor given back twice.
    private func takeEngineShare(_ stream: String, generation: UInt32) async throws {
        enum Step {
            case held
            case wait(EventLoopFuture<Void>)
            case take(EventLoopPromise<Void>)
            case superseded
        }
        let loop = self.loopHub.loop
        let step = try await loop.submit { () -> Step in
            guard case .open = self.state, let index = self.streams.index(of: stream), self.streams[at: index].generation == generation else {
                return .superseded
            }
            switch self.streams[at: index].engine {
            case .held: return .held
            case .taking(let future): return .wait(future)
            case .none:
                let promise = loop.makePromise(of: Void.self)
                self.streams[at: index].engine = .taking(promise.futureResult)
                return .take(promise)
            }
        }.get()
        switch step {
        case .held:
            return
        case .superseded:
            throw Superseded()
        case .wait(let future):
            try await future.get()
            // The taker may have found the stream dropped meanwhile (and given the share back).
            try await self.stillSubscribed(stream, generation: generation)
        case .take(let promise):
            let engine = self.core.streamStore
            do {
                try await engine.subscribe(stream)
            } catch {
                loop.execute {
                    if let index = self.streams.index(of: stream), case .taking(let f) = self.streams[at: index].engine, f === promise.futureResult {
                        self.streams[at: index].engine = .none
                    }
                }
                promise.fail(error)
                throw error
            }
            let kept: Bool
            do {
                kept = try await loop.submit { () -> Bool in
                    guard case .open = self.state, let index = self.streams.index(of: stream),
                        case .taking(let f) = self.streams[at: index].engine, f === promise.futureResult
                    else { return false }
                    self.streams[at: index].engine = .held
                    return true
                }.get()
            } catch {
                // The loop is shutting down: nobody will give the share back but this task.
                promise.fail(error)
                await engine.unsubscribe(stream)
                throw error
            }
            promise.succeed(())
            if !kept {
                // Unsubscribed or closed while the share was being taken: it goes back at once.
                await engine.unsubscribe(stream)
                throw Superseded()
            }
        }
    }

    /// Throws `Superseded` unless the subscription of `generation` is still the connection's:
    /// checked before a step records the session's position in the engine, so work left over
    /// from a replaced or dropped subscription does not hold history for it.
    private func stillSubscribed(_ stream: String, generation: UInt32) async throws {
        let current = try await self.loopHub.loop.submit { () -> Bool in
            guard case .open = self.state, let cursor = self.streams[stream] else { return false }
            return cursor.generation == generation
        }.get()
        if !current { throw Superseded() }
    }

    /// Read history in batches and write it, pausing while the socket is full, until the cursor
    /// goes live (or the subscription was replaced or dropped).
    private func replay(_ stream: String, generation: UInt32, from: StreamCursor.ReadPoint, requestID: String?, first: Bool) async throws {
        let loop = self.loopHub.loop
        let limit = self.configuration.replayBatchSize
        var point = from
        var first = first
        while true {
            // Every read names the message it continues after: the history it reads must still
            // hold that one (or the history was rolled back since, and the reader is told).
            let read = try await self.core.streamStore.read(stream, after: point.offset, epoch: point.epoch, tag: point.tag, limit: limit)
            if first {
                // The subscription's first read: where the session now stands in the stream is
                // recorded before anything is written, so it holds the history it is about to
                // read (no other session's acks trim it), never past the stream's top. An offset
                // beyond the top in the same epoch is not recovered (SUB410), not refused: it is
                // what a client sees after a failover lost writes it had received.
                try await self.stillSubscribed(stream, generation: generation)
                switch read {
                case .gone(let position):
                    try await self.core.streamStore.ack(session: self.session, stream: stream, offset: position.top)
                case .messages(_, let position):
                    try await self.core.streamStore.ack(session: self.session, stream: stream, offset: min(point.offset, position.top))
                }
            }
            let isFirst = first
            let next = try await loop.submit { () -> StreamCursor.Next? in
                guard case .open = self.state, let index = self.streams.index(of: stream),
                    let actions = self.streams[at: index].historyRead(read, generation: generation, limit: limit, first: isFirst)
                else { return nil }
                self.perform(actions, on: stream, requestID: requestID)
                return actions.next
            }.get()
            first = false
            guard case .read(let after) = next else { return }
            point = after
            try await loop.flatSubmit { self.waitUntilWritable() }.get()
        }
    }

    /// Writes what a step of catching up asks for: the SUB reply, history, the live messages
    /// that waited.
    private func perform(_ actions: StreamCursor.HistoryActions, on stream: String, requestID: String?) {
        switch actions.reply {
        case .recovered(let since, let position)?:
            var meta = Self.subscriptionMeta(requestID: requestID, position: position, recovered: true)
            meta[MetaKey.offset] = String(since)
            self.writeFrame(method: .sub, status: 200, target: stream, meta: meta)
            self.core.metrics.resumesRecovered.increment()
        case .notRecovered(let since, let position)?:
            self.core.metrics.resumesNotRecovered.increment()
            self.writeFrame(
                method: .sub, status: 410, target: stream,
                meta: Self.subscriptionMeta(requestID: requestID, position: position, recovered: false),
                body: JSONBody.error(
                    "history_gone",
                    reason: "messages after offset \(since) are no longer retained, the stream's epoch changed, or its history was rolled back"
                )
            )
        case nil:
            break
        }
        for message in actions.history {
            self.writeRaw(WebSocketFraming.push(message, allocator: self.core.allocator))
        }
        self.core.metrics.historyDeliveries.increment(by: Int64(actions.history.count))
        for message in actions.waited {
            self.writeRaw(WebSocketFraming.push(message, allocator: self.core.allocator))
        }
        self.loopHub.delivered += actions.waited.count
    }

    /// Subscribed from the top of the stream: nothing to replay.
    private func startedLive(_ stream: String, generation: UInt32, position: StreamPosition, requestID: String?) {
        guard case .open = self.state, let index = self.streams.index(of: stream),
            let actions = self.streams[at: index].startedLive(at: position, generation: generation)
        else { return }
        self.writeFrame(
            method: .sub, status: 200, target: stream, meta: Self.subscriptionMeta(requestID: requestID, position: position, recovered: nil))
        self.perform(actions, on: stream, requestID: requestID)
        if case .read(let point) = actions.next { self.startReplay(stream, from: point) }
    }

    /// The cursor asked for history (a gap, a broken chain, an overflow): read it in a task.
    private func startReplay(_ stream: String, from point: StreamCursor.ReadPoint) {
        guard let cursor = self.streams[stream] else { return }
        let generation = cursor.generation
        let loop = self.loopHub.loop
        Task {
            do {
                try await self.replay(stream, generation: generation, from: point, requestID: nil, first: false)
            } catch {
                loop.execute { self.subscriptionFailed(stream, generation: generation, requestID: nil, error: error) }
            }
        }
    }

    private func subscriptionFailed(_ stream: String, generation: UInt32, requestID: String?, error: any Error) {
        if error is Superseded { return }
        self.logger.warning("subscription failed", metadata: ["stream": "\(stream)", "error": "\(error)"])
        let (status, reason) = EngineFailure.status(of: error)
        self.subscriptionRefused(stream, generation: generation, requestID: requestID, status: status, error: "subscribe_failed", reason: reason)
    }

    /// Drops the subscription of `generation` (if still current) and answers SUB with `status`.
    private func subscriptionRefused(
        _ stream: String, generation: UInt32, requestID: String?, status: Int, error: String, reason: String
    ) {
        guard let cursor = self.streams[stream], cursor.generation == generation else { return }
        if case .open = self.state {} else { return }
        self.streams[stream] = nil
        self.loopHub.removeSubscriber(stream, self)
        self.giveBackEngineShare(of: cursor)
        self.replyError(status: status, method: .sub, target: stream, requestID: requestID, error: error, reason: reason)
    }

    static func subscriptionMeta(requestID: String?, position: StreamPosition, recovered: Bool?) -> Meta {
        var meta = Meta()
        if let requestID { meta[MetaKey.requestID] = requestID }
        meta[MetaKey.offset] = String(position.top)
        meta[MetaKey.epoch] = position.epoch
        if let recovered { meta[MetaKey.recovered] = recovered ? "1" : "0" }
        return meta
    }

    /// A live message from the hub (the frame is shared by every local subscriber).
    /// Hot path: one search of the connection's few streams, then the cursor decides in place.
    func deliverLive(_ message: StreamMessage, frame: ByteBuffer) {
        guard case .open = self.state else { return self.core.metrics.droppedClosing.increment() }
        guard let index = self.streams.index(of: message.stream) else { return }
        let decision = self.streams[at: index].live(message, writable: self.isWritable)
        if let position = decision.epochChanged {
            // The stream's history was lost and it restarted: tell the client, then follow the new epoch.
            self.writeFrame(
                method: .sub, status: 410, target: message.stream,
                meta: Self.subscriptionMeta(requestID: nil, position: position, recovered: false),
                body: JSONBody.error("epoch_changed", reason: "the stream's history was lost")
            )
        }
        switch decision.action {
        case .write:
            self.writeRaw(frame)
            self.loopHub.delivered += 1
        case .slowConsumer:
            self.core.metrics.droppedSlowConsumer.increment()
            self.close(code: .slowConsumer, reason: "outbound queue over \(self.configuration.maxQueueBytes) bytes; resume to continue")
        case .read(let point):
            self.startReplay(message.stream, from: point)
        case .ignore, .buffered, .overflowed:
            break
        }
    }

    /// The engine says live messages of `stream` up to `position` may have been lost on the
    /// way (pub/sub was away): the cursor decides whether to read the gap from history. A
    /// changed epoch is found by the read (`.gone`) and answered with SUB410.
    func catchUp(_ stream: String, to position: StreamPosition) {
        guard case .open = self.state, let index = self.streams.index(of: stream) else { return }
        if let point = self.streams[at: index].engineCaughtUp(to: position) {
            self.startReplay(stream, from: point)
        }
    }

    /// A share held is given back now; one being taken is given back by its taker, which finds
    /// the stream gone.
    private func giveBackEngineShare(of cursor: StreamCursor) {
        guard case .held = cursor.engine else { return }
        let engine = self.core.streamStore
        let stream = cursor.stream
        self.core.bookkeeping { await engine.unsubscribe(stream) }
    }

    func unsubscribe(_ stream: String) {
        guard let cursor = self.streams.remove(stream) else { return }
        self.loopHub.removeSubscriber(stream, self)
        self.giveBackEngineShare(of: cursor)
        let streamStore = self.core.streamStore
        let presenceStore = self.core.presenceStore
        let session = self.session
        let member = self.presenceMember
        let hasPresence = self.core.hasPresence(stream)
        self.core.bookkeeping {
            try? await streamStore.release(session: session, stream: stream)
            if hasPresence { await PresenceEvents.record(.leave, member, on: stream, presence: presenceStore, streams: streamStore) }
        }
    }

    /// This connection as a member of a stream's presence.
    var presenceMember: PresenceMember {
        PresenceMember(user: self.identity?.user, session: self.session, connection: "\(self.core.nodeID)/\(self.handle.id)")
    }

    /// Record an ACK; `requestID` gets ACK200 once the engine recorded it.
    func acknowledge(_ stream: String, offset: Int64, requestID: String?) -> Bool {
        guard let cursor = self.streams[stream] else { return false }
        let engine = self.core.streamStore
        let session = self.session
        let upTo = min(offset, cursor.last)
        let loop = self.loopHub.loop
        Task {
            do {
                try await engine.ack(session: session, stream: stream, offset: upTo)
                if let requestID {
                    loop.execute { self.writeFrame(method: .ack, status: 200, target: stream, meta: [MetaKey.requestID: requestID]) }
                }
            } catch {
                let (status, reason) = EngineFailure.status(of: error)
                loop.execute {
                    self.logger.debug("ack failed", metadata: ["stream": "\(stream)", "error": "\(error)"])
                    self.replyError(status: status, method: .ack, target: stream, requestID: requestID, error: "ack_failed", reason: reason)
                }
            }
        }
        return true
    }
}
