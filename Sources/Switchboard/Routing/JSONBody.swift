import Foundation
import NIOCore

/// Small JSON bodies the gateway writes itself (errors, greetings).
enum JSONBody {
    struct ErrorBody: Encodable {
        let error: String
        let reason: String
    }

    struct Hello: Encodable {
        let session: String
        let user: String?
        let node: String
        let resumed: Bool
        /// Acked offset per stream of a resumed session.
        let streams: [String: Int64]
    }

    static func error(_ code: String, reason: String) -> ByteBuffer {
        self.encode(ErrorBody(error: code, reason: reason))
    }

    static func hello(session: String, user: String?, node: String, cursors: [String: Int64]?) -> ByteBuffer {
        self.encode(Hello(session: session, user: user, node: node, resumed: cursors != nil, streams: cursors ?? [:]))
    }

    static func object(_ values: [String: Int]) -> ByteBuffer {
        self.encode(values)
    }

    static func encode(_ value: some Encodable) -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return ByteBuffer(bytes: (try? encoder.encode(value)) ?? Data("{}".utf8))
    }
}
