import NIOCore
import NIOWebSocket
import Testing

@testable import Switchboard

@Suite("WebSocket frame reader")
struct WebSocketFrameReaderTests {
    /// A masked client frame.
    static func frame(opcode: UInt8, fin: Bool = true, payload: [UInt8], mask: UInt32 = 0x1234_5678, rsv: UInt8 = 0) -> [UInt8] {
        var out: [UInt8] = [(fin ? 0x80 : 0) | rsv | opcode]
        if payload.count < 126 {
            out.append(0x80 | UInt8(payload.count))
        } else if payload.count <= 0xFFFF {
            out.append(0x80 | 126)
            out += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            out.append(0x80 | 127)
            out += (0..<8).reversed().map { UInt8((UInt64(payload.count) >> (UInt64($0) * 8)) & 0xFF) }
        }
        let key = [UInt8(mask >> 24), UInt8(mask >> 16 & 0xFF), UInt8(mask >> 8 & 0xFF), UInt8(mask & 0xFF)]
        out += key
        out += payload.enumerated().map { $0.element ^ key[$0.offset & 3] }
        return out
    }

    static func read(_ chunks: [[UInt8]], max: Int = 1 << 20) throws(WebSocketFrameReader.Failure) -> [(UInt8, Bool, [UInt8])] {
        var reader = WebSocketFrameReader(maxFrameSize: max)
        var frames: [(UInt8, Bool, [UInt8])] = []
        for chunk in chunks {
            try reader.read(ByteBuffer(bytes: chunk), allocator: ByteBufferAllocator()) { frame in
                frames.append((UInt8(webSocketOpcode: frame.opcode), frame.fin, Array(frame.payload.readableBytesView)))
                return true
            }
        }
        return frames
    }

    @Test func framesSplitAtEveryByteComeOutWhole() throws {
        let text = Array("PUSH|/rooms/lobby||hello".utf8)
        let medium = [UInt8](repeating: 0x61, count: 300)  // 16-bit length
        let large = [UInt8](repeating: 0x62, count: 70_000)  // 64-bit length
        let wire =
            Self.frame(opcode: 0x1, payload: text) + Self.frame(opcode: 0x9, payload: [1, 2, 3])
            + Self.frame(opcode: 0x1, fin: false, payload: medium) + Self.frame(opcode: 0x0, payload: large)
            + Self.frame(opcode: 0x8, payload: [])
        let whole = try Self.read([wire])
        #expect(whole.map(\.0) == [0x1, 0x9, 0x1, 0x0, 0x8])
        #expect(whole.map(\.1) == [true, true, false, true, true])
        #expect(whole[0].2 == text)
        #expect(whole[2].2 == medium)
        #expect(whole[3].2 == large)
        // Every split of the first frames, and a split inside the 64-bit length.
        for split in Array(1..<(text.count + 40)) + [wire.count - 70_010, wire.count - 3] {
            let parts = try Self.read([Array(wire[..<split]), Array(wire[split...])])
            #expect(parts.map(\.2) == whole.map(\.2), "split at \(split)")
        }
        // One byte at a time.
        let short = Self.frame(opcode: 0x1, payload: text) + Self.frame(opcode: 0xA, payload: [9])
        #expect(try Self.read(short.map { [$0] }).map(\.2) == [text, [9]])
    }

    @Test func violationsAreReported() {
        let cases: [([UInt8], WebSocketFrameReader.Failure)] = [
            ([0x81, 0x02, 0x68, 0x69], .protocolError("client frames must be masked")),
            (Self.frame(opcode: 0x1, payload: [1], rsv: 0x40), .protocolError("reserved bits set without an extension")),
            (Self.frame(opcode: 0x3, payload: []), .protocolError("reserved opcode 3")),
            (Self.frame(opcode: 0x9, fin: false, payload: []), .protocolError("fragmented control frame")),
            (Self.frame(opcode: 0x9, payload: [UInt8](repeating: 0, count: 126)), .protocolError("control frame longer than 125 bytes")),
            ([0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1], .protocolError("frame length with the most significant bit set")),
        ]
        for (wire, failure) in cases {
            #expect(throws: failure) { _ = try Self.read([wire]) }
        }
        // Over the limit: refused from the header alone, before the payload arrives.
        let big = Self.frame(opcode: 0x1, payload: [UInt8](repeating: 0, count: 2000))
        #expect(throws: WebSocketFrameReader.Failure.tooBig) { _ = try Self.read([Array(big.prefix(4))], max: 1000) }
    }

    @Test func unmasksWithTheKeyInWireOrder() throws {
        let payload = Array("abcdefgh".utf8)
        let wire = Self.frame(opcode: 0x1, payload: payload, mask: 0xA1B2_C3D4)
        #expect(wire[2...5] == [0xA1, 0xB2, 0xC3, 0xD4])
        #expect(try Self.read([wire]).first?.2 == payload)
    }
}
