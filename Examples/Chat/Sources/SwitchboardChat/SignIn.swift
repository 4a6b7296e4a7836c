import Foundation
import Hummingbird
import JWTKit
import Switchboard

/// Sign-in for the example: a name is all it takes (no password), and the answer is an
/// HS256 JWT with `sub` = the name, which the page presents at the WebSocket upgrade.
/// A real application would check a password or an identity provider here.
struct SignIn: Sendable {
    let keys: JWTKeyCollection
    let verifier: TokenVerifier
    /// Lifetime of an issued token.
    let lifetime: TimeInterval = 12 * 3600

    init(secret: String) async throws {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        self.keys = keys
        self.verifier = try await TokenVerifier.hs256(secret: secret)
    }

    struct Issued: ResponseCodable {
        let token: String
        let user: String
        /// Unix seconds.
        let expiresAt: Int
    }

    func issue(user: String) async throws -> Issued {
        let expires = Date(timeIntervalSinceNow: self.lifetime)
        let token = try await self.keys.sign(SwitchboardClaims(sub: user, exp: expires))
        return Issued(token: token, user: user, expiresAt: Int(expires.timeIntervalSince1970))
    }
}
