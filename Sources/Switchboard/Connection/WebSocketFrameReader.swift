import NIOCore
import NIOWebSocket

/// Client-to-server WebSocket frames (RFC 6455 §5.2), parsed inside the connection handler
/// instead of by a decoder handler of their own: an idle connection then holds no decoder,
/// no cumulation buffer and no extra pipeline context, only this struct (an optional buffer
/// that exists while a frame is split over reads).
struct WebSocketFrameReader {
    struct Frame {
        var fin: Bool
        var opcode: WebSocketOpcode
        /// The unmasked payload, in a buffer of its own (never a slice of the read buffer,
        /// so the channel can reuse its receive buffer).
        var payload: ByteBuffer

        var isControl: Bool { self.opcode.isControlOpcode }
    }

    enum Failure: Error, Equatable {
        /// Close with 1002: the frame breaks RFC 6455.
        case protocolError(String)
        /// Close with 1009: the frame is larger than the limit.
        case tooBig
    }

    let maxFrameSize: Int
    /// The start of a frame that has not fully arrived; nil between frames.
    private var partial: ByteBuffer?

    init(maxFrameSize: Int) {
        self.maxFrameSize = maxFrameSize
    }

    /// Parses every complete frame in `input` (plus what an earlier read left) and calls
    /// `body` for each; keeps the bytes of a trailing incomplete frame for the next read.
    /// `body` returns false to stop reading (the connection is closing).
    mutating func read(_ input: ByteBuffer, allocator: ByteBufferAllocator, _ body: (Frame) -> Bool) throws(Failure) {
        var buffer: ByteBuffer
        if var partial = self.partial {
            var input = input
            partial.writeBuffer(&input)
            buffer = partial
            self.partial = nil
        } else {
            buffer = input
        }
        while buffer.readableBytes > 0 {
            guard let header = try Self.header(of: buffer, maxFrameSize: self.maxFrameSize) else {
                // Keep the incomplete frame in a buffer of its own, sized for the whole frame
                // when its header is known, so the next read can complete it without regrowing.
                var rest = allocator.buffer(capacity: max(buffer.readableBytes, Self.peekLength(buffer) ?? 0))
                rest.writeBuffer(&buffer)
                self.partial = rest
                return
            }
            guard buffer.readableBytes >= header.length + header.payloadLength else {
                var rest = allocator.buffer(capacity: header.length + header.payloadLength)
                rest.writeBuffer(&buffer)
                self.partial = rest
                return
            }
            buffer.moveReaderIndex(forwardBy: header.length)
            let payload = Self.unmask(buffer, length: header.payloadLength, key: header.maskKey, allocator: allocator)
            buffer.moveReaderIndex(forwardBy: header.payloadLength)
            guard body(Frame(fin: header.fin, opcode: header.opcode, payload: payload)) else { return }
        }
    }

    struct Header {
        var fin: Bool
        var opcode: WebSocketOpcode
        var maskKey: UInt32
        /// Bytes of the header itself (2 to 14).
        var length: Int
        var payloadLength: Int
    }

    /// The header at the reader index, nil when it has not fully arrived.
    static func header(of buffer: ByteBuffer, maxFrameSize: Int) throws(Failure) -> Header? {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
            let second = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self)
        else { return nil }
        let fin = first & 0x80 != 0
        guard first & 0x70 == 0 else { throw .protocolError("reserved bits set without an extension") }
        // Four bits always make an opcode; the reserved ones are refused below.
        let opcode = WebSocketOpcode(encodedWebSocketOpcode: first & 0x0F)!
        switch opcode {
        case .continuation, .text, .binary:
            break
        case .connectionClose, .ping, .pong:
            guard fin else { throw .protocolError("fragmented control frame") }
            guard second & 0x7F <= 125 else { throw .protocolError("control frame longer than 125 bytes") }
        default:
            throw .protocolError("reserved opcode \(first & 0x0F)")
        }
        guard second & 0x80 != 0 else { throw .protocolError("client frames must be masked") }
        var length = 2
        var payloadLength: Int
        switch second & 0x7F {
        case 126:
            guard let n = buffer.getInteger(at: buffer.readerIndex + 2, as: UInt16.self) else { return nil }
            payloadLength = Int(n)
            length += 2
        case 127:
            guard let n = buffer.getInteger(at: buffer.readerIndex + 2, as: UInt64.self) else { return nil }
            guard n >> 63 == 0 else { throw .protocolError("frame length with the most significant bit set") }
            guard n <= UInt64(maxFrameSize) else { throw .tooBig }
            payloadLength = Int(n)
            length += 8
        case let n:
            payloadLength = Int(n)
        }
        guard payloadLength <= maxFrameSize else { throw .tooBig }
        guard let maskKey = buffer.getInteger(at: buffer.readerIndex + length, as: UInt32.self) else { return nil }
        length += 4
        return Header(fin: fin, opcode: opcode, maskKey: maskKey, length: length, payloadLength: payloadLength)
    }

    /// Total length of the frame starting at the reader index, once its length bytes arrived.
    private static func peekLength(_ buffer: ByteBuffer) -> Int? {
        guard let second = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) else { return nil }
        switch second & 0x7F {
        case 126: return buffer.getInteger(at: buffer.readerIndex + 2, as: UInt16.self).map { Int($0) + 8 }
        case 127: return nil
        case let n: return Int(n) + 6
        }
    }

    /// Copies `length` bytes at the reader index into a new buffer, XORed with the mask key.
    static func unmask(_ buffer: ByteBuffer, length: Int, key: UInt32, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: length)
        guard length > 0 else { return out }
        // The key in wire order, so byte i of the payload is XORed with byte i % 4 of the key.
        withUnsafeBytes(of: key.bigEndian) { mask in
            buffer.withUnsafeReadableBytes { source in
                _ = out.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { target in
                    for i in 0..<length {
                        target[i] = source[i] ^ mask[i & 3]
                    }
                    return length
                }
            }
        }
        return out
    }
}
