import SwitchboardWire

/// Per-stream resume bookkeeping (protocol §9), as a pure value type.
///
/// For every stream it keeps `last` (the offset handed to the application), the
/// stream's `epoch`, the tag of the message at `last`, the last offset acked and whether a SUB
/// is awaiting its reply.
public struct StreamBook: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var last: Int64?
        public var epoch: String?
        /// The tag of the message at `last`, when it was a message (not a SUB reply's top): a
        /// resume names it, so a history rolled back and written again is not taken for this one.
        public var tag: String?
        public var acked: Int64?
        /// A SUB we sent (with `r`) has not been answered yet.
        public var awaitingReply = false
        public init(last: Int64? = nil, epoch: String? = nil, tag: String? = nil) {
            self.last = last
            self.epoch = epoch
            self.tag = tag
        }
    }

    public enum PushDecision: Sendable, Equatable {
        /// Hand the message over. `notRecovered` when the push revealed an epoch change.
        case deliver(notRecovered: Bool)
        /// A duplicate (`id <= last`), or a message after a gap while a resubscription is pending.
        case drop
        /// A gap: drop the message and resubscribe with `since = last`.
        case resubscribe(notRecovered: Bool)
    }

    public enum SubscribeOutcome: Sendable, Equatable {
        case subscribed
        case notRecovered
        case refused
    }

    public private(set) var entries: [String: Entry] = [:]

    public init() {}

    public subscript(stream: String) -> Entry? { self.entries[stream] }

    public func last(of stream: String) -> Int64? { self.entries[stream]?.last }

    /// Parameters of the SUB to send for `stream` (`since`/`e`/`t` when a position is known);
    /// marks the stream as awaiting a reply.
    public mutating func prepareSubscribe(_ stream: String) -> (since: Int64?, epoch: String?, tag: String?) {
        var entry = self.entries[stream] ?? Entry()
        entry.awaitingReply = true
        self.entries[stream] = entry
        guard let last = entry.last else { return (nil, nil, nil) }
        return (last, entry.epoch, entry.tag)
    }

    /// Starts `stream` at a message the application kept (resume after it).
    public mutating func seed(_ stream: String, last: Int64, epoch: String, tag: String?) {
        var entry = self.entries[stream] ?? Entry()
        entry.last = last
        entry.epoch = epoch
        entry.tag = tag
        self.entries[stream] = entry
    }

    /// A SUB reply. `solicited` when it carried an `r` (an answer to our SUB).
    public mutating func subscribeReply(_ stream: String, status: Int, id: Int64?, epoch: String?, solicited: Bool) -> SubscribeOutcome {
        var entry = self.entries[stream] ?? Entry()
        if solicited { entry.awaitingReply = false }
        switch status {
        case 200..<300:
            if let id {
                let epochChanged = epoch != nil && entry.epoch != nil && epoch != entry.epoch
                // Without a known position (or on another epoch) pushes follow from `id + 1`.
                // With one, keep it: duplicates are dropped by offset, a gap triggers a resubscription.
                if entry.last == nil || epochChanged {
                    entry.last = id
                    entry.tag = nil
                }
            }
            if let epoch { entry.epoch = epoch }
            self.entries[stream] = entry
            return .subscribed
        case 410:
            if let id {
                entry.last = id
                entry.tag = nil
            }
            if let epoch { entry.epoch = epoch }
            self.entries[stream] = entry
            return .notRecovered
        default:
            if entry.last == nil && !entry.awaitingReply {
                self.entries[stream] = nil
            } else {
                self.entries[stream] = entry
            }
            return .refused
        }
    }

    /// A PUSH with offset `id` (and epoch `epoch`, tag `tag`) on `stream`.
    public mutating func push(_ stream: String, id: Int64, epoch: String?, tag: String? = nil) -> PushDecision {
        var entry = self.entries[stream] ?? Entry()
        defer { self.entries[stream] = entry }
        var notRecovered = false
        if let epoch {
            if let current = entry.epoch, current != epoch {
                // Treated as a SUB410 first: the position restarts at this push.
                notRecovered = true
                entry.last = id - 1
                entry.tag = nil
            }
            entry.epoch = epoch
        }
        guard let last = entry.last else {
            entry.last = id
            entry.tag = tag
            return .deliver(notRecovered: notRecovered)
        }
        if id <= last { return .drop }
        if id == last + 1 {
            entry.last = id
            entry.tag = tag
            return .deliver(notRecovered: notRecovered)
        }
        if entry.awaitingReply { return .drop }
        return .resubscribe(notRecovered: notRecovered)
    }

    /// The server could not record the ack of `stream` (ACK503: its engine was away): it is
    /// taken again by the next `takeAcks`.
    public mutating func ackFailed(_ stream: String) {
        self.entries[stream]?.acked = nil
    }

    /// Streams whose `last` advanced past the last ack; marks them acked.
    public mutating func takeAcks() -> [(stream: String, id: Int64)] {
        var acks: [(stream: String, id: Int64)] = []
        for (stream, entry) in self.entries {
            guard let last = entry.last, last > 0, last != entry.acked else { continue }
            acks.append((stream, last))
            self.entries[stream]!.acked = last
        }
        return acks.sorted { $0.stream < $1.stream }
    }

    /// The connection went away: no SUB is awaiting a reply any more.
    public mutating func connectionLost() {
        for key in self.entries.keys { self.entries[key]!.awaitingReply = false }
    }

    public mutating func forget(_ stream: String) {
        self.entries[stream] = nil
    }

    public var streams: [String] { self.entries.keys.sorted() }
}

/// What to do when a connection ends (protocol §8).
public enum CloseDisposition: Sendable, Equatable {
    /// Reconnect with exponential backoff.
    case reconnect
    /// Reconnect after a random delay of up to a few seconds (4503, node draining).
    case reconnectAfterRandomDelay(max: Duration)
    /// Do not reconnect (4403 disconnected on purpose, 4409 session taken over).
    case stop

    /// Reconnect with backoff after waiting `rateLimitPause` (4429: the connection kept exceeding
    /// the rate limit; coming straight back would only repeat it).
    case reconnectAfterRateLimit

    public static func forCloseCode(_ code: UInt16?) -> CloseDisposition {
        switch code {
        case 4403, 4409: return .stop
        case 4503: return .reconnectAfterRandomDelay(max: .seconds(3))
        case 4429: return .reconnectAfterRateLimit
        default: return .reconnect
        }
    }
}

/// Built-in streams the server subscribes every connection to (protocol §3.3).
enum BuiltInStreams {
    static func isBuiltIn(_ stream: String) -> Bool {
        BuiltinStream.isBuiltin(stream)
    }
}
