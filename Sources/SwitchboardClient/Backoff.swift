/// Exponential backoff with full jitter: `delay = random(0, min(max, min * 2^attempt))`.
public struct Backoff: Sendable, Equatable {
    public var min: Duration
    public var max: Duration

    public init(min: Duration, max: Duration) {
        self.min = min
        self.max = Swift.max(min, max)
    }

    /// The upper bound of the delay for `attempt` (0-based).
    public func upperBound(attempt: Int) -> Duration {
        let minNanos = Self.nanoseconds(self.min)
        let maxNanos = Self.nanoseconds(self.max)
        guard minNanos > 0 else { return .zero }
        let shift = Swift.min(Swift.max(attempt, 0), 62)
        // min * 2^attempt without overflow.
        let (product, overflow) = minNanos.multipliedReportingOverflow(by: Int64(1) << shift)
        let bound = overflow || product < 0 ? maxNanos : Swift.min(maxNanos, product)
        return .nanoseconds(bound)
    }

    /// A random delay in `0 ... upperBound(attempt)`.
    public func delay(attempt: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        let bound = Self.nanoseconds(self.upperBound(attempt: attempt))
        guard bound > 0 else { return .zero }
        return .nanoseconds(Int64.random(in: 0...bound, using: &generator))
    }

    public func delay(attempt: Int) -> Duration {
        var rng = SystemRandomNumberGenerator()
        return self.delay(attempt: attempt, using: &rng)
    }

    static func nanoseconds(_ d: Duration) -> Int64 {
        let c = d.components
        let (s, o) = c.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if o { return c.seconds < 0 ? 0 : Int64.max }
        return Swift.max(0, s &+ c.attoseconds / 1_000_000_000)
    }
}
