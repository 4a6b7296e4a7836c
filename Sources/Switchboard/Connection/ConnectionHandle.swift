import NIOCore

/// A Sendable reference to one WebSocket connection, for routes and the server API.
public final class ConnectionHandle: Sendable, Hashable, CustomStringConvertible {
    public let id: UInt64
    public let session: String
    public let user: String?
    public let node: String
    let loop: any EventLoop
    // A strong reference the connection clears when it closes (a weak one would give every
    // connection a side table and slow its retains). Only touched on `loop`, which debug builds
    // check on every access; an `NIOLoopBoundBox` would check it too, at one more allocation
    // per connection.
    nonisolated(unsafe) private var loopBoundHandler: ConnectionHandler?
    var handler: ConnectionHandler? {
        get {
            self.loop.assertInEventLoop()
            return self.loopBoundHandler
        }
        set {
            self.loop.assertInEventLoop()
            self.loopBoundHandler = newValue
        }
    }

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
