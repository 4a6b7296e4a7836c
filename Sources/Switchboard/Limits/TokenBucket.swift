import NIOCore

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
struct TokenBucket {
    private var tokens: Double
    private var updated: NIODeadline

    init(burst: Double, now: NIODeadline = .now()) {
        self.tokens = burst
        self.updated = now
    }

    mutating func take(rate: Double, burst: Double, now: NIODeadline = .now()) -> Bool {
        let elapsed = Double((now - self.updated).nanoseconds) / 1e9
        self.tokens = min(burst, self.tokens + max(0, elapsed) * rate)
        self.updated = now
        guard self.tokens >= 1 else { return false }
        self.tokens -= 1
        return true
    }

    /// Whether the bucket has refilled by `now` (it then holds no information).
    func isFull(rate: Double, burst: Double, now: NIODeadline) -> Bool {
        self.tokens + Double((now - self.updated).nanoseconds) / 1e9 * rate >= burst
    }
}
