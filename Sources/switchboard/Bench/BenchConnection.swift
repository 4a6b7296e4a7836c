import NIOCore
import NIOPosix

/// A lean WebSocket client connection for the load tool: one channel handler that
/// writes the upgrade, then parses server frames and masks its own. No task per
/// connection, so one process can hold thousands.
final class BenchConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State { case upgrading, open, closed }

    let path: String
    let host: String
    var state: State = .upgrading
    private var buffer = ByteBuffer()
    private var context: ChannelHandlerContext?
    /// Called on the event loop for every text message, after the upgrade.
    var onText: ((ByteBuffer) -> Void)?
    var onOpen: (() -> Void)?
    /// Called once when an open connection ends, with the server's close code (nil: no close frame).
    var onClose: ((UInt16?) -> Void)?
    private var closeCode: UInt16?
    /// The channel's event loop, once connected.
    private(set) var loop: (any EventLoop)?
    /// Completed when the upgrade is answered: 101, or a refusal with its status line.
    private let upgraded: EventLoopPromise<Void>

    init(host: String, path: String, upgraded: EventLoopPromise<Void>) {
        self.host = host
        self.path = path
        self.upgraded = upgraded
    }

    static func connect(
        host: String, port: Int, path: String, source: String?, group: any EventLoopGroup,
        configure: @escaping @Sendable (BenchConnection) -> Void
    ) -> EventLoopFuture<BenchConnection> {
        let loop = group.next()
        let upgraded = loop.makePromise(of: Void.self)
        let connection = BenchConnection(host: host, path: path, upgraded: upgraded)
        configure(connection)
        var bootstrap = ClientBootstrap(group: loop)
            .channelOption(ChannelOptions.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(connection) }
            }
        if let source {
            bootstrap = bootstrap.bind(to: try! SocketAddress(ipAddress: source, port: 0))
        }
        let connected = bootstrap.connect(host: host, port: port)
        connected.whenFailure { upgraded.fail($0) }
        return connected.flatMap { _ in upgraded.futureResult }.map { connection }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        self.loop = context.eventLoop
        // The headers a browser sends (about 600 bytes), so the server's cost of reading a real
        // handshake is part of what is measured.
        let request =
            "GET \(self.path) HTTP/1.1\r\nHost: \(self.host)\r\nConnection: Upgrade\r\nPragma: no-cache\r\n"
            + "Cache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            + "Chrome/131.0.0.0 Safari/537.36\r\nUpgrade: websocket\r\nOrigin: http://\(self.host)\r\nSec-WebSocket-Version: 13\r\n"
            + "Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            + "Sec-WebSocket-Protocol: switchboard.v1\r\n\r\n"
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: request)), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let wasOpen = self.state == .open
        if self.state == .upgrading { self.upgraded.fail(BenchError("closed during the handshake")) }
        self.state = .closed
        if wasOpen { self.onClose?(self.closeCode) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = self.unwrapInboundIn(data)
        self.buffer.writeBuffer(&chunk)
        if self.state == .upgrading {
            guard let end = self.buffer.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8)) else { return }
            let head = self.buffer.readString(length: end.upperBound - self.buffer.readerIndex) ?? ""
            guard head.hasPrefix("HTTP/1.1 101") else {
                self.state = .closed
                self.upgraded.fail(BenchError(String(head.prefix { $0 != "\r" })))
                context.close(promise: nil)
                return
            }
            self.state = .open
            self.upgraded.succeed()
            self.onOpen?()
        }
        self.parseFrames(context: context)
        // Keep the idle connection small: drop the buffer's storage once drained.
        if self.buffer.readableBytes == 0 { self.buffer = ByteBuffer() } else { self.buffer.discardReadBytes() }
    }

    private func parseFrames(context: ChannelHandlerContext) {
        while self.buffer.readableBytes >= 2 {
            let start = self.buffer.readerIndex
            let b0 = self.buffer.getInteger(at: start, as: UInt8.self)!
            let b1 = self.buffer.getInteger(at: start + 1, as: UInt8.self)!
            var length = Int(b1 & 0x7F)
            var header = 2
            if length == 126 {
                guard self.buffer.readableBytes >= 4 else { return }
                length = Int(self.buffer.getInteger(at: start + 2, as: UInt16.self)!)
                header = 4
            } else if length == 127 {
                guard self.buffer.readableBytes >= 10 else { return }
                length = Int(self.buffer.getInteger(at: start + 2, as: UInt64.self)!)
                header = 10
            }
            guard self.buffer.readableBytes >= header + length else { return }
            self.buffer.moveReaderIndex(forwardBy: header)
            let payload = self.buffer.readSlice(length: length)!
            switch b0 & 0x0F {
            case 0x1: self.onText?(payload)
            case 0x9: self.sendFrame(opcode: 0xA, payload: payload)
            case 0x8:
                self.closeCode = payload.getInteger(at: payload.readerIndex, as: UInt16.self)
                context.close(promise: nil)
            default: break
            }
        }
    }

    /// Send a masked frame (clients must mask, RFC 6455 §5.3). Flushes.
    func sendText(_ text: ByteBuffer) { self.sendFrame(opcode: 0x1, payload: text) }

    func sendFrame(opcode: UInt8, payload: ByteBuffer, flush: Bool = true) {
        guard let context = self.context, self.state == .open else { return }
        var frame = context.channel.allocator.buffer(capacity: payload.readableBytes + 14)
        frame.writeInteger(0x80 | opcode)
        let n = payload.readableBytes
        if n < 126 {
            frame.writeInteger(UInt8(0x80 | n))
        } else if n <= 0xFFFF {
            frame.writeInteger(UInt8(0x80 | 126))
            frame.writeInteger(UInt16(n))
        } else {
            frame.writeInteger(UInt8(0x80 | 127))
            frame.writeInteger(UInt64(n))
        }
        let key: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]
        frame.writeBytes(key)
        var i = 0
        for byte in payload.readableBytesView {
            frame.writeInteger(byte ^ key[i & 3])
            i += 1
        }
        if flush {
            context.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
        } else {
            context.write(self.wrapOutboundOut(frame), promise: nil)
        }
    }

    func close() {
        self.context?.close(promise: nil)
    }
}
