/// Frame metadata: ordered `key=value` pairs, the frame's equivalent of HTTP headers.
///
/// Keys are 1–32 characters of `a-z 0-9 - _`; values may hold any printable ASCII
/// except `|` and `;` (percent-encode those). Order is kept so encoding is stable.
public struct Meta: Sendable, Equatable, ExpressibleByDictionaryLiteral, Sequence {
    public struct Item: Sendable, Equatable {
        public var key: String
        public var value: String
    }

    public private(set) var items: [Item]

    public init() { self.items = [] }

    public init(dictionaryLiteral elements: (String, String)...) {
        self.items = elements.map { Item(key: $0.0, value: $0.1) }
    }

    public subscript(key: String) -> String? {
        get { self.items.first(where: { $0.key == key })?.value }
        set {
            if let i = self.items.firstIndex(where: { $0.key == key }) {
                if let newValue { self.items[i].value = newValue } else { self.items.remove(at: i) }
            } else if let newValue {
                self.items.append(Item(key: key, value: newValue))
            }
        }
    }

    public var isEmpty: Bool { self.items.isEmpty }

    public func makeIterator() -> IndexingIterator<[Item]> { self.items.makeIterator() }

    mutating func appendParsed(key: String, value: String) {
        self.items.append(Item(key: key, value: value))
    }

    static func isValidKey(_ key: some Collection<UInt8>) -> Bool {
        guard !key.isEmpty, key.count <= 32 else { return false }
        return key.allSatisfy { b in
            (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9"))
                || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
        }
    }

    static func isValidValue(_ value: some Collection<UInt8>) -> Bool {
        value.allSatisfy { b in
            b >= 0x21 && b <= 0x7E && b != UInt8(ascii: "|") && b != UInt8(ascii: ";") && b != UInt8(ascii: "=")
        }
    }
}

/// Well-known META keys (see docs/protocol.md).
public enum MetaKey {
    /// Request id, chosen by the client, echoed by the response.
    public static let requestID = "r"
    /// Offset of a message in its stream.
    public static let offset = "id"
    /// Epoch of a stream: changes when its history was lost.
    public static let epoch = "e"
    /// Resume after this offset (SUB).
    public static let since = "since"
    /// A message's tag (PUSH), and the tag of the message at `since` (SUB): the identity of a
    /// message beyond its offset, so a history that was rolled back and written again (a
    /// failover that lost writes) is told from the one the client saw.
    public static let tag = "t"
    /// Idempotency key of a publish.
    public static let idempotencyKey = "k"
    /// Session id (HELLO).
    public static let session = "s"
    /// Whether a subscription's history was recovered (SUB replies): 1 or 0.
    public static let recovered = "recovered"
}
