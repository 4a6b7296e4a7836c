import NIOCore

/// A Sendable reference to one WebSocket connection, for routes and the server API.
public final class ConnectionHandle: Sendable, Hashable, CustomStringConvertible {
    public let id: UInt64
    public let session: String
    public let user: String?
    public let node: String
    let loop: any EventLoop
    // Only touched on `loop`. A strong reference the connection clears when it closes
    // (a weak one would give every connection a side table and slow its retains).
    nonisolated(unsafe) var handler: ConnectionHandler?

    init(id: UInt64, session: String, user: String?, node: String, loop: any EventLoop) {
        self.id = id
        self.session = session
        self.user = user
        self.node = node
        self.loop = loop
    }

    /// Close the connection with `code` (see `CloseCode`).
    public func close(code: CloseCode = .normal, reason: String = "") {
        self.loop.execute {
            self.handler?.close(code: code, reason: reason)
        }
    }

    public static func == (lhs: ConnectionHandle, rhs: ConnectionHandle) -> Bool { lhs.id == rhs.id }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.id) }
    public var description: String { "connection \(self.id) session \(self.session) user \(self.user ?? "-")" }
}
