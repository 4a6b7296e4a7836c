import NIOCore

/// One argument of a command. Literals of string/integer type convert implicitly.
public enum RESPArgument: Sendable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    case string(String)
    case bytes(ByteBuffer)
    case int(Int)
    case double(Double)

    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }

    @inlinable
    func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .string(let s):
            buffer.writeInteger(UInt8(ascii: "$"))
            RESPCommand.writeDecimal(s.utf8.count, into: &buffer)
            buffer.writeStaticString("\r\n")
            buffer.writeString(s)
        case .bytes(let b):
            buffer.writeInteger(UInt8(ascii: "$"))
            RESPCommand.writeDecimal(b.readableBytes, into: &buffer)
            buffer.writeStaticString("\r\n")
            buffer.writeImmutableBuffer(b)
        case .int(let i):
            buffer.writeInteger(UInt8(ascii: "$"))
            RESPCommand.writeDecimal(RESPCommand.decimalLength(i), into: &buffer)
            buffer.writeStaticString("\r\n")
            RESPCommand.writeDecimal(i, into: &buffer)
        case .double(let d):
            let s: String
            if d.isInfinite { s = d < 0 ? "-inf" : "+inf" } else { s = String(d) }
            buffer.writeInteger(UInt8(ascii: "$"))
            RESPCommand.writeDecimal(s.utf8.count, into: &buffer)
            buffer.writeStaticString("\r\n")
            buffer.writeString(s)
        }
        buffer.writeStaticString("\r\n")
    }
}

/// A command: name plus arguments, encoded as a RESP array of blob strings directly into the
/// outbound buffer.
public struct RESPCommand: Sendable, CustomStringConvertible {
    public var arguments: [RESPArgument]

    public init(_ name: String, _ arguments: RESPArgument...) {
        self.arguments = [.string(name)]
        self.arguments.append(contentsOf: arguments)
    }

    public init(_ name: String, arguments: [RESPArgument]) {
        self.arguments = [.string(name)]
        self.arguments.append(contentsOf: arguments)
    }

    /// Command from whole argument list (first element is the command name).
    public init(arguments: [RESPArgument]) { self.arguments = arguments }

    public mutating func append(_ argument: RESPArgument) { arguments.append(argument) }
    public mutating func append(_ name: String, _ argument: RESPArgument) {
        arguments.append(.string(name))
        arguments.append(argument)
    }
    public mutating func append<S: Sequence>(contentsOf args: S) where S.Element == RESPArgument {
        arguments.append(contentsOf: args)
    }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "*"))
        Self.writeDecimal(arguments.count, into: &buffer)
        buffer.writeStaticString("\r\n")
        for a in arguments { a.encode(into: &buffer) }
    }

    public var name: String {
        if case .string(let s)? = arguments.first { return s.uppercased() }
        if case .bytes(let b)? = arguments.first { return String(buffer: b).uppercased() }
        return ""
    }

    public var description: String {
        arguments.map { a -> String in
            switch a {
            case .string(let s): return s
            case .bytes(let b): return "<\(b.readableBytes) bytes>"
            case .int(let i): return String(i)
            case .double(let d): return String(d)
            }
        }.joined(separator: " ")
    }

    @usableFromInline
    static func decimalLength(_ value: Int) -> Int {
        var n = value < 0 ? 2 : 1
        var v = value.magnitude
        while v >= 10 {
            v /= 10
            n += 1
        }
        return n
    }

    @usableFromInline
    static func writeDecimal(_ value: Int, into buffer: inout ByteBuffer) {
        if value >= 0 && value < 10 {
            buffer.writeInteger(UInt8(48 + value))
            return
        }
        var v = value.magnitude
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes of scratch
        let count = withUnsafeMutableBytes(of: &digits) { raw -> Int in
            var i = raw.count
            while true {
                i -= 1
                raw[i] = UInt8(48 + v % 10)
                v /= 10
                if v == 0 { break }
            }
            if value < 0 {
                i -= 1
                raw[i] = UInt8(ascii: "-")
            }
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: raw[i...]))
            return raw.count - i
        }
        _ = count
    }
}
