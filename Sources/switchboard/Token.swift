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
    @Option(name: .customLong("jwt-jwks"), help: "JSON Web Key Set file, as for serve (env SWITCHBOARD_JWT_JWKS); signs with its oct (HS256/384/512) key.") var jwtJWKS: String?
    @Option(help: "With --jwt-jwks: the kid of the key to sign with (when the set has several oct keys).") var kid: String?

    func run() async throws {
        guard !self.sub.isEmpty else { throw ConfigError("--sub must not be empty") }
        let lifetime = try Self.seconds(self.ttl)
        var serveArguments: [String] = []
        if let config { serveArguments += ["--config", config] }
        if let jwtSecret { serveArguments += ["--jwt-secret", jwtSecret] }
        if let jwtJWKS { serveArguments += ["--jwt-jwks", jwtJWKS] }
        let settings = try Serve.parse(serveArguments).settings()
        let keys = JWTKeyCollection()
        var signingKid: JWKIdentifier?
        if let path = settings.jwtJWKS {
            let (secret, digest, kid) = try Self.octKey(path: path, kid: self.kid)
            await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: digest, kid: JWKIdentifier(string: kid))
            signingKid = JWKIdentifier(string: kid)
        } else if let secret = settings.jwtSecret {
            guard secret.utf8.count >= 32 else { throw ConfigError("--jwt-secret: an HS256 secret must be at least 32 bytes long (this one has \(secret.utf8.count))") }
            await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        } else {
            throw ConfigError("no secret: give --jwt-secret (or SWITCHBOARD_JWT_SECRET, or \"jwt-secret\" in --config), or --jwt-jwks with an oct key")
        }
        let roles = self.roles?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let claims = SwitchboardClaims(sub: self.sub, exp: Date(timeIntervalSinceNow: lifetime), roles: roles?.isEmpty == false ? roles : nil)
        print(try await keys.sign(claims, kid: signingKid))
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

    /// The shared secret of an `oct` key of the set (by `kid`, or the only one).
    static func octKey(path: String, kid: String?) throws -> (Data, DigestAlgorithm, String) {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch { throw ConfigError("--jwt-jwks \(path): \(error.localizedDescription)") }
        guard let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let entries = root["keys"] as? [[String: Any]] else {
            throw ConfigError("--jwt-jwks \(path): not a JSON Web Key Set (an object with a \"keys\" array)")
        }
        let octs = entries.filter { $0["kty"] as? String == "oct" && (kid == nil || $0["kid"] as? String == kid) }
        guard octs.count == 1, let entry = octs.first, let id = entry["kid"] as? String, let k = entry["k"] as? String,
            let secret = Data(base64URL: k)
        else {
            throw ConfigError(octs.isEmpty
                ? "--jwt-jwks \(path): no oct (HS256) key\(kid.map { " with kid \($0)" } ?? ""); other keys are public: tokens for them are signed by whoever holds the private key"
                : "--jwt-jwks \(path): several oct keys; choose one with --kid")
        }
        let digest: DigestAlgorithm
        switch entry["alg"] as? String ?? "HS256" {
        case "HS384": digest = .sha384
        case "HS512": digest = .sha512
        default: digest = .sha256
        }
        return (secret, digest, id)
    }
}
