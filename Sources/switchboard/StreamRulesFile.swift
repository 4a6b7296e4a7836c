import Foundation
import Switchboard

/// The `streams` key of a configuration file: stream rules, in order, each an object such as
/// `{"pattern": "/rooms/*", "history": {"size": 500, "age": 86400}, "retention": "log",
/// "presence": true, "subscribe": "authenticated", "publish": "backend"}`. Every error names the
/// rule by its index and pattern, and the key.
enum StreamRulesFile {
    static let keys = ["pattern", "history", "retention", "presence", "subscribe", "publish"]

    static func parse(_ objects: [[String: ConfigFile.Value]], file: String) throws -> StreamRules {
        var rules: [StreamRule] = []
        for (index, object) in objects.enumerated() {
            let at = "\(file): streams[\(index)]"
            for key in object.keys.sorted() where !Self.keys.contains(key) {
                throw ConfigError("\(at): unknown key '\(key)' (a rule has \(Self.keys.joined(separator: ", ")))")
            }
            guard case .string(let text)? = object["pattern"] else { throw ConfigError("\(at): 'pattern' must be a string such as \"/rooms/*\"") }
            let name = "\(at) '\(text)'"
            do {
                let pattern = try StreamPattern(text)
                var storage = StreamStorage()
                switch object["history"] {
                case nil: break
                case .string("none")?: storage.historySize = 0
                case .object(let history)?:
                    for key in history.keys.sorted() where key != "size" && key != "age" {
                        throw ConfigError("\(name): history has 'size' and 'age', not '\(key)'")
                    }
                    if let size = history["size"] {
                        guard case .integer(let n) = size, (0...100_000_000).contains(n) else {
                            throw ConfigError("\(name): history size must be an integer 0…100000000")
                        }
                        storage.historySize = n
                    }
                    if let age = history["age"] {
                        let seconds: Double
                        switch age {
                        case .integer(let n): seconds = Double(n)
                        case .number(let d): seconds = d
                        default: seconds = -1
                        }
                        guard seconds > 0, seconds <= 100 * 365 * 86400 else {
                            throw ConfigError("\(name): history age must be a number of seconds, above 0 and at most 100 years")
                        }
                        storage.historyAge = seconds
                    }
                default:
                    throw ConfigError("\(name): 'history' must be \"none\" or an object {\"size\": n, \"age\": seconds}")
                }
                storage.retention = try Self.choice(object["retention"], "retention", name) ?? .queue
                var presence = true
                if let value = object["presence"] {
                    guard case .bool(let flag) = value else { throw ConfigError("\(name): 'presence' must be true or false") }
                    presence = flag
                }
                let subscribe: StreamRule.Subscribe = try Self.choice(object["subscribe"], "subscribe", name) ?? .authenticated
                let publish: StreamRule.Publish = try Self.choice(object["publish"], "publish", name) ?? .none
                rules.append(try StreamRule(pattern, storage: storage, presence: presence, subscribe: subscribe, publish: publish))
            } catch let error as StreamRuleError {
                throw ConfigError("\(at): \(error)")
            }
        }
        do {
            return try StreamRules(rules)
        } catch {
            throw ConfigError("\(file): streams: \(error)")
        }
    }

    private static func choice<T: RawRepresentable & CaseIterable>(_ value: ConfigFile.Value?, _ key: String, _ name: String) throws -> T?
    where T.RawValue == String {
        guard let value else { return nil }
        guard case .string(let word) = value, let parsed = T(rawValue: word) else {
            throw ConfigError("\(name): '\(key)' must be one of \(T.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", "))")
        }
        return parsed
    }
}
