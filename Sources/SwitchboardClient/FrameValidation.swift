import SwitchboardWire

/// Checks of what the application passes in (targets, META values) before a frame is built:
/// bad input is an error at the call, never a frame the server refuses.
enum FrameValidation {
    static func checkTarget(_ target: String) throws(SwitchboardClientError) {
        guard target.first == "/" else { throw .invalidArgument("target must start with '/': \(target)") }
        guard target.utf8.count <= 4096 else { throw .invalidArgument("target longer than 4096 bytes") }
        for b in target.utf8 where b <= 0x20 || b >= 0x7F || b == UInt8(ascii: "|") {
            throw .invalidArgument("target must be printable ASCII without '|' (percent-encode): \(target)")
        }
    }

    static func checkMetaValue(_ value: String, key: String) throws(SwitchboardClientError) {
        guard !value.isEmpty else { throw .invalidArgument("empty META value for \(key)") }
        for b in value.utf8 where b <= 0x20 || b >= 0x7F || b == UInt8(ascii: "|") || b == UInt8(ascii: ";") || b == UInt8(ascii: "=") {
            throw .invalidArgument("META value for \(key) must be printable ASCII without | ; =")
        }
    }
}
