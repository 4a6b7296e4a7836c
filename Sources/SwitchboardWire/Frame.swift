import NIOCore

/// One Switchboard frame: `HEAD|TARGET|META|BODY`.
///
/// `HEAD` is a method with an optional three-digit status (`POST`, `POST201`,
/// `PUSH200`), `TARGET` a percent-encoded path with optional query, `META` a list
/// of `key=value` pairs separated by `;`, and `BODY` everything after the third `|`.
/// The body is a slice of the buffer the frame was parsed from: it is never copied.
public struct Frame: Sendable, Equatable {
    public var method: Method
    /// Present on responses and pushes, absent on requests.
    public var status: Int?
    public var target: String
    public var meta: Meta
    public var body: ByteBuffer

    public init(method: Method, status: Int? = nil, target: String, meta: Meta = Meta(), body: ByteBuffer = ByteBuffer()) {
        self.method = method
        self.status = status
        self.target = target
        self.meta = meta
        self.body = body
    }

    /// The path part of the target (before `?`).
    public var path: Substring {
        if let q = self.target.firstIndex(of: "?") {
            return self.target[..<q]
        }
        return self.target[...]
    }

    /// The query part of the target (after `?`), if any.
    public var query: Substring? {
        guard let q = self.target.firstIndex(of: "?") else { return nil }
        return self.target[self.target.index(after: q)...]
    }

    /// The body decoded as UTF-8 text (copies; for tests and logs).
    public var bodyString: String {
        String(buffer: self.body)
    }
}

/// A frame method: one to sixteen upper-case ASCII letters.
public struct Method: Sendable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let rawValue: String

    public init?(_ rawValue: String) {
        guard FrameLimits.isValidMethod(rawValue.utf8) else { return nil }
        self.rawValue = rawValue
    }

    public init(stringLiteral value: String) {
        precondition(FrameLimits.isValidMethod(value.utf8), "invalid frame method \(value)")
        self.rawValue = value
    }

    public var description: String { self.rawValue }

    public static let get: Method = "GET"
    public static let post: Method = "POST"
    public static let put: Method = "PUT"
    public static let patch: Method = "PATCH"
    public static let delete: Method = "DELETE"
    /// Subscribe to a stream (through the router, so the application authorises it).
    public static let sub: Method = "SUB"
    /// Unsubscribe from a stream.
    public static let unsub: Method = "UNSUB"
    /// Processed up to offset `id` on a stream.
    public static let ack: Method = "ACK"
    /// Refresh the connection's token.
    public static let auth: Method = "AUTH"
    /// Server → client: the session greeting, first frame on every connection.
    public static let hello: Method = "HELLO"
    /// Server → client: a message on a subscribed stream.
    public static let push: Method = "PUSH"
    /// Server → client: a frame that could not be parsed.
    public static let error: Method = "ERR"
}

enum FrameLimits {
    static let maxMethodLength = 16
    static let maxTargetLength = 4096
    static let maxMetaLength = 4096

    static func isValidMethod(_ bytes: some Sequence<UInt8>) -> Bool {
        var count = 0
        for b in bytes {
            guard b >= UInt8(ascii: "A"), b <= UInt8(ascii: "Z") else { return false }
            count += 1
        }
        return count >= 1 && count <= maxMethodLength
    }
}
