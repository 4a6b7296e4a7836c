/// Close codes the proxy sends on its own behalf (docs/proxy.md). Every other code a client
/// or an upstream sees was sent by the other side and passed through unchanged.
public enum ProxyCloseCode {
    /// The proxy is shutting down.
    public static let goingAway: UInt16 = 1001
    /// A frame that breaks RFC 6455 (bad opcode, bad fragmentation…).
    public static let protocolError: UInt16 = 1002
    /// A message larger than `--max-message-size`.
    public static let messageTooBig: UInt16 = 1009
    /// A newer client connection took over this session.
    public static let sessionTakenOver: UInt16 = 4409
    /// The upstream stayed unreachable past `--upstream-timeout`, or refused the reconnect.
    /// Messages the client sent that were still queued were not delivered.
    public static let upstreamUnavailable: UInt16 = 4502
    /// A queue was full: the message that did not fit was not accepted, the connection that
    /// sent it is closed with this code. Everything accepted before it is still delivered.
    public static let queueFull: UInt16 = 4508
}
