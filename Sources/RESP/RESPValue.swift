import NIOCore

/// A decoded RESP2/RESP3 value. Blob payloads are `ByteBuffer` slices of the received bytes.
public enum RESPValue: Sendable {
    case simpleString(ByteBuffer)
    case simpleError(ByteBuffer)
    case integer(Int64)
    case blobString(ByteBuffer)
    case blobError(ByteBuffer)
    /// RESP3 `_` or RESP2 `$-1` / `*-1`.
    case null
    case double(Double)
    case boolean(Bool)
    /// Decimal digits (with optional leading `-`) as received.
    case bigNumber(ByteBuffer)
    /// RESP3 verbatim string: three-letter format (e.g. "txt", "mkd") and the payload.
    case verbatimString(format: String, ByteBuffer)
    case array([RESPValue])
    case map([(key: RESPValue, value: RESPValue)])
    case set([RESPValue])
    case push([RESPValue])
}

extension RESPValue: Equatable {
    public static func == (lhs: RESPValue, rhs: RESPValue) -> Bool {
        switch (lhs, rhs) {
        case let (.simpleString(a), .simpleString(b)): return a == b
        case let (.simpleError(a), .simpleError(b)): return a == b
        case let (.integer(a), .integer(b)): return a == b
        case let (.blobString(a), .blobString(b)): return a == b
        case let (.blobError(a), .blobError(b)): return a == b
        case (.null, .null): return true
        case let (.double(a), .double(b)): return a == b || (a.isNaN && b.isNaN)
        case let (.boolean(a), .boolean(b)): return a == b
        case let (.bigNumber(a), .bigNumber(b)): return a == b
        case let (.verbatimString(f1, a), .verbatimString(f2, b)): return f1 == f2 && a == b
        case let (.array(a), .array(b)): return a == b
        case let (.set(a), .set(b)): return a == b
        case let (.push(a), .push(b)): return a == b
        case let (.map(a), .map(b)):
            guard a.count == b.count else { return false }
            for (x, y) in zip(a, b) where x.key != y.key || x.value != y.value { return false }
            return true
        default: return false
        }
    }
}

extension RESPValue {
    /// String view of string-like values (simple, blob, verbatim, big number, errors); nil otherwise.
    public var string: String? {
        switch self {
        case .simpleString(let b), .blobString(let b), .verbatimString(_, let b), .bigNumber(let b),
            .simpleError(let b), .blobError(let b):
            return String(buffer: b)
        case .integer(let i): return String(i)
        case .double(let d): return String(d)
        default: return nil
        }
    }

    /// Bytes of string-like values without copying.
    public var bytes: ByteBuffer? {
        switch self {
        case .simpleString(let b), .blobString(let b), .verbatimString(_, let b), .bigNumber(let b): return b
        default: return nil
        }
    }

    public var int: Int? {
        switch self {
        case .integer(let i): return Int(i)
        case .simpleString(let b), .blobString(let b), .bigNumber(let b): return Int(String(buffer: b))
        case .boolean(let v): return v ? 1 : 0
        default: return nil
        }
    }

    public var double: Double? {
        switch self {
        case .double(let d): return d
        case .integer(let i): return Double(i)
        case .simpleString(let b), .blobString(let b), .bigNumber(let b): return Double(String(buffer: b))
        default: return nil
        }
    }

    public var bool: Bool? {
        switch self {
        case .boolean(let b): return b
        case .integer(let i): return i != 0
        default: return nil
        }
    }

    public var isNull: Bool { if case .null = self { return true } else { return false } }

    /// Elements of array, set or push; nil for other types (and `[]` for null).
    public var array: [RESPValue]? {
        switch self {
        case .array(let a), .set(let a), .push(let a): return a
        case .null: return []
        default: return nil
        }
    }

    /// Map entries; RESP2 flat arrays of even length are interpreted as key/value pairs.
    public var mapEntries: [(key: RESPValue, value: RESPValue)]? {
        switch self {
        case .map(let m): return m
        case .array(let a) where a.count % 2 == 0:
            var out: [(key: RESPValue, value: RESPValue)] = []
            out.reserveCapacity(a.count / 2)
            var i = 0
            while i < a.count {
                out.append((a[i], a[i + 1]))
                i += 2
            }
            return out
        case .null: return []
        default: return nil
        }
    }

    /// Map with string keys (non-string keys are skipped).
    public var stringMap: [String: RESPValue]? {
        guard let entries = mapEntries else { return nil }
        var d: [String: RESPValue] = [:]
        for (k, v) in entries { if let ks = k.string { d[ks] = v } }
        return d
    }
}

extension RESPValue: CustomStringConvertible {
    public var description: String {
        switch self {
        case .simpleString(let b): return "+\(String(buffer: b))"
        case .simpleError(let b): return "-\(String(buffer: b))"
        case .integer(let i): return ":\(i)"
        case .blobString(let b): return "\"\(String(buffer: b))\""
        case .blobError(let b): return "!\(String(buffer: b))"
        case .null: return "null"
        case .double(let d): return ",\(d)"
        case .boolean(let b): return b ? "#t" : "#f"
        case .bigNumber(let b): return "(\(String(buffer: b))"
        case .verbatimString(let f, let b): return "=\(f):\(String(buffer: b))"
        case .array(let a): return "[" + a.map(\.description).joined(separator: ", ") + "]"
        case .set(let a): return "~{" + a.map(\.description).joined(separator: ", ") + "}"
        case .push(let a): return ">[" + a.map(\.description).joined(separator: ", ") + "]"
        case .map(let m): return "{" + m.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "}"
        }
    }
}
