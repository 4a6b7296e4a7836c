import NIOCore

extension TimeAmount {
    /// `seconds` as a timer length: negative and NaN count as 0, anything past Int64's range
    /// of nanoseconds (about 292 years) as that range's end. Configuration and tokens may hold
    /// any number; a conversion must never trap.
    static func seconds(clamping seconds: Double) -> TimeAmount {
        guard seconds > 0 else { return .nanoseconds(0) }
        let nanoseconds = seconds * 1e9
        return .nanoseconds(nanoseconds < 9.2e18 ? Int64(nanoseconds) : Int64.max)
    }
}
