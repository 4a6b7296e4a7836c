import NIOCore
import RESP

/// Any bytes: the parser yields values, asks for more, or throws; it never crashes. Fed in two
/// chunks (split where the first byte says), it yields the same values as fed whole, so
/// incomplete input is handled at every boundary.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRESPParser(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
    guard count > 1 else { return 0 }
    let split = 1 + Int(bytes[0]) % (count - 1)
    let input = bytes[1...]
    let whole = parseAll([ByteBuffer(bytes: input)])
    let chunked = parseAll([ByteBuffer(bytes: input.prefix(split - 1)), ByteBuffer(bytes: input.dropFirst(split - 1))])
    precondition(whole.values == chunked.values, "chunking changed the parsed values")
    precondition(whole.failed == chunked.failed, "chunking changed whether the input is malformed")
    return 0
}

func parseAll(_ chunks: [ByteBuffer]) -> (values: [RESPValue], failed: Bool) {
    var parser = RESPParser(maxDepth: 32, maxBlobSize: 1 << 20, maxLineLength: 4096)
    var buffer = ByteBuffer()
    var values: [RESPValue] = []
    for var chunk in chunks {
        buffer.writeBuffer(&chunk)
        do {
            while let value = try parser.parse(&buffer) { values.append(value) }
        } catch {
            return (values, true)
        }
    }
    return (values, false)
}
