import HTTPTypes
import SwitchboardWire

/// Response headers a response frame carries in its META, so a WebSocket client reads what an
/// HTTP client would: when to retry, where a created thing is, its version.
enum ResponseMeta {
    static let carried: [(HTTPField.Name, String)] = [(.retryAfter, "retry-after"), (.location, "location"), (.eTag, "etag")]

    static func carry(_ headers: HTTPFields, into meta: inout Meta) {
        for (name, key) in self.carried {
            guard let value = headers[name], !value.isEmpty, value.utf8.count <= 512, value.utf8.allSatisfy(Self.isMetaByte) else { continue }
            meta[key] = value
        }
    }

    /// Printable ASCII but the frame's separators (`|`, `;`, `=`).
    private static func isMetaByte(_ b: UInt8) -> Bool {
        b >= 0x21 && b <= 0x7E && b != UInt8(ascii: "|") && b != UInt8(ascii: ";") && b != UInt8(ascii: "=")
    }
}
