import SwitchboardWire

/// What a stream allows and keeps, chosen by path pattern (in the config file's `streams`, or
/// `GatewayConfiguration.streamRules`). Defaults are the behaviour streams had before rules.
public struct StreamRule: Sendable {
    /// Who may subscribe.
    public enum Subscribe: String, Sendable, CaseIterable {
        /// Any connection, anonymous ones too.
        case anyone
        /// A connection with a user.
        case authenticated
        /// The user the path names (`{user}` in the pattern).
        case owner
        /// The backend's subscribe hook decides (a 2xx allows).
        case backend
        case none
    }

    /// Who may publish from a client (a `POST` to the stream's path); the server API always may.
    public enum Publish: String, Sendable, CaseIterable {
        case none
        /// Any connection, anonymous ones too.
        case anyone
        case authenticated
        /// The request goes to the backend, which publishes through the server API or answers
        /// 2xx with `Switchboard-Publish: 1` and the body to publish.
        case backend
    }

    public var pattern: StreamPattern
    public var storage: StreamStorage
    /// Whether subscriptions join the stream's presence set (and `<stream>/presence` exists).
    public var presence: Bool
    public var subscribe: Subscribe
    public var publish: Publish

    public init(
        _ pattern: StreamPattern, storage: StreamStorage = .standard, presence: Bool = true, subscribe: Subscribe = .authenticated,
        publish: Publish = .none
    ) throws(StreamRuleError) {
        if subscribe == .owner, !pattern.namesUser {
            throw StreamRuleError("'\(pattern)': subscribe 'owner' needs {user} in the pattern")
        }
        if let size = storage.historySize, size < 0 { throw StreamRuleError("'\(pattern)': the history size must be 0 or more") }
        if let age = storage.historyAge, !(age > 0 && age.isFinite) {
            throw StreamRuleError("'\(pattern)': the history age must be a positive number of seconds")
        }
        self.pattern = pattern
        self.storage = storage
        self.presence = presence
        self.subscribe = subscribe
        self.publish = publish
    }
}

/// The stream rules of a node, in order: the first whose pattern matches a stream governs it.
public struct StreamRules: Sendable {
    public let rules: [StreamRule]

    /// First segments a rule may not claim: built-in streams (decided before any rule, protocol.md
    /// §3.3) and the node's own routes (a rule's `POST` would shadow `/api/publish`).
    public static let reservedFirstSegments: Set<Substring> = ["sessions", "presence", "broadcast", "api", "health", "metrics"]

    public init(_ rules: [StreamRule]) throws(StreamRuleError) {
        for rule in rules {
            // A rule starts with a name of its own: a wildcard first segment would govern every
            // path of the node, its routes included.
            guard case .literal(let first) = rule.pattern.segments[0] else {
                throw StreamRuleError("'\(rule.pattern)': the first segment must be a name, not a wildcard")
            }
            if Self.reservedFirstSegments.contains(first) {
                throw StreamRuleError("'\(rule.pattern)': /\(first) is the node's own (built-in streams or routes) and follows its own rules")
            }
        }
        self.rules = rules
    }

    /// What `switchboard serve` had before rules: `/streams/**` open to connected users (to
    /// anyone when the node allows anonymous connections), everything else up to the router.
    public static func openStreams(allowAnonymous: Bool) -> StreamRules {
        let who: StreamRule.Subscribe = allowAnonymous ? .anyone : .authenticated
        // A literal pattern and fixed settings: these cannot fail.
        let rule = try! StreamRule(StreamPattern("/streams/**"), subscribe: who, publish: allowAnonymous ? .anyone : .authenticated)
        return try! StreamRules([rule])
    }

    /// The rule governing `stream`, and what its pattern bound.
    public func rule(for stream: String) -> (rule: StreamRule, match: StreamPattern.Match)? {
        for rule in self.rules {
            if let match = rule.pattern.match(stream) { return (rule, match) }
        }
        return nil
    }

    /// The storage each stream gets, for the engine.
    public var storagePolicy: StreamStoragePolicy {
        let rules = self
        return StreamStoragePolicy { stream in
            // A presence stream lives as the engine's default (a short, ephemeral-ish log).
            rules.rule(for: stream)?.rule.storage ?? .standard
        }
    }
}
