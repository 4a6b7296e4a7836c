/// Random identifiers: epochs, session ids, message tags, idempotency keys. Lowercase letters
/// and digits, from the system's random source (one draw per ten characters).
public enum RandomID {
    static let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyz".unicodeScalars)

    /// `length` characters of `[0-9a-z]`.
    public static func make(length: Int) -> String {
        var scalars = String.UnicodeScalarView()
        var remaining = length
        while remaining > 0 {
            // 36^10 is far below 2^64: taking ten digits of one draw is as good as uniform.
            var n = UInt64.random(in: 0...UInt64.max)
            for _ in 0..<min(remaining, 10) {
                scalars.append(Self.alphabet[Int(n % 36)])
                n /= 36
            }
            remaining -= min(remaining, 10)
        }
        return String(scalars)
    }
}
