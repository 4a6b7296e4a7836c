import Crypto
import Foundation
import NIOCore

/// `Switchboard-Signature: v1=<hex>`: HMAC-SHA256, keyed with the bridge's secret, over the
/// lines (joined by `\n`)
///
///     v1, timestamp, METHOD, target, user, roles, session, connection, node, transport, sha256(body)
///
/// with each value exactly as its header carries it (absent: empty) and the body's SHA-256 in
/// lower-case hex. A backend recomputes it, compares in constant time and refuses a timestamp
/// more than a minute away from its clock (docs/backend.md shows it in JavaScript).
public enum BackendSignature {
    public struct Fields: Sendable, Equatable {
        public var timestamp: String
        public var method: String
        public var target: String
        public var user: String
        public var roles: String
        public var session: String
        public var connection: String
        public var node: String
        public var transport: String

        public init(
            timestamp: String, method: String, target: String, user: String, roles: String, session: String, connection: String, node: String,
            transport: String
        ) {
            self.timestamp = timestamp
            self.method = method
            self.target = target
            self.user = user
            self.roles = roles
            self.session = session
            self.connection = connection
            self.node = node
            self.transport = transport
        }
    }

    public static func sign(_ fields: Fields, body: ByteBuffer, secret: String) -> String {
        let bodyHash = SHA256.hash(data: body.readableBytesView).hex
        let text = [
            "v1", fields.timestamp, fields.method, fields.target, fields.user, fields.roles, fields.session, fields.connection, fields.node,
            fields.transport, bodyHash,
        ].joined(separator: "\n")
        let mac = HMAC<SHA256>.authenticationCode(for: Data(text.utf8), using: SymmetricKey(data: Data(secret.utf8)))
        return "v1=" + mac.hex
    }
}

extension Sequence where Element == UInt8 {
    var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in self {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
