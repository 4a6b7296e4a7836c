import Logging
import SwitchboardWire

/// Tuning of a ``SwitchboardClient``.
public struct SwitchboardClientConfiguration: Sendable {
    /// Base of the exponential backoff (attempt 0 waits up to this long).
    public var minReconnectDelay: Duration = .milliseconds(500)
    /// Cap of the exponential backoff.
    public var maxReconnectDelay: Duration = .seconds(20)
    /// A connection that stayed up this long resets the backoff attempts.
    public var stableAfter: Duration = .seconds(10)
    /// How often the highest processed offset of each stream is acked.
    public var ackInterval: Duration = .seconds(1)
    /// Extra wait before reconnecting after a 4429 close (the connection kept exceeding the
    /// server's rate limit).
    public var rateLimitPause: Duration = .seconds(5)
    /// Default timeout of ``SwitchboardClient/request(_:_:body:timeout:idempotencyKey:)`` and subscriptions.
    public var requestTimeout: Duration = .seconds(10)
    /// How long one connection attempt (TCP connect and upgrade) may take before it is abandoned.
    public var connectTimeout: Duration = .seconds(10)
    /// Largest WebSocket message accepted from the server.
    public var maxMessageSize: Int = 1 << 20
    public init() {}

    /// The backoff of reconnects, also of resubscriptions the server deferred.
    var reconnectBackoff: Backoff {
        Backoff(min: self.minReconnectDelay, max: self.maxReconnectDelay)
    }
}

/// A message handed to the application: exactly once, in offset order.
public struct ClientMessage: Sendable, Equatable {
    public let stream: String
    public let offset: Int64
    public let epoch: String
    /// The message's tag (protocol §4.1): keep it with the offset to resume after this message
    /// (`SwitchboardClient.subscribe(_:after:)`).
    public let tag: String
    public let body: String

    public init(stream: String, offset: Int64, epoch: String, tag: String = "", body: String) {
        self.stream = stream
        self.offset = offset
        self.epoch = epoch
        self.tag = tag
        self.body = body
    }
}

/// The reply to a request.
public struct ClientResponse: Sendable {
    public let status: Int
    public let body: String
    public let meta: Meta

    public init(status: Int, body: String, meta: Meta) {
        self.status = status
        self.body = body
        self.meta = meta
    }
}

/// Life-cycle notifications of a client.
public enum ClientEvent: Sendable, Equatable {
    /// A HELLO was received.
    case connected(session: String, resumed: Bool)
    /// The socket went away. `code` is the close code when the server sent one.
    case disconnected(code: UInt16?, reason: String)
    /// A stream could not be resumed (SUB410 or an epoch change): refetch its state.
    case notRecovered(stream: String)
    /// The client stopped for good (``SwitchboardClient/close()``, 4403, 4409, or a refused first connect).
    case closed
}

public enum SwitchboardClientError: Error, Equatable {
    case timeout
    case refused(status: Int, body: String)
    case closed
    case invalidArgument(String)
}
