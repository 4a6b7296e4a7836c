import NIOCore
import NIOHTTP1

/// Sits between a backend connection's response decoder and AsyncHTTPClient's handler, and ends
/// the connection on a response status below 100 or above 599. The parser passes `099` on (its
/// first digit may be 0), and AsyncHTTPClient takes any status under 200 for an informational
/// head and traps when a body follows it (`HTTPRequestStateMachine`: "How can we receive a
/// response body, if we haven't received a head"): one bad reply would end the whole node.
final class ResponseStatusGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias InboundOut = HTTPClientResponsePart

    struct BadStatus: Error {
        let code: UInt
    }

    private var refused = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.refused else { return }
        if case .head(let head) = self.unwrapInboundIn(data), !(100...599).contains(head.status.code) {
            self.refused = true
            context.fireErrorCaught(BadStatus(code: head.status.code))
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }

    /// Installs the guard on a connection AsyncHTTPClient just set up (its HTTP/1.1 connection
    /// initializer runs after the decoder and its handler are in place, before any request).
    static func install(on channel: any Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            let sync = channel.pipeline.syncOperations
            let decoder = try sync.handler(type: ByteToMessageHandler<HTTPResponseDecoder>.self)
            try sync.addHandler(ResponseStatusGuard(), position: .after(decoder))
        }
    }
}
