import Crypto
import CryptoExtras
import Foundation
import JWTKit
import Switchboard
import SwitchboardTesting
import Testing

/// Every algorithm a node accepts, each key chosen by its `kid`, from one JSON Web Key Set.
@Suite("Token verification", .timeLimit(.minutes(1)))
struct TokenVerifierTests {
    /// Private keys (to sign with) and the public JWKS a node is configured with.
    struct Keys {
        let signers: JWTKeyCollection
        let jwks: String
    }

    static let hmacSecret = "a-shared-hs256-secret-of-32-bytes!!"

    static func makeKeys() async throws -> Keys {
        let signers = JWTKeyCollection()
        let rsa = try Insecure.RSA.PrivateKey(backing: _RSA.Signing.PrivateKey(keySize: .bits2048))
        await signers.add(rsa: rsa, digestAlgorithm: .sha256, kid: "rs")
        let ec = ES256PrivateKey()
        await signers.add(ecdsa: ec, kid: "es")
        let ed = try EdDSA.PrivateKey(curve: .ed25519)
        await signers.add(eddsa: ed, kid: "ed")
        await signers.add(hmac: HMACKey(from: hmacSecret), digestAlgorithm: .sha256, kid: "hs")

        let (n, e) = try rsa.publicKey.getKeyPrimitives()
        let (x, y) = try #require(ec.publicKey.parameters)
        let keys: [[String: String]] = [
            ["kty": "RSA", "kid": "rs", "alg": "RS256", "n": n.base64URL, "e": e.base64URL],
            ["kty": "EC", "kid": "es", "alg": "ES256", "crv": "P-256", "x": x, "y": y],
            ["kty": "OKP", "kid": "ed", "alg": "EdDSA", "crv": "Ed25519", "x": ed.publicKey.rawRepresentation.base64URL],
            ["kty": "oct", "kid": "hs", "alg": "HS256", "k": Data(hmacSecret.utf8).base64URL],
        ]
        let json = try JSONSerialization.data(withJSONObject: ["keys": keys], options: [.sortedKeys])
        return Keys(signers: signers, jwks: String(decoding: json, as: UTF8.self))
    }

    static func sign(_ keys: Keys, kid: String, user: String = "ann", expiresIn: TimeInterval = 600) async throws -> String {
        try await keys.signers.sign(
            SwitchboardClaims(sub: user, exp: Date(timeIntervalSinceNow: expiresIn), roles: ["reader"]),
            kid: JWKIdentifier(string: kid)
        )
    }

    @Test func everyAlgorithmVerifiesByKid() async throws {
        let keys = try await Self.makeKeys()
        let verifier = try await TokenVerifier.jwks(json: keys.jwks)
        for kid in ["rs", "es", "ed", "hs"] {
            let identity = try await verifier.verify(try await Self.sign(keys, kid: kid, user: "user-\(kid)"))
            #expect(identity.user == "user-\(kid)", "kid \(kid)")
            #expect(identity.roles == ["reader"])
        }
    }

    @Test func refusesExpiredForeignAndUnsignedTokens() async throws {
        let keys = try await Self.makeKeys()
        let verifier = try await TokenVerifier.jwks(json: keys.jwks)
        await #expect(throws: AuthError.self) { try await verifier.verify(try await Self.sign(keys, kid: "es", expiresIn: -30)) }

        // Signed by a key the node does not know, under a kid it does know.
        let stranger = JWTKeyCollection()
        await stranger.add(ecdsa: ES256PrivateKey(), kid: "es")
        let forged = try await stranger.sign(SwitchboardClaims(sub: "ann", exp: Date(timeIntervalSinceNow: 600)), kid: "es")
        await #expect(throws: AuthError.self) { try await verifier.verify(forged) }

        // A kid nobody configured.
        let unknown = JWTKeyCollection()
        await unknown.add(eddsa: try EdDSA.PrivateKey(curve: .ed25519), kid: "other")
        let unknownKid = try await unknown.sign(SwitchboardClaims(sub: "ann", exp: Date(timeIntervalSinceNow: 600)), kid: "other")
        do {
            _ = try await verifier.verify(unknownKid)
            Issue.record("a token with an unknown kid was accepted")
        } catch {
            #expect(error.description.contains("kid"))
        }

        // alg:none, with and without a kid the node knows.
        for header in [#"{"alg":"none","typ":"JWT"}"#, #"{"alg":"none","typ":"JWT","kid":"hs"}"#] {
            let payload = #"{"sub":"ann","exp":9999999999}"#
            let token = "\(Data(header.utf8).base64URL).\(Data(payload.utf8).base64URL)."
            await #expect(throws: AuthError.self) { try await verifier.verify(token) }
        }

        // An RS256 token re-labelled HS256 and signed with the public key as the secret (the
        // classic algorithm confusion): the kid pins the key, and the key pins the algorithm.
        let confused = JWTKeyCollection()
        await confused.add(hmac: HMACKey(from: keys.jwks), digestAlgorithm: .sha256, kid: "rs")
        let confusedToken = try await confused.sign(SwitchboardClaims(sub: "ann", exp: Date(timeIntervalSinceNow: 600)), kid: "rs")
        await #expect(throws: AuthError.self) { try await verifier.verify(confusedToken) }
    }

    @Test func badKeysAreRefusedAtConfiguration() async throws {
        await #expect(throws: AuthError.self) { _ = try await TokenVerifier.hs256(secret: "too-short") }
        let short = Data("short".utf8).base64URL
        for jwks in [
            #"{"nokeys":[]}"#,
            #"{"keys":[{"kty":"oct","k":"\#(Data(Self.hmacSecret.utf8).base64URL)"}]}"#,  // no kid
            #"{"keys":[{"kty":"oct","kid":"a","k":"\#(short)"}]}"#,  // secret under 32 bytes
            #"{"keys":[{"kty":"oct","kid":"a","alg":"HS1","k":"\#(Data(Self.hmacSecret.utf8).base64URL)"}]}"#,
        ] {
            await #expect(throws: AuthError.self, "\(jwks)") { _ = try await TokenVerifier.jwks(json: jwks) }
        }
    }

    @Test func upgradeTakesTheTokenFromACookie() async throws {
        try await TestApp.withNode { node in
            let token = try await node.token(user: "ann")
            let socket = try await RawSocket.connect(port: node.port)
            let reply = try await socket.upgrade(headers: ["Cookie": "theme=dark; sb_token=\(token)"])
            #expect(reply.status == 101)
            let hello = Parsed(try await socket.nextText())
            #expect(hello.head == "HELLO200")
            #expect(hello.body.contains(#""user":"ann""#))
            await socket.close()

            let bad = try await RawSocket.connect(port: node.port)
            #expect(try await bad.upgrade(headers: ["Cookie": "sb_token=not-a-token"]).status == 401)
            await bad.close()
        }
    }
}
