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
        var cursor = StreamCursor(
            stream: stream, last: since ?? 0, epoch: epoch ?? "", lastTag: tag ?? "", mode: .catchingUp(buffer: [], overflowed: false),
            generation: generation
        )
        cursor.engine = self.streams[stream]?.engine ?? .none
        self.streams[stream] = cursor
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
                try await self.replay(s.stream, generation: s.generation, after: since, epoch: s.epoch, tag: s.tag, requestID: s.requestID, reply: true)
            } else {
                let position = try await core.engine.position(of: s.stream)
                try await self.stillSubscribed(s.stream, generation: s.generation)
                try await core.engine.ack(session: self.session, stream: s.stream, offset: position.top)
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
        enum Step { case held, wait(EventLoopFuture<Void>), take(EventLoopPromise<Void>), superseded }
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
            let engine = self.core.engine
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

    /// Read history in batches and write it, pausing while the socket is full.
    private func replay(
        _ stream: String, generation: UInt32, after: Int64, epoch: String?, tag: String? = nil, requestID: String?, reply: Bool
    ) async throws {
        let loop = self.loopHub.loop
        let limit = self.configuration.replayBatchSize
        var after = after
        var epoch = epoch
        var tag = tag
        var reply = reply
        while true {
            // Every read names the message it continues after: the history it reads must still
            // hold that one (or the history was rolled back since, and the reader is told).
            let read = try await self.core.engine.read(stream, after: after, epoch: epoch, tag: tag, limit: limit)
            if reply {
                // The subscription's first read: where the session now stands in the stream is
                // recorded before anything is written, so it holds the history it is about to
                // read (no other session's acks trim it), never past the stream's top. An offset
                // beyond the top in the same epoch is not recovered (SUB410), not refused: it is
                // what a client sees after a failover lost writes it had received.
                try await self.stillSubscribed(stream, generation: generation)
                switch read {
                case .gone(let position):
                    try await self.core.engine.ack(session: self.session, stream: stream, offset: position.top)
                case .messages(_, let position):
                    try await self.core.engine.ack(session: self.session, stream: stream, offset: min(after, position.top))
                }
            }
            let first = reply
            let next: (offset: Int64, tag: String)? = try await loop.submit {
                self.applyHistory(stream, generation: generation, read: read, limit: limit, requestID: requestID, reply: first)
            }.get()
            reply = false
            guard let next else { return }
            if case .messages(_, let position) = read { epoch = position.epoch }
            after = next.offset
            tag = next.tag.isEmpty ? nil : next.tag
            try await loop.flatSubmit { self.waitUntilWritable() }.get()
        }
    }

    /// Write one batch of history. Returns where to read after next (offset and the tag there),
    /// or nil when the cursor went live (or the subscription was replaced or dropped).
    private func applyHistory(
        _ stream: String, generation: UInt32, read: HistoryRead, limit: Int, requestID: String?, reply: Bool
    ) -> (offset: Int64, tag: String)? {
        guard var cursor = self.streams[stream], cursor.generation == generation, case .open = self.state else { return nil }
        switch read {
        case .gone(let position):
            // History does not cover the gap: say so explicitly, then continue from the top.
            self.core.metrics.resumesNotRecovered.increment()
            self.writeFrame(
                method: .sub, status: 410, target: stream,
                meta: Self.subscriptionMeta(requestID: requestID, position: position, recovered: false),
                body: JSONBody.error(
                    "history_gone",
                    reason: "messages after offset \(cursor.last) are no longer retained, the stream's epoch changed, or its history was rolled back"
                )
            )
            cursor.last = position.top
            cursor.epoch = position.epoch
            cursor.lastTag = ""
            self.streams[stream] = cursor
            return self.finishCatchUp(stream)
        case .messages(let messages, let position):
            if reply {
                var meta = Self.subscriptionMeta(requestID: requestID, position: position, recovered: true)
                meta[MetaKey.offset] = String(cursor.last)
                self.writeFrame(method: .sub, status: 200, target: stream, meta: meta)
                self.core.metrics.resumesRecovered.increment()
            }
            cursor.epoch = position.epoch
            var written: Int64 = 0
            // One read of one log: each message follows the one before (the first was checked by
            // the read against the tag it was given).
            for message in messages where message.offset == cursor.last + 1 {
                self.writeRaw(Hub.pushFrame(message, allocator: self.core.allocator))
                cursor.last = message.offset
                cursor.lastTag = message.tag
                written += 1
            }
            self.core.metrics.historyDeliveries.increment(by: written)
            self.streams[stream] = cursor
            if messages.count >= limit { return (cursor.last, cursor.lastTag) }
            return self.finishCatchUp(stream)
        }
    }

    /// Subscribed from the top of the stream: nothing to replay.
    private func startedLive(_ stream: String, generation: UInt32, position: StreamPosition, requestID: String?) {
        guard var cursor = self.streams[stream], cursor.generation == generation, case .open = self.state else { return }
        cursor.last = position.top
        cursor.epoch = position.epoch
        cursor.lastTag = ""
        self.streams[stream] = cursor
        self.writeFrame(method: .sub, status: 200, target: stream, meta: Self.subscriptionMeta(requestID: requestID, position: position, recovered: nil))
        if let next = self.finishCatchUp(stream) {
            self.startReplay(stream, after: next.offset)
        }
    }

    /// Write the live messages that waited during replay. Returns where to read next
    /// if they left a gap (or overflowed), else switches the cursor to live.
    private func finishCatchUp(_ stream: String) -> (offset: Int64, tag: String)? {
        guard var cursor = self.streams[stream], case .catchingUp(let buffer, let overflowed) = cursor.mode else { return nil }
        var gap = overflowed
        for message in buffer where message.offset > cursor.last {
            // A gap, another epoch, or a message that does not follow the last one written (the
            // history was rolled back): read on from history, which tells which.
            guard message.offset == cursor.last + 1, message.epoch == cursor.epoch, message.follows(cursor.lastTag) else {
                gap = true
                break
            }
            self.writeRaw(Hub.pushFrame(message, allocator: self.core.allocator))
            self.loopHub.delivered += 1
            cursor.last = message.offset
            cursor.lastTag = message.tag
        }
        if gap {
            cursor.mode = .catchingUp(buffer: [], overflowed: false)
            self.streams[stream] = cursor
            return (cursor.last, cursor.lastTag)
        }
        cursor.mode = .live
        self.streams[stream] = cursor
        return nil
    }

    /// A live message skipped ahead (a message was lost on the way), or did not follow the last
    /// one written: read from history after the last one written, naming it.
    private func startReplay(_ stream: String, after: Int64) {
        guard let cursor = self.streams[stream] else { return }
        let generation = cursor.generation
        let epoch = cursor.epoch.isEmpty ? nil : cursor.epoch
        let tag = cursor.lastTag.isEmpty ? nil : cursor.lastTag
        let loop = self.loopHub.loop
        Task {
            do {
                try await self.replay(stream, generation: generation, after: after, epoch: epoch, tag: tag, requestID: nil, reply: false)
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
    /// Hot path: one hash lookup, then the cursor is mutated in place.
    func deliverLive(_ message: StreamMessage, frame: ByteBuffer) {
        guard case .open = self.state else { return self.core.metrics.droppedClosing.increment() }
        guard let index = self.streams.index(of: message.stream) else { return }
        switch self.streams[at: index].mode {
        case .live:
            if message.epoch != self.streams[at: index].epoch {
                // The stream's history was lost and it restarted: tell the client, then follow the new epoch.
                let position = StreamPosition(epoch: message.epoch, top: message.offset - 1)
                self.writeFrame(
                    method: .sub, status: 410, target: message.stream,
                    meta: Self.subscriptionMeta(requestID: nil, position: position, recovered: false),
                    body: JSONBody.error("epoch_changed", reason: "the stream's history was lost")
                )
                self.streams[at: index].epoch = message.epoch
                self.streams[at: index].last = message.offset - 1
                self.streams[at: index].lastTag = ""
            }
            let last = self.streams[at: index].last
            if message.offset <= last { return }
            // A gap (a message lost on the way), or the next offset naming another predecessor
            // than the message written last (the history was rolled back and written again):
            // read from history, which catches the gap up or says it cannot (SUB410).
            if message.offset > last + 1 || !message.follows(self.streams[at: index].lastTag) {
                self.streams[at: index].mode = .catchingUp(buffer: [message], overflowed: false)
                self.startReplay(message.stream, after: last)
                return
            }
            guard self.isWritable else {
                self.core.metrics.droppedSlowConsumer.increment()
                return self.close(code: .slowConsumer, reason: "outbound queue over \(self.configuration.maxQueueBytes) bytes; resume to continue")
            }
            self.writeRaw(frame)
            self.loopHub.delivered += 1
            self.streams[at: index].last = message.offset
            self.streams[at: index].lastTag = message.tag
        case .catchingUp(var buffer, let overflowed):
            if overflowed { return }
            self.streams[at: index].mode = .live  // drop the array's second reference before appending
            if buffer.count < StreamCursor.maxBuffered {
                buffer.append(message)
                self.streams[at: index].mode = .catchingUp(buffer: buffer, overflowed: false)
            } else {
                self.streams[at: index].mode = .catchingUp(buffer: [], overflowed: true)
            }
        }
    }

    /// The engine says live messages of `stream` up to `position` may have been lost on the
    /// way (pub/sub was away): if this cursor is behind, read the gap from history. A changed
    /// epoch is found by the read (`.gone`) and answered with SUB410.
    func catchUp(_ stream: String, to position: StreamPosition) {
        guard case .open = self.state, let index = self.streams.index(of: stream) else { return }
        guard case .live = self.streams[at: index].mode else {
            // A replay is reading, perhaps already past its last read of what was missed: it reads
            // once more before it goes live (the same as a live buffer that overflowed).
            self.streams[at: index].mode = .catchingUp(buffer: [], overflowed: true)
            return
        }
        let cursor = self.streams[at: index]
        // Behind, another epoch, or a top below what was written here (a rollback): read.
        guard position.epoch != cursor.epoch || position.top != cursor.last else { return }
        self.streams[at: index].mode = .catchingUp(buffer: [], overflowed: false)
        self.startReplay(stream, after: cursor.last)
    }

    /// A share held is given back now; one being taken is given back by its taker, which finds
    /// the stream gone.
    private func giveBackEngineShare(of cursor: StreamCursor) {
        guard case .held = cursor.engine else { return }
        let engine = self.core.engine
        let stream = cursor.stream
        self.core.bookkeeping { await engine.unsubscribe(stream) }
    }

    func unsubscribe(_ stream: String) {
        guard let cursor = self.streams.remove(stream) else { return }
        self.loopHub.removeSubscriber(stream, self)
        self.giveBackEngineShare(of: cursor)
        let engine = self.core.engine
        let session = self.session
        let member = self.presenceMember
        let hasPresence = self.core.hasPresence(stream)
        self.core.bookkeeping {
            try? await engine.release(session: session, stream: stream)
            if hasPresence { await PresenceEvents.record(.leave, member, on: stream, engine: engine) }
        }
    }

    /// This connection as a member of a stream's presence.
    var presenceMember: PresenceMember {
        PresenceMember(user: self.identity?.user, session: self.session, connection: "\(self.core.nodeID)/\(self.handle.id)")
    }

    /// Record an ACK; `requestID` gets ACK200 once the engine recorded it.
    func acknowledge(_ stream: String, offset: Int64, requestID: String?) -> Bool {
        guard let cursor = self.streams[stream] else { return false }
        let engine = self.core.engine
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
