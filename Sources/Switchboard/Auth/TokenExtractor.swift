import Foundation
import HTTPTypes

/// Where a token may travel: `Authorization: Bearer`, a `bearer.<token>` entry in
/// `Sec-WebSocket-Protocol` (what browsers can set), the `sb_token` cookie, or `?access_token=`.
enum TokenExtractor {
    static let subprotocolPrefix = "bearer."

    static func token(from request: HTTPRequest) -> String? {
        if let auth = request.headerFields[.authorization] {
            let parts = auth.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" { return String(parts[1]) }
        }
        for value in request.headerFields[values: .secWebSocketProtocol] {
            for proto in value.split(separator: ",") {
                let p = proto.trimmingCharacters(in: .whitespaces)
                if p.hasPrefix(subprotocolPrefix) { return String(p.dropFirst(subprotocolPrefix.count)) }
            }
        }
        for value in request.headerFields[values: .cookie] {
            for cookie in value.split(separator: ";") {
                let kv = cookie.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
                if kv.count == 2, kv[0] == "sb_token" { return String(kv[1]) }
            }
        }
        if let path = request.path, let q = path.firstIndex(of: "?") {
            return QueryString.value(of: "access_token", in: path[path.index(after: q)...])
        }
        return nil
    }
}

enum QueryString {
    static func value(of name: String, in query: Substring) -> String? {
        for pair in query.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0] == name {
                return String(kv[1]).removingPercentEncoding ?? String(kv[1])
            }
        }
        return nil
    }
}
