import NIOCore
import NIOWebSocket
import SwitchboardWire

/// Server-side WebSocket framing (RFC 6455 §5.2): unmasked frames encoded straight
/// into one buffer, so a push is framed once and the same bytes go to every socket.
enum WebSocketFraming {
    /// Largest header a server frame needs (no mask).
    static let maxHeaderLength = 10

    /// A text WebSocket frame holding the encoded Switchboard `frame`.
    static func text(_ frame: Frame, allocator: ByteBufferAllocator) -> ByteBuffer {
        self.text(
            method: frame.method, status: frame.status, target: frame.target, meta: frame.meta,
            body: frame.body, allocator: allocator
        )
    }

    /// A text WebSocket frame; the Switchboard header and body are written once,
    /// then the WebSocket header is put in the space reserved in front of them.
    static func text(
        method: Method, status: Int?, target: String, meta: Meta, body: ByteBuffer, allocator: ByteBufferAllocator
    ) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: maxHeaderLength + 64 + target.utf8.count + body.readableBytes)
        buffer.moveWriterIndex(forwardBy: maxHeaderLength)
        buffer.moveReaderIndex(forwardBy: maxHeaderLength)
        Frame.encodeHeader(method: method, status: status, target: target, meta: meta, into: &buffer)
        var body = body
        buffer.writeBuffer(&body)
        self.prependHeader(opcode: .text, to: &buffer)
        return buffer
    }

    /// A message of a stream as the PUSH frame every subscriber gets (`PUSH200|<stream>|id=…;e=…;t=…|body`).
    static func push(_ message: StreamMessage, allocator: ByteBufferAllocator) -> ByteBuffer {
        var meta = Meta()
        meta[MetaKey.offset] = String(message.offset)
        meta[MetaKey.epoch] = message.epoch
        if !message.tag.isEmpty { meta[MetaKey.tag] = message.tag }
        return self.text(
            method: .push, status: 200, target: message.stream, meta: meta, body: message.body, allocator: allocator
        )
    }

    /// A whole message as one frame with `opcode` (text or binary), e.g. for the echo endpoint.
    static func message(opcode: WebSocketOpcode, payload: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: maxHeaderLength + payload.readableBytes)
        buffer.moveWriterIndex(forwardBy: maxHeaderLength)
        buffer.moveReaderIndex(forwardBy: maxHeaderLength)
        var payload = payload
        buffer.writeBuffer(&payload)
        self.prependHeader(opcode: opcode, to: &buffer)
        return buffer
    }

    /// A control frame (close, ping, pong); `payload` must be at most 125 bytes.
    static func control(opcode: WebSocketOpcode, payload: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 2 + payload.readableBytes)
        buffer.writeInteger(0x80 | UInt8(webSocketOpcode: opcode))
        buffer.writeInteger(UInt8(payload.readableBytes))
        var payload = payload
        buffer.writeBuffer(&payload)
        return buffer
    }

    /// A close frame with `code` and a reason cut to fit 123 bytes of UTF-8.
    static func close(code: UInt16, reason: String, allocator: ByteBufferAllocator) -> ByteBuffer {
        var payload = allocator.buffer(capacity: 125)
        payload.writeInteger(code)
        var reasonBytes = Array(reason.utf8.prefix(123))
        // Do not cut a multi-byte character in half.
        while !reasonBytes.isEmpty, !UTF8Validation.isValid(ByteBuffer(bytes: reasonBytes)) {
            reasonBytes.removeLast()
        }
        payload.writeBytes(reasonBytes)
        return self.control(opcode: .connectionClose, payload: payload, allocator: allocator)
    }

    /// Write the FIN + opcode + length header right before the readable bytes.
    private static func prependHeader(opcode: WebSocketOpcode, to buffer: inout ByteBuffer) {
        let length = buffer.readableBytes
        let headerLength = length < 126 ? 2 : (length <= 0xFFFF ? 4 : 10)
        let start = buffer.readerIndex - headerLength
        buffer.setInteger(0x80 | UInt8(webSocketOpcode: opcode), at: start)
        switch headerLength {
        case 2:
            buffer.setInteger(UInt8(length), at: start + 1)
        case 4:
            buffer.setInteger(UInt8(126), at: start + 1)
            buffer.setInteger(UInt16(length), at: start + 2)
        default:
            buffer.setInteger(UInt8(127), at: start + 1)
            buffer.setInteger(UInt64(length), at: start + 2)
        }
        buffer.moveReaderIndex(to: start)
    }
}
