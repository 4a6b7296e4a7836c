import Foundation
import Switchboard

/// Where the application's HTTP backends are and how the gateway talks to them
/// (`switchboard serve --backend`, or `backends` in the config file).
public struct BackendConfiguration: Sendable {
    /// A backend and the request paths it answers.
    public struct Target: Sendable, Equatable {
        /// Requests whose path starts with this (`/` for all) go to `url`; the longest prefix wins.
        public var prefix: String
        /// `http://host:port` (a path is a base the request path is appended to).
        public var url: URL

        public init(prefix: String = "/", url: URL) throws(BackendConfigurationError) {
            guard prefix.hasPrefix("/") else { throw BackendConfigurationError("backend prefix '\(prefix)' must start with /") }
            guard let scheme = url.scheme, scheme == "http" || scheme == "https", url.host != nil else {
                throw BackendConfigurationError("backend URL '\(url.absoluteString)' must be http:// or https:// with a host")
            }
            guard url.query == nil, url.fragment == nil else {
                throw BackendConfigurationError("backend URL '\(url.absoluteString)' may not have a query or fragment")
            }
            self.prefix = prefix
            self.url = url
            var base = url.absoluteString
            if base.hasSuffix("/") { base.removeLast() }
            self.base = base
        }

        /// `url` without a trailing `/`: a request's target (which starts with `/`) is appended.
        let base: String
    }

    public var targets: [Target]
    /// The key of the HMAC-SHA256 over the identity headers (`Switchboard-Signature`); nil sends
    /// no signature (the backend must then be reachable from the gateway only).
    public var secret: String?
    /// Seconds a backend has to answer (past it, 504).
    public var timeout: Double = 10
    /// Seconds to open a connection to a backend (past it, 502).
    public var connectTimeout: Double = 2
    /// Requests in flight to the backends from this node; more get 503 with Retry-After.
    public var maxInFlight: Int = 512
    /// Requests in flight to the backends from one connection; more get 429.
    public var maxInFlightPerConnection: Int = 16
    /// Largest backend response body, in bytes; larger ones are 502.
    public var maxResponseBytes: Int = 64 * 1024
    /// Frame META keys that travel to the backend, as `Switchboard-Meta-<key>` headers.
    public var metaKeys: Set<String> = []
    /// Kept-alive connections per backend.
    public var poolSize: Int = 64
    /// The subscribe hook (rules with `subscribe: backend`), the connect hook (upgrades without a
    /// token; nil: none) and the disconnect notification (nil: none), as paths on the backends.
    public var subscribeHook: String = "/switchboard/subscribe"
    public var connectHook: String?
    public var disconnectHook: String?

    public init(targets: [Target], secret: String? = nil) {
        self.targets = targets
        self.secret = secret
    }

    /// The hook paths: a client's request frame is never forwarded to one.
    var hookPaths: Set<String> { Set([self.subscribeHook, self.connectHook, self.disconnectHook].compactMap { $0 }) }

    /// The target for `path`: the longest matching prefix (at a segment boundary).
    func target(for path: String) -> Target? {
        var best: Target?
        for target in self.targets where Self.path(path, isUnder: target.prefix) {
            if best == nil || target.prefix.count > best!.prefix.count { best = target }
        }
        return best
    }

    static func path(_ path: String, isUnder prefix: String) -> Bool {
        if prefix == "/" { return true }
        let trimmed = prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix
        return path == trimmed || path.hasPrefix(trimmed + "/") || path.hasPrefix(trimmed + "?")
    }
}

public struct BackendConfigurationError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
