import ArgumentParser
import Foundation
import JWTKit
import Switchboard

/// `switchboard token --sub ann [--roles admin] [--ttl 1h]`: prints a token a node started with
/// the same settings accepts. It reads the secret exactly as `serve` does (`--jwt-secret`,
/// `SWITCHBOARD_JWT_SECRET`, or `"jwt-secret"` in `--config`), or an HS256 (`oct`) key of the
/// `--jwt-jwks` set. For trying a node and for tests; in production your identity provider or
/// backend issues tokens.
struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a signed token (HS256) for a node started with the same --jwt-secret or --jwt-jwks.",
        discussion: """
            The secret is used as given: its UTF-8 bytes are the HMAC key (it is not base64-decoded), \
            and it must be at least 32 bytes long. Example: switchboard token --jwt-secret "$SECRET" --sub ann --roles admin --ttl 1h
            """
    )

    @Option(help: "The user id (the token's `sub`).") var sub: String
    @Option(help: "Roles, comma-separated (the token's `roles`).") var roles: String?
    @Option(help: "How long the token is valid: seconds, or a number with s, m, h or d (e.g. 90, 15m, 1h, 7d).") var ttl = "1h"
    @Option(help: "JSON configuration file, as for serve (env SWITCHBOARD_CONFIG).") var config: String?
    @Option(name: .customLong("jwt-secret"), help: "HS256 secret, as for serve (env SWITCHBOARD_JWT_SECRET).") var jwtSecret: String?
    @Option(
        name: .customLong("jwt-jwks"), help: "JSON Web Key Set file, as for serve (env SWITCHBOARD_JWT_JWKS); signs with its oct (HS256/384/512) key."
    ) var jwtJWKS: String?
    @Option(help: "With --jwt-jwks: the kid of the key to sign with (when the set has several oct keys).") var kid: String?

    func run() async throws {
        guard !self.sub.isEmpty else { throw ConfigError("--sub must not be empty") }
        let lifetime = try Self.seconds(self.ttl)
        var serveArguments: [String] = []
        if let config { serveArguments += ["--config", config] }
        if let jwtSecret { serveArguments += ["--jwt-secret", jwtSecret] }
        if let jwtJWKS { serveArguments += ["--jwt-jwks", jwtJWKS] }
        // Exactly serve's validation (secret length, key set), then its keys sign.
        let resolved = try await Serve.parse(serveArguments).resolve()
        guard let verifier = resolved.verifier else {
            throw ConfigError(
                "no secret: give --jwt-secret (or SWITCHBOARD_JWT_SECRET, or \"jwt-secret\" in --config), or --jwt-jwks with an oct key")
        }
        var signingKid: JWKIdentifier?
        if let path = resolved.settings.jwtJWKS {
            let candidates = verifier.secretKids.filter { self.kid == nil || $0 == self.kid }
            guard candidates.count == 1, let kid = candidates.first else {
                throw ConfigError(
                    candidates.isEmpty
                        ? "--jwt-jwks \(path): no oct (HS256) key\(self.kid.map { " with kid \($0)" } ?? ""); other keys are public: tokens for them are signed by whoever holds the private key"
                        : "--jwt-jwks \(path): several oct keys; choose one with --kid")
            }
            signingKid = JWKIdentifier(string: kid)
        }
        let roles = self.roles?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let claims = SwitchboardClaims(sub: self.sub, exp: Date(timeIntervalSinceNow: lifetime), roles: roles?.isEmpty == false ? roles : nil)
        print(try await verifier.keys.sign(claims, kid: signingKid))
    }

    /// `90`, `90s`, `15m`, `1h`, `7d` as seconds (more than 0, at most ten years).
    static func seconds(_ text: String) throws -> Double {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        var number = Substring(text)
        var unit = 1.0
        if let last = text.last, let factor = units[last] {
            unit = factor
            number = number.dropLast()
        }
        guard let value = Double(number), value.isFinite, value > 0, value * unit <= 10 * 365 * 86_400 else {
            throw ConfigError("--ttl must be a positive duration of at most ten years, like 90, 15m, 1h or 7d; got '\(text)'")
        }
        return value * unit
    }
}
