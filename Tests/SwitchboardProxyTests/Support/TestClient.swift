import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

@testable import SwitchboardProxy

/// A WebSocket client of the proxy, built on the proxy's own upstream connector.
/// Read by one task at a time (the iterator is not Sendable).
final class TestClient: @unchecked Sendable {
    enum Event: Equatable, Sendable {
        case text(String)
        case binary([UInt8])
        case close(UInt16?, String)
        /// The connection ended without a close frame.
        case ended
    }

    let response: HTTPResponseHead
    private let channel: NIOAsyncChannel<WebSocketFrame, WebSocketFrame>
    private let outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>
    /// Messages and closes, read in the background: like a browser, the client answers pings
    /// at once whether or not the test is reading.
    private let events: AsyncStream<Event>
    private let iterator: NIOLockedValueBox<AsyncStream<Event>.AsyncIterator>
    /// Payloads of the pongs received, in order.
    let pongs = Shared<[String]>([])
    /// Pings the client answered.
    let pingsAnswered = Shared(0)

    var session: String? { self.response.headers[ProxyCore.sessionHeader].first }
    var resumed: Bool { self.response.headers[ProxyCore.resumedHeader].first == "true" }

    enum Failure: Error {
        case refused(HTTPResponseStatus)
        case failed(any Error)
    }

    static func connect(port: Int, headers: HTTPHeaders = [:], query: String = "") async throws -> TestClient {
        let connector = try UpstreamConnector(
            url: try UpstreamURL("ws://127.0.0.1:\(port)/chat\(query)"), maxMessageSize: 1 << 21, connectTimeout: 5,
            group: MultiThreadedEventLoopGroup.singleton
        )
        switch await connector.connect(headers: headers) {
        case .connected(let connection): return TestClient(connection)
        case .refused(let status): throw Failure.refused(status)
        case .failed(let error): throw Failure.failed(error)
        }
    }

    private init(_ connection: UpstreamConnector.WebSocketConnection) {
        self.response = connection.response
        self.channel = connection.channel
        // The test owns the channel for its whole life and closes it with `drop` or a close frame.
        let inbound = connection.channel.inbound
        let outbound = connection.channel.outbound
        self.outbound = outbound
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        self.events = events
        self.iterator = NIOLockedValueBox(events.makeAsyncIterator())
        let pongs = self.pongs
        let pingsAnswered = self.pingsAnswered
        Task {
            do {
                for try await frame in inbound {
                    switch frame.opcode {
                    case .text:
                        continuation.yield(.text(String(buffer: frame.unmaskedData)))
                    case .binary:
                        continuation.yield(.binary(Array(frame.unmaskedData.readableBytesView)))
                    case .ping:
                        try? await outbound.write(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData))
                        pingsAnswered.update { $0 += 1 }
                    case .pong:
                        pongs.update { $0.append(String(buffer: frame.unmaskedData)) }
                    case .connectionClose:
                        var data = frame.unmaskedData
                        let code = data.readInteger(as: UInt16.self)
                        let reason = data.readString(length: data.readableBytes) ?? ""
                        try? await outbound.write(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: frame.unmaskedData))
                        continuation.yield(.close(code, reason))
                    default:
                        continue
                    }
                }
            } catch {}
            continuation.yield(.ended)
            continuation.finish()
        }
    }

    func send(_ text: String) async throws {
        try await self.outbound.write(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: text)))
    }

    func sendFrame(opcode: WebSocketOpcode, data: ByteBuffer, fin: Bool = true) async throws {
        try await self.outbound.write(WebSocketFrame(fin: fin, opcode: opcode, maskKey: .random(), data: data))
    }

    func close(code: UInt16, reason: String = "") async throws {
        var payload = ByteBuffer()
        payload.writeInteger(code)
        payload.writeString(reason)
        try await self.sendFrame(opcode: .connectionClose, data: payload)
    }

    /// Drops the TCP connection without a close frame (a browser whose network went away).
    func drop() async {
        try? await self.channel.channel.close()
    }

    /// The next message or close (`.ended` once the connection is gone).
    func next() async throws -> Event {
        var iterator = self.iterator.withLockedValue { $0 }
        let event = await iterator.next() ?? .ended
        self.iterator.withLockedValue { $0 = iterator }
        return event
    }

    /// The next `count` text messages (fails on a close or the end).
    func texts(_ count: Int) async throws -> [String] {
        var texts: [String] = []
        while texts.count < count {
            let event = try await self.next()
            guard case .text(let text) = event else { throw UnexpectedEvent(event: event, after: texts) }
            texts.append(text)
        }
        return texts
    }

    struct UnexpectedEvent: Error {
        let event: Event
        let after: [String]
    }
}
