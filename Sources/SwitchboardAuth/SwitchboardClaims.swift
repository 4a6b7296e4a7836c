import Foundation

/// The claims Switchboard reads from a JWT: `sub` (the user, required), `exp` (required),
/// `nbf` (optional) and `roles` (optional array of strings).
///
/// Times are RFC 7519 NumericDates: seconds since 1970, possibly fractional. They are read as
/// numbers and range-checked here rather than trusted: a validly signed token may still carry
/// `exp: 1e19`, which no conversion on the way (timers, the AUTH reply) may trap on. A time
/// after `latestDate` is read as `latestDate`; one before 1970 as 1970.
public struct SwitchboardClaims: Codable, Sendable, Equatable {
    public var sub: String
    public var exp: Date
    public var nbf: Date?
    public var roles: [String]?

    /// 9999-12-31T23:59:59Z: later times mean "never" in practice and are read as this.
    public static let latestSeconds: Double = 253_402_300_799
    public static let latestDate = Date(timeIntervalSince1970: latestSeconds)

    public init(sub: String, exp: Date, nbf: Date? = nil, roles: [String]? = nil) {
        self.sub = sub
        self.exp = exp
        self.nbf = nbf
        self.roles = roles
    }

    enum CodingKeys: String, CodingKey { case sub, exp, nbf, roles }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.sub = try c.decode(String.self, forKey: .sub)
        self.exp = try Self.numericDate(c, .exp)
        self.nbf = c.contains(.nbf) ? try Self.numericDate(c, .nbf) : nil
        self.roles = try c.decodeIfPresent([String].self, forKey: .roles)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(self.sub, forKey: .sub)
        try c.encode(Self.seconds(self.exp), forKey: .exp)
        try c.encodeIfPresent(self.nbf.map { Self.seconds($0) }, forKey: .nbf)
        try c.encodeIfPresent(self.roles, forKey: .roles)
    }

    private static func numericDate(_ c: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys) throws -> Date {
        let value = try c.decode(Double.self, forKey: key)
        guard value.isFinite else {
            throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "\(key.rawValue) is not a finite number")
        }
        return Date(timeIntervalSince1970: value.clamped(to: 0...latestSeconds))
    }

    /// Whole seconds, as issuers write NumericDates (some verifiers refuse fractions).
    private static func seconds(_ date: Date) -> Int64 {
        Int64(date.timeIntervalSince1970.clamped(to: 0...latestSeconds).rounded(.down))
    }

    /// Checks the claims at `now` and returns who they name.
    public func identity(at now: Date) throws(AuthError) -> Identity {
        guard !self.sub.isEmpty else { throw AuthError("token has an empty subject") }
        guard self.exp > now else { throw AuthError("token expired") }
        if let nbf = self.nbf, nbf > now { throw AuthError("token not valid yet (nbf is in the future)") }
        return Identity(user: self.sub, roles: Set(self.roles ?? []), expiresAt: self.exp)
    }
}
