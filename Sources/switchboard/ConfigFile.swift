import ArgumentParser
import Foundation

/// A JSON configuration file: one object whose keys are the long option names of
/// `switchboard serve` (`"port": 8080`, `"max-queue-bytes": 1048576`, `"api-keys": ["…"]`).
/// Unknown keys and values of the wrong type are errors that name the key, so a typo never
/// silently falls back to a default.
struct ConfigFile {
    enum Kind: String {
        case string = "a string"
        case integer = "an integer"
        case number = "a number"
        case boolean = "true or false"
        case strings = "an array of strings"
        case objects = "an array of objects"
    }

    /// A value as the file holds it (JSONDecoder tells booleans, integers and numbers apart).
    enum Value: Decodable {
        case null
        case bool(Bool)
        case integer(Int)
        case number(Double)
        case string(String)
        case array([Value])
        case object([String: Value])

        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if c.decodeNil() {
                self = .null
            } else if let b = try? c.decode(Bool.self) {
                self = .bool(b)
            } else if let i = try? c.decode(Int.self) {
                self = .integer(i)
            } else if let d = try? c.decode(Double.self) {
                self = .number(d)
            } else if let s = try? c.decode(String.self) {
                self = .string(s)
            } else if let a = try? c.decode([Value].self) {
                self = .array(a)
            } else {
                self = .object(try c.decode([String: Value].self))
            }
        }
    }

    let path: String
    private let values: [String: Value]

    static let empty = ConfigFile(path: "", values: [:])

    private init(path: String, values: [String: Value]) {
        self.path = path
        self.values = values
    }

    init(path: String, keys: [String: Kind]) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConfigError("\(path): cannot read the file (\(error.localizedDescription))")
        }
        let top: Value
        do {
            top = try JSONDecoder().decode(Value.self, from: data)
        } catch {
            throw ConfigError("\(path): not valid JSON (\(Self.reason(error)))")
        }
        guard case .object = top else {
            throw ConfigError("\(path): the top level must be a JSON object of option names")
        }
        let object = try JSONDecoder().decode([String: Value].self, from: data)
        for (key, value) in object.sorted(by: { $0.key < $1.key }) {
            guard let kind = keys[key] else {
                let near = keys.keys.filter { Self.distance($0, key) <= 2 }.sorted().first
                throw ConfigError("\(path): unknown key '\(key)'" + (near.map { " (did you mean '\($0)'?)" } ?? ""))
            }
            guard Self.matches(value, kind) else {
                throw ConfigError("\(path): '\(key)' must be \(kind.rawValue), got \(Self.render(value))")
            }
        }
        self.path = path
        self.values = object
    }

    /// The objects of an `.objects` key.
    func objects(_ key: String) -> [[String: Value]]? {
        guard case .array(let items)? = self.values[key] else { return nil }
        return items.compactMap { if case .object(let o) = $0 { o } else { nil } }
    }

    func string(_ key: String) -> String? {
        if case .string(let s)? = self.values[key] { return s }
        return nil
    }

    func int(_ key: String) -> Int? {
        if case .integer(let i)? = self.values[key] { return i }
        return nil
    }

    func double(_ key: String) -> Double? {
        switch self.values[key] {
        case .integer(let i)?: return Double(i)
        case .number(let d)?: return d
        default: return nil
        }
    }

    func bool(_ key: String) -> Bool? {
        if case .bool(let b)? = self.values[key] { return b }
        return nil
    }

    func strings(_ key: String) -> [String]? {
        guard case .array(let items)? = self.values[key] else { return nil }
        return items.compactMap { if case .string(let s) = $0 { s } else { nil } }
    }

    private static func matches(_ value: Value, _ kind: Kind) -> Bool {
        switch (kind, value) {
        case (.string, .string), (.boolean, .bool), (.integer, .integer), (.number, .integer), (.number, .number): return true
        case (.strings, .array(let items)): return items.allSatisfy { if case .string = $0 { true } else { false } }
        case (.objects, .array(let items)): return items.allSatisfy { if case .object = $0 { true } else { false } }
        default: return false
        }
    }

    private static func render(_ value: Value) -> String {
        switch value {
        case .null: "null"
        case .bool(let b): b ? "true" : "false"
        case .integer(let i): String(i)
        case .number(let d): String(d)
        case .string(let s): "\"\(s)\""
        case .array: "an array"
        case .object: "an object"
        }
    }

    private static func reason(_ error: any Error) -> String {
        guard case DecodingError.dataCorrupted(let context) = error else { return "\(error)" }
        let underlying = (context.underlyingError as? NSError)?.userInfo["NSDebugDescription"] as? String
        return underlying ?? context.debugDescription
    }

    /// Edit distance, for "did you mean".
    private static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a)
        let b = Array(b)
        var row = Array(0...b.count)
        for i in 1...max(1, a.count) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }
}

/// A bad setting (file, environment or flag value): printed as is, without the usage text.
struct ConfigError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
