import Foundation
import NIOCore

/// The loop's timers call these: token expiry and the ping that finds a dead peer.
extension ConnectionHandler {
    /// Called by the loop's expiry timer: closes the connection if its token expired by `now`;
    /// otherwise returns when it will (nil: no token, or not open).
    func closeIfExpired(at now: Date) -> Date? {
        guard case .open = self.state, let identity = self.identity else { return nil }
        guard identity.isExpired(at: now) else { return identity.expiresAt }
        self.closeExpired()
        return nil
    }

    func closeExpired() {
        self.close(code: .unauthorized, reason: "token expired; reconnect with a fresh token")
    }

    /// Called by the loop's ping timer.
    func heartbeat(now: NIODeadline) {
        guard case .open = self.state, let context = self.context else { return }
        if let identity = self.identity, identity.isExpired(at: Date()) {
            return self.closeExpired()
        }
        if self.pingOutstanding {
            // No pong since the last ping: the peer is gone.
            self.logger.debug("closing dead peer", metadata: ["connection": "\(self.handle.id)"])
            context.close(promise: nil)
            return
        }
        self.pingOutstanding = true
        self.writeRaw(WebSocketFraming.control(opcode: .ping, payload: ByteBuffer(), allocator: context.channel.allocator))
    }
}
