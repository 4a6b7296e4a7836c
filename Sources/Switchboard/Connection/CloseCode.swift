/// WebSocket close codes the gateway sends (docs/protocol.md lists each).
public enum CloseCode: UInt16, Sendable {
    case normal = 1000
    /// The node is shutting down.
    case goingAway = 1001
    /// WebSocket protocol violation (unmasked frame, bad fragmentation, reserved bits…).
    case protocolError = 1002
    /// Binary frames are not part of the protocol.
    case unsupportedData = 1003
    /// The peer went away without a close frame (never sent; recorded in metrics).
    case abnormal = 1006
    /// A text frame that is not valid UTF-8.
    case invalidPayload = 1007
    /// A frame or message over the size limit.
    case messageTooBig = 1009
    /// A policy limit: the user already holds the most connections allowed.
    case policyViolation = 1008
    case internalError = 1011
    /// The outbound queue passed its limit: resume to get what was missed.
    case slowConsumer = 4001
    /// The token expired and was not refreshed, or a refresh was refused.
    case unauthorized = 4401
    /// Disconnected on purpose by the server (server API).
    case disconnected = 4403
    /// A newer connection took over this session.
    case sessionTakenOver = 4409
    /// Kept sending over the rate limit after 429 replies.
    case rateLimited = 4429
    /// The node is draining: reconnect (to another node) after a short random delay.
    case reconnectElsewhere = 4503
}
