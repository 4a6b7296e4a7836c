import NIOCore

/// Receive buffers for gateway connections.
///
/// NIO keeps the buffer a channel first read into and reuses it, growing it whenever the
/// allocator asks for a bigger one: a connection that once read a 700-byte handshake or a
/// large message would hold that buffer for the rest of its life. This allocator gives no
/// size hint, so the kept buffer stays the first, small one; reads that fill it go into
/// larger transient buffers (doubling up to `maximum`) until traffic is small again. Use
/// with `maxMessagesPerRead` 1, so the pool keeps no second buffer either.
struct CompactRecvAllocator: RecvByteBufferAllocator {
    /// The buffer every idle connection keeps.
    static let small = 128
    let maximum: Int
    /// Size of the next transient buffer.
    private var large = 1024
    /// The last read filled the small buffer: the next one goes into a large buffer.
    private var busy = false

    init(maximum: Int) {
        self.maximum = max(maximum, Self.small)
    }

    func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
        allocator.buffer(capacity: self.busy ? self.large : Self.small)
    }

    /// Tells the pool to allocate (instead of reusing the kept buffer) while traffic is large.
    mutating func record(actualReadBytes: Int) -> Bool {
        if actualReadBytes >= self.large {
            self.large = min(self.large * 2, self.maximum)
        } else if actualReadBytes < self.large / 4 {
            self.large = max(self.large / 2, 1024)
        }
        self.busy = actualReadBytes >= Self.small
        return self.busy
    }
}
