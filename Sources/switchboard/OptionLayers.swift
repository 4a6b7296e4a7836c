import Foundation

/// One option of `serve`, by its long name (`max-queue-bytes`), from its layers: the flag if given,
/// else `SWITCHBOARD_<NAME>` (`SWITCHBOARD_MAX_QUEUE_BYTES`), else the configuration file's key
/// of that name, else nil (the caller's default). The name is written once per option here.
struct OptionLayers {
    let environment: Environment
    let file: ConfigFile
    /// The file's keys: every option read here must be one (a name typed wrong reads nothing).
    let keys: [String: ConfigFile.Kind]

    private func variable(_ name: String) -> String {
        assert(self.keys[name] != nil, "option \(name) is not a configuration file key")
        return name.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    func string(_ flag: String?, _ name: String) -> String? {
        flag ?? self.environment[self.variable(name)] ?? self.file.string(name)
    }

    func int(_ flag: Int?, _ name: String) throws -> Int? {
        try flag ?? self.environment.int(self.variable(name)) ?? self.file.int(name)
    }

    func double(_ flag: Double?, _ name: String) throws -> Double? {
        try flag ?? self.environment.double(self.variable(name)) ?? self.file.double(name)
    }

    /// A flag that is off unless set on any layer. The variable is read (and a bad value refused)
    /// even when the flag is given.
    func bool(_ flag: Bool, _ name: String) throws -> Bool {
        let layered = try self.environment.bool(self.variable(name)) ?? self.file.bool(name) ?? false
        return flag || layered
    }

    /// A repeatable option: the flags if given, else the comma-separated variable, else the file's list.
    func list(_ flags: [String], _ name: String) -> [String] {
        if !flags.isEmpty { return flags }
        if let raw = self.environment[self.variable(name)] {
            return raw.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        return self.file.strings(name) ?? []
    }
}
