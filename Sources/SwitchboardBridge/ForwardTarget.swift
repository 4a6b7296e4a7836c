/// Which frame targets the bridge sends on. The frame parser allows any printable ASCII in a
/// target; a backend request line is stricter, and AsyncHTTPClient's URL parse would quietly
/// change what it does not allow (drop a `#…`, re-encode `{`), so the signed target would not be
/// the one sent. Dot segments are refused too: a backend or proxy that normalises `/api/../admin`
/// would serve a path the gateway chose no backend for.
enum ForwardTarget {
    static func isValid(_ target: String) -> Bool {
        let bytes = Array(target.utf8)
        guard bytes.first == UInt8(ascii: "/") else { return false }
        let queryStart = bytes.firstIndex(of: UInt8(ascii: "?")) ?? bytes.endIndex
        for (i, b) in bytes.enumerated() {
            guard Self.isAllowed(b, inQuery: i > queryStart) || i == queryStart else { return false }
        }
        // Dot segments, spelled out or percent-encoded (`%2e`), in the path.
        let path = String(decoding: bytes[..<queryStart], as: UTF8.self).lowercased().replacingOccurrences(of: "%2e", with: ".")
        return !path.split(separator: "/", omittingEmptySubsequences: false).contains { $0 == "." || $0 == ".." }
    }

    /// RFC 3986 `pchar` and `/` (and `?` in the query); `%` (the parser checked its two hex digits).
    private static func isAllowed(_ b: UInt8, inQuery: Bool) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): return true
        case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "%"), UInt8(ascii: "!"), UInt8(ascii: "$"),
            UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: ","),
            UInt8(ascii: ";"), UInt8(ascii: "="), UInt8(ascii: ":"), UInt8(ascii: "@"), UInt8(ascii: "/"):
            return true
        case UInt8(ascii: "?"): return inQuery
        default: return false
        }
    }
}
