import Foundation
import JWTKit

/// The claims are checked by `SwitchboardClaims.identity(at:)` (module SwitchboardAuth);
/// jwt-kit checks the signature.
extension SwitchboardClaims: JWTPayload {
    public func verify(using algorithm: some JWTAlgorithm) async throws {
        _ = try self.identity(at: Date())
    }
}

/// Verifies tokens against a key collection (HS256, RS256, ES256, EdDSA; `kid` aware).
/// Unsigned (`alg: none`) tokens are always refused: no key accepts them.
public struct TokenVerifier: Sendable {
    public let keys: JWTKeyCollection
    /// The key ids in `keys`. A token naming another kid is refused, instead of being tried
    /// against the collection's default key as jwt-kit would. Nil: any kid (or none).
    public let kids: Set<String>?
    /// The kids of the set's shared-secret (oct) keys, with which `keys` can also sign.
    public let secretKids: [String]

    public init(keys: JWTKeyCollection, kids: Set<String>? = nil, secretKids: [String] = []) {
        self.keys = keys
        self.kids = kids
        self.secretKids = secretKids
    }

    /// A verifier for one shared HS256 secret (at least 32 bytes, as RFC 7518 §3.2 requires).
    public static func hs256(secret: String, kid: String? = nil) async throws(AuthError) -> TokenVerifier {
        guard secret.utf8.count >= 32 else { throw AuthError("an HS256 secret must be at least 32 bytes long") }
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256, kid: kid.map { JWKIdentifier(string: $0) })
        return TokenVerifier(keys: keys, kids: kid.map { [$0] })
    }

    /// A verifier for a JSON Web Key Set (any mix of RSA, EC, OKP and oct keys with `kid`s).
    public static func jwks(json: String) async throws -> TokenVerifier {
        // jwt-kit reads RSA, EC and OKP keys from a JWKS but not shared secrets (`kty: oct`):
        // those are taken out here and added as HMAC keys under their kid.
        guard let root = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
            let entries = root["keys"] as? [[String: Any]]
        else { throw AuthError("a JSON Web Key Set is an object with a \"keys\" array") }
        let keys = JWTKeyCollection()
        var others: [[String: Any]] = []
        var kids = Set<String>()
        var secretKids: [String] = []
        for entry in entries {
            guard let kid = entry["kid"] as? String, !kid.isEmpty else { throw AuthError("every key of the set needs a \"kid\"") }
            guard kids.insert(kid).inserted else { throw AuthError("kid \(kid) appears twice in the key set") }
            guard entry["kty"] as? String == "oct" else {
                others.append(entry)
                continue
            }
            guard let k = entry["k"] as? String, let secret = Data(base64URL: k), secret.count >= 32 else {
                throw AuthError("an oct key needs \"k\": a base64url secret of at least 32 bytes")
            }
            let digest: DigestAlgorithm
            switch entry["alg"] as? String ?? "HS256" {
            case "HS256": digest = .sha256
            case "HS384": digest = .sha384
            case "HS512": digest = .sha512
            case let alg: throw AuthError("oct key with unsupported alg \(alg)")
            }
            await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: digest, kid: JWKIdentifier(string: kid))
            secretKids.append(kid)
        }
        if !others.isEmpty {
            let rest = try JSONSerialization.data(withJSONObject: ["keys": others])
            try await keys.add(jwksJSON: String(decoding: rest, as: UTF8.self))
        }
        return TokenVerifier(keys: keys, kids: kids, secretKids: secretKids)
    }

    public func verify(_ token: String) async throws(AuthError) -> Identity {
        if let kids = self.kids, let kid = Self.kid(of: token), !kids.contains(kid) {
            throw AuthError("unknown key id (kid)")
        }
        let claims: SwitchboardClaims
        do {
            claims = try await self.keys.verify(token, as: SwitchboardClaims.self)
        } catch let error as AuthError {
            throw error
        } catch let error as JWTError {
            throw AuthError(Self.reason(error))
        } catch {
            throw AuthError("invalid token")
        }
        return try claims.identity(at: Date())
    }

    /// The `kid` in a token's header, if it has one (the header is not trusted, only read).
    static func kid(of token: String) -> String? {
        guard let header = token.split(separator: ".", maxSplits: 1).first, let data = Data(base64URL: String(header)),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { return nil }
        return object["kid"] as? String
    }

    static func reason(_ error: JWTError) -> String {
        switch error.errorType {
        case .claimVerificationFailure: return "token expired or a claim is invalid"
        case .signatureVerificationFailed: return "bad token signature"
        case .unknownKID: return "unknown key id (kid)"
        case .malformedToken: return "malformed token"
        default: return "invalid token"
        }
    }
}
