/// The streams every connection has (protocol.md §3.3), named the same way by the gateway,
/// the engines and the clients.
public enum BuiltinStream {
    /// Messages to everyone.
    public static let broadcast = "/broadcast"
    public static let userPrefix = "/users/"
    public static let sessionPrefix = "/sessions/"

    /// Messages to every connection of `user`.
    public static func user(_ user: String) -> String { userPrefix + PathSegment.encode(user) }
    /// Messages to one session (its live connection, across reconnects).
    public static func session(_ session: String) -> String { sessionPrefix + PathSegment.encode(session) }

    /// `/broadcast`, a user's stream (`/users/<user>`: one segment; deeper paths such as
    /// `/users/ann/notes` are ordinary streams, under stream rules) and every `/sessions/…` path.
    public static func isBuiltin(_ stream: String) -> Bool {
        stream == broadcast || isUserStream(stream) || stream.hasPrefix(sessionPrefix)
    }

    /// `/users/<one segment>`.
    public static func isUserStream(_ stream: String) -> Bool {
        stream.hasPrefix(userPrefix) && stream.utf8.count > userPrefix.utf8.count
            && !stream.utf8.dropFirst(userPrefix.utf8.count).contains(UInt8(ascii: "/"))
    }

    /// A session's own stream has one consumer, that session.
    public static func isSessionStream(_ stream: String) -> Bool { stream.hasPrefix(sessionPrefix) }

    /// Whether acks trim the stream's history. Not `/broadcast`: every session holds it, so it
    /// would only ever be trimmed once every session of the cluster acked, at the cost of an
    /// entry per connection; it is kept by size and age only.
    public static func isTrimmedByAcks(_ stream: String) -> Bool { stream != broadcast }
}

/// Offsets a frame may carry: at most 2^53 - 1, the largest integer every client (JavaScript's
/// numbers, Redis's Lua) holds exactly. Larger values are refused as bad input, so no offset
/// arithmetic can overflow.
public enum StreamOffset {
    public static let maximum: Int64 = (1 << 53) - 1

    /// `text` as an offset in 0...maximum (decimal digits only), else nil.
    public static func parse<S: StringProtocol>(_ text: S) -> Int64? {
        guard !text.isEmpty, text.utf8.count <= 16, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
            let value = Int64(text), value <= maximum
        else { return nil }
        return value
    }
}
