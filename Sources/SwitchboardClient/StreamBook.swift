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

    /// Starts `stream` at a message the application kept (resume after it): `last` is its offset,
    /// `epoch` and `tag` its epoch and tag (nil or empty: not known). The position counts as
    /// acked (the SUB that resumes after it records it), so no ACK is sent for it.
    ///
    /// Throws `.invalidArgument` for an offset outside 0…2^53−1, an epoch that is not a META
    /// value, or a tag that is not a message tag (``isValidTag(_:)``); the book is then unchanged.
    public mutating func seed(_ stream: String, last: Int64, epoch: String?, tag: String?) throws(SwitchboardClientError) {
        guard (0...StreamOffset.maximum).contains(last) else {
            throw .invalidArgument("offset \(last) of \(stream) is not an offset 0…\(StreamOffset.maximum)")
        }
        let epoch = Self.normalizedEpoch(epoch)
        if let epoch { try FrameValidation.checkMetaValue(epoch, key: MetaKey.epoch) }
        let tag: String? = (tag?.isEmpty ?? true) ? nil : tag
        if let tag, !Self.isValidTag(tag) {
            throw .invalidArgument("tag '\(tag)' of \(stream) is not a message tag (1-32 of letters, digits, '_.~-')")
        }
        var entry = self.entries[stream] ?? Entry()
        entry.last = last
        entry.epoch = epoch
        entry.tag = tag
        entry.acked = last
        self.entries[stream] = entry
    }

    /// Puts back the entry of `stream` as it was (nil: no entry) before a subscription that
    /// failed; no SUB is awaiting a reply for it any more.
    public mutating func restore(_ stream: String, to entry: Entry?) {
        var entry = entry
        entry?.awaitingReply = false
        self.entries[stream] = entry
    }

    /// The SUB sent for `stream` will not be answered with a SUB reply (the server answered it
    /// with an ERR frame, or it was given up): a later gap may resubscribe again.
    public mutating func subscribeFailed(_ stream: String) {
        self.entries[stream]?.awaitingReply = false
    }

    /// Whether `tag` is a message tag (META `t`, protocol §4.1). Nodes make them of six
    /// characters `[0-9a-z]`; like the JS client's `toTag`, any 1–32 characters of
    /// `[0-9A-Za-z_.~-]` are accepted.
    public static func isValidTag(_ tag: String) -> Bool {
        let bytes = tag.utf8
        guard !bytes.isEmpty, bytes.count <= 32 else { return false }
        return bytes.allSatisfy { b in
            (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z"))
                || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
                || b == UInt8(ascii: "_") || b == UInt8(ascii: ".") || b == UInt8(ascii: "~") || b == UInt8(ascii: "-")
        }
    }

    /// A tag received from the server: nil when absent, empty or not a tag (then it is not
    /// named on resume, the server resumes by offset alone).
    public static func validTag(_ value: String?) -> String? {
        guard let value, Self.isValidTag(value) else { return nil }
        return value
    }

    /// An epoch as kept and sent: nil when absent or empty (never sent as `e=`).
    public static func normalizedEpoch(_ value: String?) -> String? {
        guard let value, !value.isEmpty else { return nil }
        return value
    }

    /// A SUB reply. `solicited` when it carried an `r` (an answer to our SUB).
    public mutating func subscribeReply(_ stream: String, status: Int, id: Int64?, epoch: String?, solicited: Bool) -> SubscribeOutcome {
        let epoch = Self.normalizedEpoch(epoch)
        var entry = self.entries[stream] ?? Entry()
        if solicited { entry.awaitingReply = false }
        switch (status, id) {
        case (200..<300, let id):
            // The server's own SUB (built-in streams after a resume) while ours is on its way:
            // ours answers and positions the stream.
            if !solicited && entry.awaitingReply { return .subscribed }
            var lost = false
            if let id {
                let epochChanged = epoch != nil && entry.epoch != nil && epoch != entry.epoch
                // Without a known position (or on another epoch) pushes follow from `id + 1`.
                // With one, keep it: duplicates are dropped by offset, a gap triggers a resubscription.
                if entry.last == nil || epochChanged {
                    // A position in the old epoch that the server moved on from unasked: the
                    // history behind it was lost, and the application is told.
                    lost = !solicited && entry.last != nil
                    entry.last = id
                    entry.tag = nil
                }
            }
            if let epoch { entry.epoch = epoch }
            self.entries[stream] = entry
            return lost ? .notRecovered : .subscribed
        case (410, let id?):
            entry.last = id
            entry.tag = nil
            if let epoch { entry.epoch = epoch }
            self.entries[stream] = entry
            return .notRecovered
        default:
            // Refused, including a route's 410 (no `id`: the server holds no subscription).
            if entry.last == nil && !entry.awaitingReply {
                self.entries[stream] = nil
            } else {
                self.entries[stream] = entry
            }
            return .refused
        }
    }

    /// A PUSH with offset `id` (and epoch `epoch`, tag `tag`) on `stream`.
    /// An empty epoch counts as none, a `tag` that is not a tag (``isValidTag(_:)``) as none.
    public mutating func push(_ stream: String, id: Int64, epoch: String?, tag: String? = nil) -> PushDecision {
        let epoch = Self.normalizedEpoch(epoch)
        let tag = Self.validTag(tag)
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
