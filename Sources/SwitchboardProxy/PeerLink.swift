import NIOConcurrencyHelpers
import NIOCore
import NIOWebSocket

/// A whole WebSocket message as the proxy keeps and forwards it: text or binary, unmasked,
/// all fragments joined.
struct ProxyMessage: Sendable {
    let opcode: WebSocketOpcode
    let data: ByteBuffer
}

/// One open WebSocket connection of the proxy, to a client or to an upstream: the writes the
/// proxy makes on it. Reads happen in the task that owns the connection (`LinkReader`).
final class PeerLink: Sendable {
    let channel: any Channel
    private let outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>
    /// Frames a client sends are masked (RFC 6455 §5.3): true for upstream connections.
    private let masks: Bool
    private let closeSent = NIOLockedValueBox(false)
    /// The reader is handing a message to the other direction (which may make it wait).
    private let waiting = NIOLockedValueBox(false)
    private let closeTimeout: TimeAmount

    init(channel: any Channel, outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>, masks: Bool, closeTimeout: Double) {
        self.channel = channel
        self.outbound = outbound
        self.masks = masks
        self.closeTimeout = .nanoseconds(Int64(closeTimeout * 1e9))
    }

    var id: ObjectIdentifier { ObjectIdentifier(self) }

    /// Whether this side already sent its close frame (so a peer's close is the answer).
    var isClosing: Bool { self.closeSent.withLockedValue { $0 } }

    var isReaderWaiting: Bool { self.waiting.withLockedValue { $0 } }

    func readerWaiting(_ waiting: Bool) {
        self.waiting.withLockedValue { $0 = waiting }
    }

    func frame(_ opcode: WebSocketOpcode, _ data: ByteBuffer) -> WebSocketFrame {
        WebSocketFrame(fin: true, opcode: opcode, maskKey: self.masks ? .random() : nil, data: data)
    }

    /// Writes `frames` in order, in one flush.
    func write(_ frames: [WebSocketFrame]) async throws {
        try await self.outbound.write(contentsOf: frames)
    }

    /// A ping or pong; a failed write means the connection is going, which its reader sees.
    func control(_ opcode: WebSocketOpcode, _ payload: ByteBuffer) async {
        try? await self.outbound.write(self.frame(opcode, payload))
    }

    /// Sends a close frame (once) and closes the TCP connection if the peer does not answer
    /// within the close timeout. `code` nil sends a close frame without a status (1005).
    func close(code: UInt16?, reason: String) async {
        guard
            self.closeSent.withLockedValue({ sent in
                defer { sent = true }
                return !sent
            })
        else { return }
        var payload = self.channel.allocator.buffer(capacity: 125)
        if let code {
            payload.writeInteger(code)
            payload.writeString(Self.truncated(reason, to: 123))
        }
        try? await self.outbound.write(self.frame(.connectionClose, payload))
        let channel = self.channel
        channel.eventLoop.scheduleTask(in: self.closeTimeout) { channel.close(promise: nil) }
    }

    /// Fails the connection (RFC 6455 §7.1.7): the close frame, then the TCP connection at
    /// once, without waiting for an answer that a broken peer may never send.
    func fail(code: UInt16, reason: String) async {
        self.closeSent.withLockedValue { $0 = true }
        var payload = self.channel.allocator.buffer(capacity: 125)
        payload.writeInteger(code)
        payload.writeString(Self.truncated(reason, to: 123))
        try? await self.channel.writeAndFlush(self.frame(.connectionClose, payload)).get()
        try? await self.channel.close()
    }

    /// Drops the connection without a close handshake (a dead peer).
    func abort() {
        self.channel.close(promise: nil)
    }

    /// `text` cut to at most `limit` bytes of UTF-8 without splitting a character.
    static func truncated(_ text: String, to limit: Int) -> String {
        guard text.utf8.count > limit else { return text }
        var result = ""
        for character in text {
            guard result.utf8.count + character.utf8.count <= limit else { break }
            result.append(character)
        }
        return result
    }
}

/// The status and reason of a received close frame; code nil when it carried none.
struct CloseFrame: Sendable {
    var code: UInt16?
    var reason: String

    init(code: UInt16?, reason: String) {
        self.code = code
        self.reason = reason
    }

    /// nil when the frame breaks RFC 6455: a one-byte payload, a code no endpoint may send
    /// (1004-1006, 1015, unassigned ones), or a reason that is not UTF-8.
    init?(validating frame: WebSocketFrame) {
        var data = frame.unmaskedData
        guard data.readableBytes != 1 else { return nil }
        let code = data.readInteger(as: UInt16.self)
        if let code, !Self.maySend(code) { return nil }
        guard let reason = String(validating: data.readableBytesView, as: UTF8.self) else { return nil }
        self.code = code
        self.reason = reason
    }

    /// Codes an endpoint may put in a close frame: the defined ones and 3000-4999.
    static func maySend(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: true
        default: false
        }
    }
}
