import NIOCore
import Testing

@testable import RESP

@Suite(.timeLimit(.minutes(1)))
struct ParserTests {
    func parse(_ s: String, _ parser: RESPParser = RESPParser()) throws -> RESPValue? {
        var parser = parser
        var b = ByteBuffer(string: s)
        return try parser.parse(&b)
    }

    func bb(_ s: String) -> ByteBuffer { ByteBuffer(string: s) }

    @Test func everyType() throws {
        #expect(try parse("+OK\r\n") == .simpleString(bb("OK")))
        #expect(try parse("-ERR bad\r\n") == .simpleError(bb("ERR bad")))
        #expect(try parse(":-42\r\n") == .integer(-42))
        #expect(try parse(":9223372036854775807\r\n") == .integer(.max))
        #expect(try parse("$5\r\nhe\r\no\r\n") == .blobString(bb("he\r\no")))
        #expect(try parse("$0\r\n\r\n") == .blobString(bb("")))
        #expect(try parse("!10\r\nSYNTAX bad\r\n") == .blobError(bb("SYNTAX bad")))
        #expect(try parse("$-1\r\n") == .null)
        #expect(try parse("*-1\r\n") == .null)
        #expect(try parse("_\r\n") == .null)
        #expect(try parse(",3.25\r\n") == .double(3.25))
        #expect(try parse(",-1e3\r\n") == .double(-1000))
        #expect(try parse(",inf\r\n") == .double(.infinity))
        #expect(try parse(",-inf\r\n") == .double(-.infinity))
        #expect(try parse(",nan\r\n")?.double?.isNaN == true)
        #expect(try parse("#t\r\n") == .boolean(true))
        #expect(try parse("#f\r\n") == .boolean(false))
        #expect(try parse("(-3492890328409238509324850943850943825024385\r\n") == .bigNumber(bb("-3492890328409238509324850943850943825024385")))
        #expect(try parse("=15\r\ntxt:Some string\r\n") == .verbatimString(format: "txt", bb("Some string")))
        #expect(try parse("*3\r\n:1\r\n$1\r\na\r\n*0\r\n") == .array([.integer(1), .blobString(bb("a")), .array([])]))
        #expect(
            try parse("%2\r\n+a\r\n:1\r\n+b\r\n#t\r\n") == .map([(.simpleString(bb("a")), .integer(1)), (.simpleString(bb("b")), .boolean(true))]))
        #expect(try parse("~2\r\n+a\r\n+b\r\n") == .set([.simpleString(bb("a")), .simpleString(bb("b"))]))
        #expect(
            try parse(">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n")
                == .push([.blobString(bb("message")), .blobString(bb("ch")), .blobString(bb("hi"))]))
        // Attribute is skipped; the following value is returned.
        #expect(try parse("|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2\r\n:9\r\n") == .array([.integer(2), .integer(9)]))
        // Attribute inside an aggregate.
        #expect(try parse("*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n") == .array([.integer(1), .integer(2)]))
    }

    @Test func consumesExactlyOneValue() throws {
        var b = ByteBuffer(string: "+OK\r\n:1\r\n$3\r\nabc\r\n")
        var p = RESPParser()
        #expect(try p.parse(&b) == .simpleString(bb("OK")))
        #expect(try p.parse(&b) == .integer(1))
        #expect(try p.parse(&b) == .blobString(bb("abc")))
        #expect(try p.parse(&b) == nil)
        #expect(b.readableBytes == 0)
    }

    @Test func blobIsSliceOfInput() throws {
        var b = ByteBuffer(string: "$5\r\nhello\r\n")
        var p = RESPParser()
        guard case .blobString(let s)? = try p.parse(&b) else {
            Issue.record("not blob")
            return
        }
        #expect(s.readableBytes == 5)
        // A slice shares storage: its base address is inside the original buffer.
        let orig = b.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        let slice = s.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        #expect(slice == orig - 7)  // reader index moved to the end (offset 11); payload starts at 4
    }

    static let allTypes =
        "*16\r\n+OK\r\n-ERR x\r\n:123\r\n$5\r\nhe\r\no\r\n!3\r\nERR\r\n$-1\r\n_\r\n,1.5\r\n#t\r\n(123456789012345678901234567890\r\n=7\r\ntxt:abc\r\n%1\r\n+k\r\n*1\r\n:1\r\n~1\r\n+s\r\n>2\r\n+p\r\n:2\r\n|1\r\n+a\r\n+b\r\n:7\r\n*-1\r\n"

    @Test func incompleteAtEveryByteSplit() throws {
        let bytes = Array(Self.allTypes.utf8)
        var fullParser = RESPParser()
        var full = ByteBuffer(bytes: bytes)
        let expected = try #require(try fullParser.parse(&full))
        #expect(full.readableBytes == 0)
        guard case .array(let items) = expected else {
            Issue.record("not array")
            return
        }
        #expect(items.count == 16)
        for split in 0..<bytes.count {
            var parser = RESPParser()
            var b = ByteBuffer(bytes: bytes[0..<split])
            #expect(try parser.parse(&b) == nil, "split \(split)")
            #expect(b.readerIndex == 0 && b.readableBytes == split, "consumed at split \(split)")
            b.writeBytes(bytes[split...])
            #expect(try parser.parse(&b) == expected, "split \(split)")
            #expect(b.readableBytes == 0)
        }
    }

    @Test(arguments: [
        "?what\r\n", "!!garbage\r\n", ":12a\r\n", ":\r\n", ":99999999999999999999\r\n", "$abc\r\n", "$-2\r\n",
        "$3\r\nabcXY", "+OK\rX", "#x\r\n", ",abc\r\n", ",\r\n", "(12x\r\n", "=2\r\nab\r\n", "=5\r\ntxtab\r\n",
        "*-2\r\n", "%-1\r\n", "_x\r\n", "$?\r\n", "*?\r\n", "*1\r\n?\r\n",
    ])
    func malformed(_ input: String) throws {
        var b = ByteBuffer(string: input)
        var p = RESPParser()
        #expect(throws: RESPError.self) { _ = try p.parse(&b) }
        var p2 = RESPParser()
        do { _ = try p2.parse(&b) } catch let e as RESPError {
            guard case .protocolError(let msg) = e else {
                Issue.record("wrong error \(e)")
                return
            }
            #expect(!msg.isEmpty)
        }
    }

    @Test func byteByByteAndBackToBack() throws {
        // Same parser fed one byte at a time, with two values back to back and then a third.
        let bytes = Array((Self.allTypes + Self.allTypes + "+end\r\n").utf8)
        var p = RESPParser()
        var b = ByteBuffer()
        var values: [RESPValue] = []
        for byte in bytes {
            b.writeInteger(byte)
            while let v = try p.parse(&b) { values.append(v) }
        }
        #expect(values.count == 3)
        #expect(values[0] == values[1])
        #expect(values[2] == .simpleString(ByteBuffer(string: "end")))
        #expect(b.readableBytes == 0)
    }

    @Test func largeAggregateInChunks() throws {
        var body = "*100000\r\n"
        for i in 0..<100000 { body += "$\(String(i).utf8.count)\r\n\(i)\r\n" }
        let bytes = Array(body.utf8)
        var p = RESPParser()
        var b = ByteBuffer()
        var result: RESPValue?
        var i = 0
        while i < bytes.count {
            b.writeBytes(bytes[i..<min(i + 1000, bytes.count)])
            i += 1000
            if let v = try p.parse(&b) { result = v }
        }
        #expect(result?.array?.count == 100000)
        #expect(result?.array?[99999].string == "99999")
    }

    @Test func parserUsableAfterError() throws {
        var p = RESPParser()
        var bad = ByteBuffer(string: "*2\r\n:1\r\n:x\r\n")
        #expect(throws: RESPError.self) { _ = try p.parse(&bad) }
        var good = ByteBuffer(string: ":5\r\n")
        #expect(try p.parse(&good) == .integer(5))
    }

    @Test func depthLimit() throws {
        let nested = String(repeating: "*1\r\n", count: 70) + ":1\r\n"
        #expect(throws: RESPError.self) { _ = try parse(nested, RESPParser(maxDepth: 64)) }
        let ok = String(repeating: "*1\r\n", count: 10) + ":1\r\n"
        #expect(try parse(ok) != nil)
    }

    @Test func blobSizeLimit() throws {
        #expect(throws: RESPError.protocolError("blob string length 2000 exceeds limit 1000")) {
            _ = try parse("$2000\r\n", RESPParser(maxBlobSize: 1000))
        }
        #expect(throws: RESPError.self) { _ = try parse("$600000000\r\n") }
        #expect(throws: RESPError.self) { _ = try parse("*999999999999\r\n") }
    }

    @Test func lineLengthLimit() throws {
        let long = "+" + String(repeating: "a", count: 200)
        #expect(throws: RESPError.self) { _ = try parse(long, RESPParser(maxLineLength: 100)) }
        #expect(try parse(long) == nil)
    }

    @Test func commandEncoding() throws {
        var b = ByteBuffer()
        RESPCommand("SET", "key", .bytes(ByteBuffer(string: "v\r\n")), .int(-1234), .int(0), .double(1.5)).encode(into: &b)
        #expect(b.text == "*6\r\n$3\r\nSET\r\n$3\r\nkey\r\n$3\r\nv\r\n\r\n$5\r\n-1234\r\n$1\r\n0\r\n$3\r\n1.5\r\n")
        var c = ByteBuffer()
        RESPCommand("X", .int(Int.min), .int(Int.max), "é").encode(into: &c)
        #expect(c.text == "*4\r\n$1\r\nX\r\n$20\r\n-9223372036854775808\r\n$19\r\n9223372036854775807\r\n$2\r\né\r\n")
    }

    @Test func scriptsAreNamedByTheirSHA1() {
        #expect(RESPScript(source: "").sha1 == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        #expect(RESPScript(source: "abc").sha1 == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(RESPScript(source: "The quick brown fox jumps over the lazy dog").sha1 == "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12")
        #expect(RESPScript(source: String(repeating: "a", count: 1_000_000)).sha1 == "34aa973cd4c4daa4f61eeb2bdbad27316534016f")
    }

    @Test func backoffFullJitter() {
        let p = RESPReconnectPolicy(initialDelay: .milliseconds(100), maxDelay: .seconds(1))
        for attempt in 0..<20 {
            let d = p.delay(attempt: attempt)
            #expect(d >= .zero && d <= .seconds(1))
            if attempt == 0 { #expect(d <= .milliseconds(100)) }
        }
    }
}
