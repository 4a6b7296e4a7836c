import NIOCore
import SwitchboardWire

/// Any bytes: the parser returns a frame or a `FrameError`, never crashes; a frame it accepts
/// re-encodes to bytes that parse to the same frame.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameParser(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let buffer = ByteBuffer(bytes: UnsafeRawBufferPointer(start: start, count: count))
    guard let frame = try? Frame(parsing: buffer) else { return 0 }
    let again: Frame
    do {
        again = try Frame(parsing: frame.encoded())
    } catch {
        fatalError("an accepted frame does not re-parse: \(error)")
    }
    precondition(again == frame, "re-encoding changed the frame")
    return 0
}
