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

/// Any JSON value, to carry what a caller sent without knowing its shape.
enum JSONValue: Codable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? c.decode(Double.self) {
            self = .number(n)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n):
            // Integers stay integers (JSONEncoder would write 42 as 42, but keep it exact).
            if n == n.rounded(), abs(n) < 9e15 { try c.encode(Int64(n)) } else { try c.encode(n) }
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
}
