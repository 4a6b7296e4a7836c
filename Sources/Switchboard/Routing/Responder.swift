import HTTPTypes
import Hummingbird
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire

/// The router with its context type erased: one call serves an HTTP request or a
/// WebSocket request frame, so a route written once answers on both transports.
struct ErasedResponder: Sendable {
    let respond: @Sendable (Request, SwitchboardContextSource) async -> Response

    init<Context: SwitchboardRequestContextProtocol>(_ responder: some HTTPResponder<Context>) {
        self.respond = { request, source in
            let context = Context(source: source)
            do {
                return try await responder.respond(to: request, context: context)
            } catch let error as any HTTPResponseError {
                return (try? error.response(from: request, context: context)) ?? Response(status: error.status)
            } catch {
                source.logger.error("route failed", metadata: ["error": "\(error)"])
                return Response(status: .internalServerError)
            }
        }
    }
}

/// Collects a response body into one buffer (frames carry the whole body).
final class BodyCollector: @unchecked Sendable {
    // Written only by the single task that writes the body.
    var buffer = ByteBuffer()
    var limit: Int
    var overflow = false

    init(limit: Int) { self.limit = limit }

    struct Writer: ResponseBodyWriter {
        let collector: BodyCollector

        mutating func write(_ buffer: ByteBuffer) async throws {
            var buffer = buffer
            if self.collector.buffer.readableBytes + buffer.readableBytes > self.collector.limit {
                self.collector.overflow = true
                return
            }
            self.collector.buffer.writeBuffer(&buffer)
        }

        consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
    }

    static func collect(_ body: ResponseBody, limit: Int) async throws -> (ByteBuffer, overflow: Bool) {
        let collector = BodyCollector(limit: limit)
        try await body.write(Writer(collector: collector))
        return (collector.buffer, collector.overflow)
    }
}

extension HTTPRequest.Method {
    init?(frameMethod: SwitchboardWire.Method) {
        self.init(frameMethod.rawValue)
    }
}
