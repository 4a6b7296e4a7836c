import NIOCore
import SwitchboardWire
import Testing

@Suite("Frame codec")
struct FrameTests {
    func parse(_ s: String) throws(FrameError) -> Frame {
        try Frame(parsing: ByteBuffer(string: s))
    }

    @Test func parsesRequest() throws {
        let f = try parse(#"POST|/rooms/lobby/messages|r=7|{"text":"a|b"}"#)
        #expect(f.method == .post)
        #expect(f.status == nil)
        #expect(f.target == "/rooms/lobby/messages")
        #expect(f.meta["r"] == "7")
        #expect(f.bodyString == #"{"text":"a|b"}"#)
    }

    @Test func parsesResponseAndPush() throws {
        let f = try parse("PUSH200|/rooms/lobby?x=1|id=42;e=k3f9|hi")
        #expect(f.method == .push)
        #expect(f.status == 200)
        #expect(f.path == "/rooms/lobby")
        #expect(f.query == "x=1")
        #expect(f.meta["id"] == "42")
        #expect(f.meta["e"] == "k3f9")
        let empty = try parse("ACK|/a|id=1|")
        #expect(empty.body.readableBytes == 0)
    }

    @Test func bodyIsASliceNotACopy() throws {
        let buffer = ByteBuffer(string: "POST|/a||" + String(repeating: "x", count: 1000))
        let f = try Frame(parsing: buffer)
        let same = f.body.withUnsafeReadableBytes { body in
            buffer.withUnsafeReadableBytes { whole in body.baseAddress == whole.baseAddress! + 9 }
        }
        #expect(same)
    }

    @Test func roundTrips() throws {
        var meta = Meta()
        meta["r"] = "9"
        meta["k"] = "abc"
        let f = Frame(method: .post, status: 201, target: "/x/y%20z", meta: meta, body: ByteBuffer(string: "a|b|c"))
        let encoded = f.encoded()
        #expect(encoded.readableBytes == f.encodedLength)
        #expect(String(buffer: encoded) == "POST201|/x/y%20z|r=9;k=abc|a|b|c")
        #expect(try Frame(parsing: encoded) == f)
    }

    @Test(arguments: [
        ("", FrameError.Field.frame),
        ("GET", .frame),
        ("GET|/a", .frame),
        ("GET|/a|", .frame),
        ("|/a||", .head),
        ("get|/a||", .head),
        ("GET20|/a||", .status),
        ("GET2000|/a||", .status),
        ("GET099|/a||", .status),
        ("GETX1|/a||", .status),
        ("ABCDEFGHIJKLMNOPQ|/a||", .head),
        ("GET|||", .target),
        ("GET|a||", .target),
        ("GET|/a b||", .target),
        ("GET|/a%zz||", .target),
        ("GET|/a%2||", .target),
        ("GET|/a|r|", .meta),
        ("GET|/a|R=1|", .meta),
        ("GET|/a|r=1;;|", .meta),
        ("GET|/a|r=1;r=2|", .meta),
        ("GET|/a|r=a b|", .meta),
    ])
    func rejectsMalformed(input: String, field: FrameError.Field) {
        #expect(throws: FrameError.self) { try parse(input) }
        do {
            _ = try parse(input)
        } catch {
            #expect(error.field == field, "\(input): \(error)")
        }
    }

    @Test func errorCarriesRequestID() {
        do {
            _ = try parse("bad|/a|r=12|")
            Issue.record("expected an error")
        } catch {
            #expect(error.requestID == "12")
            #expect(error.field == .head)
        }
    }

    @Test func utf8Validation() {
        #expect(UTF8Validation.isValid(ByteBuffer(string: "héllo €𝄞")))
        let bad: [[UInt8]] = [[0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82], [0xFF], [0x80]]
        for b in bad {
            #expect(!UTF8Validation.isValid(ByteBuffer(bytes: b)), "\(b)")
        }
    }

    @Test func pathSegmentEncoding() {
        #expect(PathSegment.encode("ann") == "ann")
        #expect(PathSegment.encode("a|b c/é") == "a%7Cb%20c%2F%C3%A9")
    }
}
