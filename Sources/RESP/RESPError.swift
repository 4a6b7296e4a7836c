import NIOCore

public enum RESPError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Malformed bytes from the server (or limits exceeded). The connection is closed.
    case protocolError(String)
    /// The server replied with an error (`-CODE message` or `!` blob error).
    case server(code: String, message: String)
    /// The command did not get a reply within its timeout (the late reply is discarded).
    case timeout
    /// The caller's task was cancelled before the reply came.
    case cancelled
    /// The connection was closed before the reply arrived (or while writing).
    case connectionClosed
    /// Not sent: the client is disconnected or the connection had already closed. Commands
    /// fail fast and are never buffered, so a retry cannot run one twice.
    case notConnected
    /// The client/subscriber has been shut down.
    case shutdown
    /// A reply had an unexpected shape for a typed command.
    case unexpectedReply(String)

    public var description: String {
        switch self {
        case .protocolError(let s): return "RESP protocol error: \(s)"
        case .server(let c, let m): return "Redis error \(c): \(m)"
        case .timeout: return "RESP command timed out"
        case .cancelled: return "RESP command cancelled"
        case .connectionClosed: return "RESP connection closed"
        case .notConnected: return "RESP client not connected"
        case .shutdown: return "RESP client shut down"
        case .unexpectedReply(let s): return "unexpected reply: \(s)"
        }
    }

    /// An error reply from Redis (as opposed to a failure of the connection or the client).
    public var isServerReply: Bool {
        if case .server = self { return true }
        return false
    }

    /// Builds `.server` from an error line like "WRONGTYPE Operation against ...".
    static func fromServer(_ buffer: ByteBuffer) -> RESPError {
        let s = String(buffer: buffer)
        if let sp = s.firstIndex(of: " ") {
            return .server(code: String(s[..<sp]), message: String(s[s.index(after: sp)...]))
        }
        return .server(code: s, message: "")
    }
}
