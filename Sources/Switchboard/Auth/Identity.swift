import Foundation
import HTTPTypes
import JWTKit

/// Who is on the other end, as proven by a verified token.
public struct Identity: Sendable, Equatable {
    public var user: String
    public var roles: Set<String>
    public var expiresAt: Date

    public init(user: String, roles: Set<String> = [], expiresAt: Date) {
        self.user = user
        self.roles = roles
        self.expiresAt = expiresAt
    }
}

/// Claims Switchboard reads from a JWT: `sub` (the user), `exp` (required) and optional `roles`.
public struct SwitchboardClaims: JWTPayload, Equatable {
    public var sub: SubjectClaim
    public var exp: ExpirationClaim
    public var roles: [String]?

    public init(sub: String, exp: Date, roles: [String]? = nil) {
        self.sub = SubjectClaim(value: sub)
        self.exp = ExpirationClaim(value: exp)
        self.roles = roles
    }

    public func verify(using algorithm: some JWTAlgorithm) async throws {
        try self.exp.verifyNotExpired()
    }
}

/// Why a token was refused; the message goes into the 401 body.
public struct AuthError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Verifies tokens against a key collection (HS256, RS256, ES256, EdDSA; `kid` aware).
/// Unsigned (`alg: none`) tokens are always refused: no key accepts them.
public struct TokenVerifier: Sendable {
    public let keys: JWTKeyCollection
    /// The key ids in `keys`. A token naming another kid is refused, instead of being tried
    /// against the collection's default key as jwt-kit would. Nil: any kid (or none).
    public let kids: Set<String>?

    public init(keys: JWTKeyCollection, kids: Set<String>? = nil) {
        self.keys = keys
        self.kids = kids
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
        }
        if !others.isEmpty {
            let rest = try JSONSerialization.data(withJSONObject: ["keys": others])
            try await keys.add(jwksJSON: String(decoding: rest, as: UTF8.self))
        }
        return TokenVerifier(keys: keys, kids: kids)
    }

    public func verify(_ token: String) async throws(AuthError) -> Identity {
        if let kids = self.kids, let kid = Self.kid(of: token), !kids.contains(kid) {
            throw AuthError("unknown key id (kid)")
        }
        do {
            let claims = try await self.keys.verify(token, as: SwitchboardClaims.self)
            guard !claims.sub.value.isEmpty else { throw AuthError("token has an empty subject") }
            return Identity(user: claims.sub.value, roles: Set(claims.roles ?? []), expiresAt: claims.exp.value)
        } catch let error as AuthError {
            throw error
        } catch let error as JWTError {
            throw AuthError(Self.reason(error))
        } catch {
            throw AuthError("invalid token")
        }
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

/// Where a token may travel: `Authorization: Bearer`, a `bearer.<token>` entry in
/// `Sec-WebSocket-Protocol` (what browsers can set), the `sb_token` cookie, or `?access_token=`.
enum TokenExtractor {
    static let subprotocolPrefix = "bearer."

    static func token(from request: HTTPRequest) -> String? {
        if let auth = request.headerFields[.authorization] {
            let parts = auth.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" { return String(parts[1]) }
        }
        for value in request.headerFields[values: .secWebSocketProtocol] {
            for proto in value.split(separator: ",") {
                let p = proto.trimmingCharacters(in: .whitespaces)
                if p.hasPrefix(subprotocolPrefix) { return String(p.dropFirst(subprotocolPrefix.count)) }
            }
        }
        for value in request.headerFields[values: .cookie] {
            for cookie in value.split(separator: ";") {
                let kv = cookie.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
                if kv.count == 2, kv[0] == "sb_token" { return String(kv[1]) }
            }
        }
        if let path = request.path, let q = path.firstIndex(of: "?") {
            return QueryString.value(of: "access_token", in: path[path.index(after: q)...])
        }
        return nil
    }
}

enum QueryString {
    static func value(of name: String, in query: Substring) -> String? {
        for pair in query.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0] == name {
                return String(kv[1]).removingPercentEncoding ?? String(kv[1])
            }
        }
        return nil
    }
}

extension Data {
    /// Decodes base64url (RFC 4648 §5), with or without padding.
    init?(base64URL string: String) {
        var base64 = string.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        self.init(base64Encoded: base64)
    }
}
