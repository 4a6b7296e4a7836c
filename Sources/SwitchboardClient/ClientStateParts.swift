import Foundation
import HummingbirdWSClient
import Logging
import NIOCore
import SwitchboardWire

/// The parts of `ClientState`: the connection's phase, what its writer sends, requests and
/// subscriptions in flight.
/// What the connection's writer task sends.
enum OutboundItem: Sendable {
    case text(String)
    /// Close handshake with 1000.
    case close
    /// Drop the TCP connection without a close handshake (test hook).
    case drop
}

/// The connection state machine.
///
///     idle ──connect()──▶ connecting(id) ──HELLO──▶ connected(id)
///                           ▲      │                    │
///                           │      └────── socket ends ─┤
///                           └── waitingToReconnect ◀────┘  (backoff, unless 4403/4409)
///     any ──close()/4403/4409/first attempt refused──▶ closed
enum ConnectionPhase: Equatable {
    case idle
    /// Opening the socket, upgrading, or waiting for HELLO.
    case connecting(id: UInt64)
    case connected(id: UInt64, since: ContinuousClock.Instant)
    case waitingToReconnect
    case closed

    var connectionID: UInt64? {
        switch self {
        case .connecting(let id), .connected(let id, _): id
        default: nil
        }
    }

    var isConnected: Bool {
        if case .connected = self { return true }
        return false
    }
}

struct PendingRequest {
    let text: String
    let continuation: CheckedContinuation<ClientResponse, any Error>
    var timer: Task<Void, Never>?
}

struct SubscribeWaiter {
    let stream: String
    let continuation: CheckedContinuation<Void, any Error>
    var timer: Task<Void, Never>?
    /// The stream's subscription slot before this call: put back if the call fails.
    let slotBefore: SlotBefore
    /// The stream had a book entry before this call (if not, it is forgotten again on failure).
    let hadEntry: Bool
    /// The position seeded by `subscribe(_:after:)`, undone if the call fails.
    let seed: SeedUndo?
}

/// What a stream's subscription slot was before a `subscribe()` call.
enum SlotBefore: Equatable {
    /// No slot: the call made it (removed again if it fails).
    case absent
    /// A slot made by `messages(_:)`: the call made it explicit (made implicit again if it fails).
    case implicit
    /// Already subscribed: the slot stays whatever the call's outcome.
    case explicit
}

/// The book entry before a seeded `subscribe(_:after:)`, and the offset it seeded.
struct SeedUndo {
    let before: StreamBook.Entry?
    let last: Int64
}

struct SubscriptionSlot {
    let messages: AsyncStream<ClientMessage>
    let continuation: AsyncStream<ClientMessage>.Continuation
    /// Subscribed with `subscribe()` (resubscribed on every reconnect).
    var explicit: Bool

    init(explicit: Bool) {
        (self.messages, self.continuation) = AsyncStream.makeStream(of: ClientMessage.self, bufferingPolicy: .bufferingOldest(100_000))
        self.explicit = explicit
    }
}
