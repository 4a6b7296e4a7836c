/// Range checks for settings. Every message names the option and the value it got, and every
/// number is bounded: a value that would overflow a conversion later (a timer, a TTL in
/// milliseconds) is refused here, at start, rather than trapping a running node.
enum Bounds {
    static let day: Double = 86_400
    static let year: Double = 365 * 86_400

    static func integer(_ name: String, _ value: Int, _ range: ClosedRange<Int>, below other: String? = nil) throws {
        guard !range.contains(value) else { return }
        if let other, value < range.lowerBound { throw ConfigError("\(name) (\(value)) must be at least \(other)") }
        throw ConfigError("\(name) must be \(range.lowerBound)…\(range.upperBound), got \(value)")
    }

    /// `value` must be finite, above `above` (or at least `atLeast`), and at most `max`.
    static func number(_ name: String, _ value: Double, above: Double? = nil, atLeast: Double? = nil, max: Double) throws {
        let low = above.map { value > $0 } ?? atLeast.map { value >= $0 } ?? true
        guard value.isFinite, low, value <= max else {
            let bound = above.map { "above \(render($0))" } ?? atLeast.map { "at least \(render($0))" } ?? "finite"
            throw ConfigError("\(name) must be a number \(bound) and at most \(render(max)), got \(render(value))")
        }
    }

    private static func render(_ value: Double) -> String {
        value.isFinite && value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}
