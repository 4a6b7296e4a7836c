import NIOCore

/// Why a frame was rejected. `description` is the reason sent back in the 400 reply.
public struct FrameError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Field: String, Sendable {
        case head, status, target, meta, frame
    }

    public let field: Field
    public let reason: String
    /// The request id, when the frame was intact enough to read it, so the
    /// error reply can still be matched to its request.
    public let requestID: String?

    public init(_ field: Field, _ reason: String, requestID: String? = nil) {
        self.field = field
        self.reason = reason
        self.requestID = requestID
    }

    public var description: String { "\(self.field.rawValue): \(self.reason)" }
}

extension Frame {
    /// Parse a frame from the readable bytes of `buffer`. The body is a slice of
    /// `buffer` (no copy). Strict: every field is validated and the first problem
    /// found is reported precisely.
    public init(parsing buffer: ByteBuffer) throws(FrameError) {
        let readable = buffer.readableBytes
        // Find the first three separators; the body may contain more.
        var seps = (-1, -1, -1)
        buffer.withUnsafeReadableBytes { bytes in
            var found = 0
            var i = 0
            while i < bytes.count && found < 3 {
                if bytes[i] == UInt8(ascii: "|") {
                    switch found {
                    case 0: seps.0 = i
                    case 1: seps.1 = i
                    default: seps.2 = i
                    }
                    found += 1
                }
                i += 1
            }
        }
        guard seps.0 >= 0 else { throw FrameError(.frame, "expected HEAD|TARGET|META|BODY, found no '|'") }
        guard seps.1 >= 0 else { throw FrameError(.frame, "expected HEAD|TARGET|META|BODY, found one '|'") }
        guard seps.2 >= 0 else { throw FrameError(.frame, "expected HEAD|TARGET|META|BODY, found two '|'") }
        let start = buffer.readerIndex

        // META first, so later errors can carry the request id.
        let metaLength = seps.2 - seps.1 - 1
        guard metaLength <= FrameLimits.maxMetaLength else {
            throw FrameError(.meta, "longer than \(FrameLimits.maxMetaLength) bytes")
        }
        let meta = try Self.parseMeta(buffer.getSlice(at: start + seps.1 + 1, length: metaLength)!)
        let requestID = meta[MetaKey.requestID]

        let (method, status) = try Self.parseHead(buffer.getSlice(at: start, length: seps.0)!, requestID: requestID)

        let targetLength = seps.1 - seps.0 - 1
        let target = try Self.parseTarget(buffer.getSlice(at: start + seps.0 + 1, length: targetLength)!, requestID: requestID)

        self.method = method
        self.status = status
        self.target = target
        self.meta = meta
        self.body = buffer.getSlice(at: start + seps.2 + 1, length: readable - seps.2 - 1)!
    }

    static func parseHead(_ head: ByteBuffer, requestID: String?) throws(FrameError) -> (Method, Int?) {
        let bytes = head.readableBytesView
        guard !bytes.isEmpty else { throw FrameError(.head, "empty method", requestID: requestID) }
        let letters = bytes.prefix { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") }
        guard !letters.isEmpty else {
            throw FrameError(.head, "method must start with an upper-case letter A-Z", requestID: requestID)
        }
        guard letters.count <= FrameLimits.maxMethodLength else {
            throw FrameError(.head, "method longer than \(FrameLimits.maxMethodLength) letters", requestID: requestID)
        }
        let digits = bytes.dropFirst(letters.count)
        var status: Int? = nil
        if !digits.isEmpty {
            guard digits.count == 3, digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
                throw FrameError(.status, "status must be exactly three digits after the method", requestID: requestID)
            }
            let value = digits.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
            guard value >= 100 else { throw FrameError(.status, "status must be 100-999", requestID: requestID) }
            status = value
        }
        return (Method(uncheckedRawValue: String(decoding: letters, as: UTF8.self)), status)
    }

    static func parseTarget(_ target: ByteBuffer, requestID: String?) throws(FrameError) -> String {
        let bytes = target.readableBytesView
        guard !bytes.isEmpty else { throw FrameError(.target, "empty target", requestID: requestID) }
        guard bytes.count <= FrameLimits.maxTargetLength else {
            throw FrameError(.target, "longer than \(FrameLimits.maxTargetLength) bytes", requestID: requestID)
        }
        guard bytes.first == UInt8(ascii: "/") else {
            throw FrameError(.target, "must start with '/'", requestID: requestID)
        }
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let b = bytes[i]
            if b == UInt8(ascii: "%") {
                guard i + 2 < bytes.endIndex, bytes[i + 1].isHexDigit, bytes[i + 2].isHexDigit else {
                    throw FrameError(.target, "bad percent-encoding at byte \(i - bytes.startIndex)", requestID: requestID)
                }
                i += 3
                continue
            }
            guard b > 0x20 && b < 0x7F else {
                throw FrameError(
                    .target,
                    "byte \(i - bytes.startIndex) must be percent-encoded (printable ASCII only)",
                    requestID: requestID
                )
            }
            i += 1
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func parseMeta(_ meta: ByteBuffer) throws(FrameError) -> Meta {
        var result = Meta()
        let bytes = meta.readableBytesView
        guard !bytes.isEmpty else { return result }
        for pair in bytes.split(separator: UInt8(ascii: ";"), omittingEmptySubsequences: false) {
            guard let eq = pair.firstIndex(of: UInt8(ascii: "=")) else {
                throw FrameError(.meta, "'\(String(decoding: pair, as: UTF8.self))' is not key=value")
            }
            let key = pair[pair.startIndex..<eq]
            let value = pair[(eq + 1)...]
            guard Meta.isValidKey(key) else {
                throw FrameError(.meta, "bad key '\(String(decoding: key, as: UTF8.self))' (a-z 0-9 - _, 1-32 chars)")
            }
            guard Meta.isValidValue(value) else {
                throw FrameError(.meta, "bad value for '\(String(decoding: key, as: UTF8.self))' (printable ASCII without | ; =)")
            }
            let keyString = String(decoding: key, as: UTF8.self)
            guard result[keyString] == nil else { throw FrameError(.meta, "duplicate key '\(keyString)'") }
            result.appendParsed(key: keyString, value: String(decoding: value, as: UTF8.self))
        }
        return result
    }
}

extension Method {
    init(uncheckedRawValue: String) {
        self.init(stringLiteral: uncheckedRawValue)
    }
}

extension UInt8 {
    var isHexDigit: Bool {
        (self >= UInt8(ascii: "0") && self <= UInt8(ascii: "9")) || (self >= UInt8(ascii: "a") && self <= UInt8(ascii: "f"))
            || (self >= UInt8(ascii: "A") && self <= UInt8(ascii: "F"))
    }
}
