import NIOCore

extension Frame {
    /// Bytes this frame occupies when encoded.
    public var encodedLength: Int {
        var n = self.method.rawValue.utf8.count + (self.status == nil ? 0 : 3) + 3
        n += self.target.utf8.count
        for (i, item) in self.meta.items.enumerated() {
            n += item.key.utf8.count + 1 + item.value.utf8.count + (i == 0 ? 0 : 1)
        }
        return n + self.body.readableBytes
    }

    /// Append the encoded frame to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        Self.encodeHeader(method: self.method, status: self.status, target: self.target, meta: self.meta, into: &buffer)
        var body = self.body
        buffer.writeBuffer(&body)
    }

    /// The encoded frame in a new buffer.
    public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: self.encodedLength)
        self.encode(into: &buffer)
        return buffer
    }

    /// Writes `HEAD|TARGET|META|` (everything but the body).
    public static func encodeHeader(method: Method, status: Int?, target: String, meta: Meta, into buffer: inout ByteBuffer) {
        buffer.writeString(method.rawValue)
        if let status {
            precondition(status >= 100 && status <= 999, "status must have three digits")
            buffer.writeInteger(UInt8(ascii: "0") + UInt8(status / 100))
            buffer.writeInteger(UInt8(ascii: "0") + UInt8(status / 10 % 10))
            buffer.writeInteger(UInt8(ascii: "0") + UInt8(status % 10))
        }
        buffer.writeInteger(UInt8(ascii: "|"))
        buffer.writeString(target)
        buffer.writeInteger(UInt8(ascii: "|"))
        var first = true
        for item in meta.items {
            if !first { buffer.writeInteger(UInt8(ascii: ";")) }
            first = false
            buffer.writeString(item.key)
            buffer.writeInteger(UInt8(ascii: "="))
            buffer.writeString(item.value)
        }
        buffer.writeInteger(UInt8(ascii: "|"))
    }
}
