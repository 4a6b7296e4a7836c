import NIOCore

/// Incremental RESP2/RESP3 parser over a `ByteBuffer`.
///
/// `parse(_:)` returns `nil` ("need more data") without consuming anything when the buffer does
/// not yet hold a complete value, returns the value and advances the reader index when it does,
/// and throws `RESPError.protocolError` on malformed input or exceeded limits.
/// Attributes (`|`) are parsed and skipped. Blob payloads are slices (no copy).
public struct RESPParser: Sendable {
    public var maxDepth: Int
    public var maxBlobSize: Int
    /// Upper bound for a line (simple string/error, numbers, headers) without CRLF.
    public var maxLineLength: Int

    public init(maxDepth: Int = 64, maxBlobSize: Int = 512 * 1024 * 1024, maxLineLength: Int = 1024 * 1024) {
        self.maxDepth = maxDepth
        self.maxBlobSize = maxBlobSize
        self.maxLineLength = maxLineLength
    }

    // Resumable state: partially built aggregates and the offset (from the reader index) where
    // parsing continues, so data arriving in many chunks is scanned once.
    private struct Frame {
        var type: UInt8
        var remaining: Int64
        var items: [RESPValue] = []
        var pairs: [(key: RESPValue, value: RESPValue)] = []
        var pendingKey: RESPValue?
    }
    private var stack: [Frame] = []
    private var resumeOffset = 0

    /// Parses one value. Returns nil ("need more data") without moving the reader index; the
    /// parser remembers its progress, so call it again with the same buffer after appending
    /// bytes (as `ByteToMessageDecoder` does). Call `reset()` before feeding an unrelated buffer.
    public mutating func parse(_ buffer: inout ByteBuffer) throws -> RESPValue? {
        var index = buffer.readerIndex + resumeOffset
        do {
            while true {
                guard let item = try parseItem(buffer, &index) else {
                    resumeOffset = index - buffer.readerIndex
                    return nil
                }
                var value: RESPValue
                switch item {
                case .value(let v):
                    value = v
                case .header(let type, let n):
                    if n == 0 {
                        switch type {
                        case UInt8(ascii: "|"): continue
                        case UInt8(ascii: "%"): value = .map([])
                        case UInt8(ascii: "~"): value = .set([])
                        case UInt8(ascii: ">"): value = .push([])
                        default: value = .array([])
                        }
                    } else {
                        guard stack.count < maxDepth else { throw RESPError.protocolError("nesting deeper than \(maxDepth)") }
                        var frame = Frame(type: type, remaining: n)
                        if type == UInt8(ascii: "%") {
                            frame.pairs.reserveCapacity(Int(min(n / 2, 4096)))
                        } else if type != UInt8(ascii: "|") {
                            frame.items.reserveCapacity(Int(min(n, 4096)))
                        }
                        stack.append(frame)
                        continue
                    }
                }
                // Deliver `value` to the enclosing aggregates, completing them as needed.
                while true {
                    guard var top = stack.popLast() else {
                        buffer.moveReaderIndex(to: index)
                        resumeOffset = 0
                        return value
                    }
                    switch top.type {
                    case UInt8(ascii: "|"): break  // attribute content is skipped
                    case UInt8(ascii: "%"):
                        if let key = top.pendingKey {
                            top.pairs.append((key, value))
                            top.pendingKey = nil
                        } else {
                            top.pendingKey = value
                        }
                    default: top.items.append(value)
                    }
                    top.remaining -= 1
                    if top.remaining > 0 {
                        stack.append(top)
                        break
                    }
                    switch top.type {
                    case UInt8(ascii: "|"): break
                    case UInt8(ascii: "%"):
                        value = .map(top.pairs)
                        continue
                    case UInt8(ascii: "~"):
                        value = .set(top.items)
                        continue
                    case UInt8(ascii: ">"):
                        value = .push(top.items)
                        continue
                    default:
                        value = .array(top.items)
                        continue
                    }
                    break  // completed attribute: parse the value it annotates
                }
            }
        } catch {
            reset()
            throw error
        }
    }

    /// Forgets partial progress.
    public mutating func reset() {
        stack.removeAll()
        resumeOffset = 0
    }

    private enum Item {
        case value(RESPValue)
        /// Aggregate header; `count` is the number of elements (2 × pairs for maps/attributes).
        case header(UInt8, Int64)
    }

    // MARK: - internals

    private static let cr = UInt8(ascii: "\r")
    private static let lf = UInt8(ascii: "\n")

    /// Returns the absolute index of "\r" that ends the line starting at `start`, nil if incomplete.
    private func lineEnd(_ buffer: ByteBuffer, from start: Int) throws -> Int? {
        let offset = start - buffer.readerIndex
        let found: Int? = buffer.withUnsafeReadableBytes { raw -> Int? in
            let limit = min(raw.count, offset + maxLineLength + 1)
            var i = offset
            while i < limit {
                if raw[i] == Self.cr { return i }
                i += 1
            }
            return nil
        }
        guard let rel = found else {
            if buffer.writerIndex - start > maxLineLength {
                throw RESPError.protocolError("line longer than \(maxLineLength) bytes without CRLF")
            }
            return nil
        }
        let crIndex = buffer.readerIndex + rel
        guard crIndex + 1 < buffer.writerIndex else { return nil }
        guard buffer.getInteger(at: crIndex + 1, as: UInt8.self) == Self.lf else {
            throw RESPError.protocolError("expected \\n after \\r at offset \(crIndex + 1 - buffer.readerIndex)")
        }
        return crIndex
    }

    private func parseInt(_ buffer: ByteBuffer, from start: Int, to end: Int, what: String) throws -> Int64 {
        guard end > start, end - start <= 20 else { throw RESPError.protocolError("invalid \(what): bad length") }
        return try buffer.withUnsafeReadableBytes { raw -> Int64 in
            var i = start - buffer.readerIndex
            let e = end - buffer.readerIndex
            var negative = false
            if raw[i] == UInt8(ascii: "-") {
                negative = true
                i += 1
            } else if raw[i] == UInt8(ascii: "+") {
                i += 1
            }
            guard i < e else { throw RESPError.protocolError("invalid \(what): no digits") }
            var value: Int64 = 0
            while i < e {
                let c = raw[i]
                guard c >= 48 && c <= 57 else {
                    throw RESPError.protocolError("invalid \(what): unexpected byte 0x\(String(c, radix: 16))")
                }
                let d = Int64(c - 48)
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (s, o2) = negative ? m.subtractingReportingOverflow(d) : m.addingReportingOverflow(d)
                guard !o1 && !o2 else { throw RESPError.protocolError("invalid \(what): overflow") }
                value = s
                i += 1
            }
            return value
        }
    }

    private func parseItem(_ buffer: ByteBuffer, _ index: inout Int) throws -> Item? {
        guard index < buffer.writerIndex, let type = buffer.getInteger(at: index, as: UInt8.self) else { return nil }
        switch type {
        case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"), UInt8(ascii: "_"), UInt8(ascii: "#"),
            UInt8(ascii: ","), UInt8(ascii: "("), UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="),
            UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "%"), UInt8(ascii: "|"):
            break
        default:
            let printable = type >= 32 && type < 127 ? "'\(Character(Unicode.Scalar(type)))'" : "0x\(String(type, radix: 16))"
            throw RESPError.protocolError("unknown RESP type byte \(printable)")
        }
        let lineStart = index + 1
        guard let end = try lineEnd(buffer, from: lineStart) else { return nil }
        let afterLine = end + 2
        let lineLength = end - lineStart

        switch type {
        case UInt8(ascii: "+"):
            index = afterLine
            return .value(.simpleString(buffer.getSlice(at: lineStart, length: lineLength)!))
        case UInt8(ascii: "-"):
            index = afterLine
            return .value(.simpleError(buffer.getSlice(at: lineStart, length: lineLength)!))
        case UInt8(ascii: ":"):
            let v = try parseInt(buffer, from: lineStart, to: end, what: "integer")
            index = afterLine
            return .value(.integer(v))
        case UInt8(ascii: "_"):
            guard lineLength == 0 else { throw RESPError.protocolError("invalid null: unexpected payload") }
            index = afterLine
            return .value(.null)
        case UInt8(ascii: "#"):
            guard lineLength == 1, let c = buffer.getInteger(at: lineStart, as: UInt8.self),
                c == UInt8(ascii: "t") || c == UInt8(ascii: "f")
            else { throw RESPError.protocolError("invalid boolean") }
            index = afterLine
            return .value(.boolean(c == UInt8(ascii: "t")))
        case UInt8(ascii: ","):
            guard lineLength > 0, lineLength < 512, let s = buffer.getString(at: lineStart, length: lineLength) else {
                throw RESPError.protocolError("invalid double")
            }
            let v: Double?
            switch s.lowercased() {
            case "inf", "+inf": v = .infinity
            case "-inf": v = -.infinity
            case "nan", "-nan": v = .nan
            default:
                v =
                    s.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || $0 == 46 || $0 == 45 || $0 == 43 || $0 == 101 || $0 == 69 })
                    ? Double(s) : nil
            }
            guard let d = v else { throw RESPError.protocolError("invalid double '\(s.prefix(40))'") }
            index = afterLine
            return .value(.double(d))
        case UInt8(ascii: "("):
            let ok =
                lineLength > 0
                && buffer.withUnsafeReadableBytes { raw -> Bool in
                    var i = lineStart - buffer.readerIndex
                    let e = end - buffer.readerIndex
                    if raw[i] == UInt8(ascii: "-") || raw[i] == UInt8(ascii: "+") { i += 1 }
                    guard i < e else { return false }
                    while i < e {
                        if raw[i] < 48 || raw[i] > 57 { return false }
                        i += 1
                    }
                    return true
                }
            guard ok else { throw RESPError.protocolError("invalid big number") }
            index = afterLine
            return .value(.bigNumber(buffer.getSlice(at: lineStart, length: lineLength)!))
        case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="):
            let what = type == UInt8(ascii: "$") ? "blob string length" : type == UInt8(ascii: "!") ? "blob error length" : "verbatim string length"
            if lineLength == 1, buffer.getInteger(at: lineStart, as: UInt8.self) == UInt8(ascii: "?") {
                throw RESPError.protocolError("streamed strings are not supported")
            }
            let n = try parseInt(buffer, from: lineStart, to: end, what: what)
            if n == -1 && type == UInt8(ascii: "$") {
                index = afterLine
                return .value(.null)
            }
            guard n >= 0 else { throw RESPError.protocolError("invalid \(what) \(n)") }
            guard n <= maxBlobSize else { throw RESPError.protocolError("\(what) \(n) exceeds limit \(maxBlobSize)") }
            let len = Int(n)
            guard buffer.writerIndex - afterLine >= len + 2 else { return nil }
            guard buffer.getInteger(at: afterLine + len, as: UInt8.self) == Self.cr,
                buffer.getInteger(at: afterLine + len + 1, as: UInt8.self) == Self.lf
            else { throw RESPError.protocolError("missing CRLF after \(len)-byte payload") }
            index = afterLine + len + 2
            if type == UInt8(ascii: "$") { return .value(.blobString(buffer.getSlice(at: afterLine, length: len)!)) }
            if type == UInt8(ascii: "!") { return .value(.blobError(buffer.getSlice(at: afterLine, length: len)!)) }
            guard len >= 4, buffer.getInteger(at: afterLine + 3, as: UInt8.self) == UInt8(ascii: ":"),
                let fmt = buffer.getString(at: afterLine, length: 3)
            else { throw RESPError.protocolError("invalid verbatim string format") }
            return .value(.verbatimString(format: fmt, buffer.getSlice(at: afterLine + 4, length: len - 4)!))
        case UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "%"), UInt8(ascii: "|"):
            if lineLength == 1, buffer.getInteger(at: lineStart, as: UInt8.self) == UInt8(ascii: "?") {
                throw RESPError.protocolError("streamed aggregates are not supported")
            }
            let n = try parseInt(buffer, from: lineStart, to: end, what: "aggregate length")
            if n == -1 && type == UInt8(ascii: "*") {
                index = afterLine
                return .value(.null)
            }
            guard n >= 0 else { throw RESPError.protocolError("invalid aggregate length \(n)") }
            guard n <= Int64(maxBlobSize) / 3 else {
                throw RESPError.protocolError("aggregate length \(n) exceeds limit")
            }
            let isPairs = type == UInt8(ascii: "%") || type == UInt8(ascii: "|")
            let elements = isPairs ? n * 2 : n
            index = afterLine
            return .header(type, elements)
        default:
            throw RESPError.protocolError("unknown RESP type byte")
        }
    }
}

/// NIO decoder producing `RESPValue`s.
public struct RESPDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = RESPValue
    public var parser: RESPParser

    public init(parser: RESPParser = RESPParser()) { self.parser = parser }

    public mutating func decode(buffer: inout ByteBuffer) throws -> RESPValue? {
        try parser.parse(&buffer)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> RESPValue? {
        try parser.parse(&buffer)
    }
}
