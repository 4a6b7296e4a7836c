import SwitchboardWire

/// A path pattern that chooses a stream rule: `/rooms/*` (one segment), `/orders/**` (one or
/// more segments), `/users/{user}/**` (a segment that must be the connection's user).
public struct StreamPattern: Sendable, Hashable, CustomStringConvertible {
    enum Segment: Sendable, Hashable {
        case literal(Substring)
        /// `*`: any one segment.
        case one
        /// `**`: one or more segments (last only).
        case rest
        /// `{user}`: one segment, which must equal the connection's user.
        case user
    }

    let segments: [Segment]
    public let description: String

    /// Parses `pattern`; the error says what is wrong with it.
    public init(_ pattern: String) throws(StreamRuleError) {
        guard pattern.hasPrefix("/"), pattern.count > 1 else {
            throw StreamRuleError("the pattern '\(pattern)' must start with / and name at least one segment")
        }
        let parts = pattern.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        var segments: [Segment] = []
        for (index, part) in parts.enumerated() {
            switch part {
            case "": throw StreamRuleError("the pattern '\(pattern)' has an empty segment")
            case "*": segments.append(.one)
            case "**":
                guard index == parts.count - 1 else { throw StreamRuleError("in '\(pattern)', ** may only be the last segment") }
                segments.append(.rest)
            case "{user}":
                guard !segments.contains(.user) else { throw StreamRuleError("'\(pattern)' names {user} twice") }
                segments.append(.user)
            default:
                guard !part.contains("*"), !part.contains("{"), !part.contains("}") else {
                    throw StreamRuleError("in '\(pattern)', '\(part)' mixes a wildcard with text: use *, ** or {user} as a whole segment")
                }
                segments.append(.literal(part))
            }
        }
        self.segments = segments
        self.description = pattern
    }

    /// Whether the pattern names the connection's user (`{user}`).
    public var namesUser: Bool { self.segments.contains(.user) }

    /// How `stream` matches: nil when it does not, else the `{user}` segment it binds (if any).
    public func match(_ stream: String) -> Match? {
        guard stream.hasPrefix("/") else { return nil }
        let parts = stream.utf8.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        var user: Substring? = nil
        for (index, segment) in self.segments.enumerated() {
            if case .rest = segment {
                return parts.count > index && !parts[index...].contains(where: \.isEmpty) ? Match(user: user) : nil
            }
            guard index < parts.count, !parts[index].isEmpty else { return nil }
            let part = Substring(parts[index])
            switch segment {
            case .literal(let text): if part != text { return nil }
            case .one: break
            case .user: user = part
            case .rest: break
            }
        }
        return parts.count == self.segments.count ? Match(user: user) : nil
    }

    public struct Match: Sendable, Equatable {
        /// The segment in `{user}`'s place.
        public var user: Substring?

        /// Whether the path's `{user}` (if any) is `user`, as the built-in streams spell a user in a
        /// path (`PathSegment.encode`: `zoë` is `zo%C3%AB`). Only that one spelling matches, so a user
        /// named `zo%C3%AB` does not own zoë's paths, and `%61nn` is nobody's.
        public func isOwned(by user: String?) -> Bool {
            guard let named = self.user else { return true }
            return user.map { named == PathSegment.encode($0) } ?? false
        }
    }
}

/// A stream rule that cannot be used, and why.
public struct StreamRuleError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
