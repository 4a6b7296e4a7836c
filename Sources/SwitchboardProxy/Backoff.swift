/// Delays between upstream reconnect attempts: exponential with full jitter, so that many
/// sessions whose upstream restarted do not all reconnect at the same instant.
enum Backoff {
    static func delay(attempt: Int, initial: Double, max: Double) -> Duration {
        let ceiling = min(max, initial * Double(1 << min(attempt, 30)))
        return .seconds(Double.random(in: 0...ceiling))
    }
}
