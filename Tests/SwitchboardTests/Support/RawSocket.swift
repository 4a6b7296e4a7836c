import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A deliberately low-level client for tests: a TCP socket on which the test writes the
/// HTTP upgrade and WebSocket frames byte by byte, so it can also send what a good
/// client never would (unmasked, binary, invalid UTF-8, oversized, garbage).
final class RawSocket: @unchecked Sendable {
    enum Event: Equatable {
        case text(String)
        case binary([UInt8])
        case close(code: UInt16?, reason: String)
        case ping, pong
    }

    struct HTTPReply {
        var status: Int
        var headers: [String: String]
        var body: String
    }

    private let channel: any Channel
    private let inbox: Inbox
    private var buffer = ByteBuffer()

    private init(channel: any Channel, inbox: Inbox) {
        self.channel = channel
        self.inbox = inbox
    }

    /// Inbound bytes as an async stream.
    final class Inbox: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let stream: AsyncStream<ByteBuffer>
        let continuation: AsyncStream<ByteBuffer>.Continuation
        let timedOut = NIOLockedValueBox(false)
        init() { (self.stream, self.continuation) = AsyncStream.makeStream() }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { self.continuation.yield(self.unwrapInboundIn(data)) }
        func channelInactive(context: ChannelHandlerContext) { self.continuation.finish() }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }

    static func connect(port: Int, receiveBuffer: Int? = nil, autoRead: Bool = true) async throws -> RawSocket {
        let inbox = Inbox()
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(ChannelOptions.autoRead, value: autoRead)
        if let receiveBuffer {
            bootstrap = bootstrap.channelOption(ChannelOptions.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBuffer))
        }
        let channel =
            try await bootstrap
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(inbox) } }
            .connect(host: "127.0.0.1", port: port).get()
        let socket = RawSocket(channel: channel, inbox: inbox)
        socket.iterator = inbox.stream.makeAsyncIterator()
        return socket
    }

    private var iterator: AsyncStream<ByteBuffer>.AsyncIterator?

    private func more(timeout: Duration = .seconds(10)) async throws -> Bool {
        // On timeout the stream is finished, so the pending `next()` returns nil.
        let inbox = self.inbox
        let timer = Task {
            try await Task.sleep(for: timeout)
            inbox.timedOut.withLockedValue { $0 = true }
            inbox.continuation.finish()
        }
        defer { timer.cancel() }
        let chunk = await self.iterator!.next()
        if self.inbox.timedOut.withLockedValue({ $0 }) { throw TestFailure("timed out waiting for bytes") }
        guard var chunk else { return false }
        self.buffer.writeBuffer(&chunk)
        return true
    }

    /// Waits (at most `timeout`) until the peer closes the connection; returns what it sent.
    func readUntilClosed(timeout: Duration = .seconds(10)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while try await self.more(timeout: deadline - ContinuousClock.now) {}
        return self.buffer.readString(length: self.buffer.readableBytes) ?? ""
    }

    func write(_ bytes: [UInt8]) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    func close() async { try? await self.channel.close() }

    /// Stop or restart reading from the socket (to play a slow consumer).
    func setReading(_ on: Bool) async throws {
        try await self.channel.setOption(ChannelOptions.autoRead, value: on).get()
        if on { self.channel.read() }
    }

    // MARK: HTTP

    /// Send an HTTP request and read the response head and body (Content-Length bodies).
    func http(_ method: String, _ path: String, headers: [String: String] = [:], body: String = "") async throws -> HTTPReply {
        var request = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for (k, v) in headers { request += "\(k): \(v)\r\n" }
        if !body.isEmpty || method == "POST" { request += "Content-Length: \(body.utf8.count)\r\n" }
        request += "\r\n" + body
        try await self.write(Array(request.utf8))
        return try await self.readHTTPReply()
    }

    func readHTTPReply() async throws -> HTTPReply {
        while true {
            let view = String(buffer: self.buffer)
            if let end = view.range(of: "\r\n\r\n") {
                let head = String(view[..<end.lowerBound])
                var lines = head.components(separatedBy: "\r\n")
                let statusLine = lines.removeFirst().split(separator: " ")
                var headers: [String: String] = [:]
                for line in lines {
                    if let colon = line.firstIndex(of: ":") {
                        headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                    }
                }
                let headLength = head.utf8.count + 4
                let length = Int(headers["content-length"] ?? "0") ?? 0
                while self.buffer.readableBytes < headLength + length {
                    guard try await self.more() else { break }
                }
                self.buffer.moveReaderIndex(forwardBy: headLength)
                let body = self.buffer.readString(length: min(length, self.buffer.readableBytes)) ?? ""
                return HTTPReply(status: Int(statusLine[1]) ?? 0, headers: headers, body: body)
            }
            guard try await self.more() else { throw TestFailure("connection closed before an HTTP reply") }
        }
    }

    // MARK: WebSocket

    /// Upgrade; returns the HTTP reply (101 when accepted).
    func upgrade(path: String = "/ws", token: String? = nil, headers: [String: String] = [:]) async throws -> HTTPReply {
        var all = headers
        all["Upgrade"] = "websocket"
        all["Connection"] = "Upgrade"
        all["Sec-WebSocket-Version"] = "13"
        all["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
        if let token { all["Authorization"] = "Bearer \(token)" }
        return try await self.http("GET", path, headers: all)
    }

    /// Send one frame; masked unless `masked` is false.
    func sendFrame(opcode: UInt8, payload: [UInt8], fin: Bool = true, masked: Bool = true) async throws {
        var frame: [UInt8] = [(fin ? 0x80 : 0) | opcode]
        let maskBit: UInt8 = masked ? 0x80 : 0
        if payload.count < 126 {
            frame.append(maskBit | UInt8(payload.count))
        } else if payload.count <= 0xFFFF {
            frame.append(maskBit | 126)
            frame += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            frame.append(maskBit | 127)
            frame += (0..<8).reversed().map { UInt8((payload.count >> ($0 * 8)) & 0xFF) }
        }
        if masked {
            let key: [UInt8] = [0x12, 0x34, 0x56, 0x78]
            frame += key
            frame += payload.enumerated().map { $0.element ^ key[$0.offset % 4] }
        } else {
            frame += payload
        }
        try await self.write(frame)
    }

    func send(_ text: String) async throws {
        try await self.sendFrame(opcode: 0x1, payload: Array(text.utf8))
    }

    /// Next WebSocket event (answers nothing by itself; pings are returned).
    func next(timeout: Duration = .seconds(10)) async throws -> Event? {
        while true {
            if let event = self.parseFrame() { return event }
            guard try await self.more(timeout: timeout) else { return nil }
        }
    }

    /// Next text frame, skipping pings/pongs.
    /// The next text message; pings on the way are answered, as every WebSocket library does
    /// (use `next()` to play a peer that does not).
    func nextText(timeout: Duration = .seconds(10)) async throws -> String {
        while let event = try await self.next(timeout: timeout) {
            switch event {
            case .text(let s): return s
            case .ping: try? await self.sendFrame(opcode: 0xA, payload: [])
            case .pong: continue
            default: throw TestFailure("expected a text frame, got \(event)")
            }
        }
        throw TestFailure("connection closed while waiting for a text frame")
    }

    /// Read text frames until one satisfies `match`.
    func nextText(where match: (String) -> Bool) async throws -> String {
        while true {
            let text = try await self.nextText()
            if match(text) { return text }
        }
    }

    /// Read until the close frame (skipping text), returning its code.
    func closeCode() async throws -> UInt16? {
        while let event = try await self.next() {
            if case .close(let code, _) = event { return code }
        }
        return nil
    }

    private func parseFrame() -> Event? {
        let b = self.buffer
        guard b.readableBytes >= 2 else { return nil }
        let b0 = b.getInteger(at: b.readerIndex, as: UInt8.self)!
        let b1 = b.getInteger(at: b.readerIndex + 1, as: UInt8.self)!
        var length = Int(b1 & 0x7F)
        var offset = 2
        if length == 126 {
            guard b.readableBytes >= 4 else { return nil }
            length = Int(b.getInteger(at: b.readerIndex + 2, as: UInt16.self)!)
            offset = 4
        } else if length == 127 {
            guard b.readableBytes >= 10 else { return nil }
            length = Int(b.getInteger(at: b.readerIndex + 2, as: UInt64.self)!)
            offset = 10
        }
        guard b.readableBytes >= offset + length else { return nil }
        self.buffer.moveReaderIndex(forwardBy: offset)
        let payload = self.buffer.readBytes(length: length)!
        switch b0 & 0x0F {
        case 0x1: return .text(String(decoding: payload, as: UTF8.self))
        case 0x2: return .binary(payload)
        case 0x8:
            let code = payload.count >= 2 ? UInt16(payload[0]) << 8 | UInt16(payload[1]) : nil
            return .close(code: code, reason: String(decoding: payload.dropFirst(2), as: UTF8.self))
        case 0x9: return .ping
        case 0xA: return .pong
        default: return .text("<opcode \(b0 & 0x0F)>")
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Split a text frame into its four fields (tests only; the codec is tested separately).
struct Parsed {
    let head: String
    let target: String
    let meta: [String: String]
    let body: String

    init(_ text: String) {
        let parts = text.split(separator: "|", maxSplits: 3, omittingEmptySubsequences: false).map(String.init)
        self.head = parts[0]
        self.target = parts.count > 1 ? parts[1] : ""
        var meta: [String: String] = [:]
        if parts.count > 2 {
            for pair in parts[2].split(separator: ";") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                if kv.count == 2 { meta[String(kv[0])] = String(kv[1]) }
            }
        }
        self.meta = meta
        self.body = parts.count > 3 ? parts[3] : ""
    }
}
