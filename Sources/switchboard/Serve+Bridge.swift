import Foundation
import Switchboard
import SwitchboardBridge

extension Serve {
    /// Stream rules and the backend bridge, from their options and the file's `streams`.
    func bridgeSettings(_ o: OptionLayers, file: ConfigFile, into s: inout Settings) throws {
        s.gateway.streamRules =
            try file.objects("streams").map { try StreamRulesFile.parse($0, file: file.path) }
            ?? StreamRules.openStreams(allowAnonymous: s.gateway.allowAnonymous)

        let targets = try o.list(self.backends, "backends").map(Self.target)
        let secret = o.string(self.backendSecret, "backend-secret")
        let timeout = try o.double(self.backendTimeout, "backend-timeout")
        let maxInFlight = try o.int(self.backendMaxInFlight, "backend-max-in-flight")
        let perConnection = try o.int(self.backendMaxInFlightPerConnection, "backend-max-in-flight-per-connection")
        let meta = o.list(self.backendMeta, "backend-meta")
        let disconnectHook = o.string(self.backendDisconnectHook, "backend-disconnect-hook")
        let connectHook = o.string(self.backendConnectHook, "backend-connect-hook")
        guard !targets.isEmpty else {
            if let rule = s.gateway.streamRules?.rules.first(where: { $0.subscribe == .backend || $0.publish == .backend }) {
                throw ConfigError("streams: the rule '\(rule.pattern)' asks the backend, but no --backend is given")
            }
            let stray = [
                secret != nil ? "backend-secret" : nil, timeout != nil ? "backend-timeout" : nil, maxInFlight != nil ? "backend-max-in-flight" : nil,
                perConnection != nil ? "backend-max-in-flight-per-connection" : nil, !meta.isEmpty ? "backend-meta" : nil,
                disconnectHook != nil ? "backend-disconnect-hook" : nil,
                connectHook != nil ? "backend-connect-hook" : nil,
            ]
            if let name = stray.compactMap({ $0 }).first { throw ConfigError("--\(name) is set but no --backend is given") }
            return
        }
        var b = BackendConfiguration(targets: targets, secret: secret)
        b.timeout = timeout ?? b.timeout
        b.maxInFlight = maxInFlight ?? b.maxInFlight
        b.maxInFlightPerConnection = perConnection ?? b.maxInFlightPerConnection
        b.maxResponseBytes = s.gateway.maxMessageSize
        b.metaKeys = Set(meta)
        b.disconnectHook = disconnectHook
        b.connectHook = connectHook
        try Bounds.number("--backend-timeout", b.timeout, above: 0, max: Bounds.day)
        try Bounds.integer("--backend-max-in-flight", b.maxInFlight, 1...10_000_000)
        try Bounds.integer("--backend-max-in-flight-per-connection", b.maxInFlightPerConnection, 1...1_000_000)
        if let secret, secret.utf8.count < 16 { throw ConfigError("--backend-secret must be at least 16 bytes, this one has \(secret.utf8.count)") }
        for key in meta where !Self.isMetaKey(key) {
            throw ConfigError("--backend-meta '\(key)' is not a META key (1–32 of a-z 0-9 - _)")
        }
        // Cookies go with every request a browser makes, from any site: without an origin check,
        // any page the user visits could open a socket as the user (cross-site WebSocket hijacking).
        if connectHook != nil, s.gateway.allowedOrigins.isEmpty {
            throw ConfigError("--backend-connect-hook authenticates by cookie: give the pages' origins with --allowed-origin")
        }
        for (name, hook) in [("disconnect", disconnectHook), ("connect", connectHook)] {
            if let hook, !hook.hasPrefix("/") { throw ConfigError("--backend-\(name)-hook must be a path starting with '/', got '\(hook)'") }
        }
        s.backend = b
    }

    /// `URL` or `/prefix=URL`.
    static func target(_ text: String) throws -> BackendConfiguration.Target {
        var prefix = "/"
        var address = text
        if text.hasPrefix("/"), let eq = text.firstIndex(of: "=") {
            prefix = String(text[..<eq])
            address = String(text[text.index(after: eq)...])
        }
        guard let url = URL(string: address) else { throw ConfigError("--backend '\(text)': not a URL") }
        do {
            return try BackendConfiguration.Target(prefix: prefix, url: url)
        } catch {
            throw ConfigError("--backend '\(text)': \(error)")
        }
    }

    static func isMetaKey(_ key: String) -> Bool {
        (1...32).contains(key.utf8.count)
            && key.utf8.allSatisfy { b in
                (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "-")
                    || b == UInt8(ascii: "_")
            }
    }
}
