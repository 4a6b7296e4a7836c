import Foundation

/// Who is on the other end, as proven by a verified token.
public struct Identity: Sendable, Equatable {
    public var user: String
    public var roles: Set<String>
    /// When the token stops being valid; never later than `SwitchboardClaims.latestDate`.
    public var expiresAt: Date

    public init(user: String, roles: Set<String> = [], expiresAt: Date) {
        self.user = user
        self.roles = roles
        self.expiresAt = min(expiresAt, SwitchboardClaims.latestDate)
    }

    /// `expiresAt` in whole Unix seconds (what the AUTH reply carries).
    public var expiresAtSeconds: Int64 {
        Int64(self.expiresAt.timeIntervalSince1970.rounded(.down).clamped(to: 0...SwitchboardClaims.latestSeconds))
    }

    public func isExpired(at now: Date) -> Bool { self.expiresAt <= now }
}

/// Why a token was refused; the message goes into the 401 body.
public struct AuthError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension Double {
    func clamped(to range: ClosedRange<Double>) -> Double {
        guard !self.isNaN else { return range.lowerBound }
        return Swift.min(Swift.max(self, range.lowerBound), range.upperBound)
    }
}
