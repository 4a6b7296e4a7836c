import Foundation
import SwitchboardAuth

/// Any bytes as a token's payload (what jwt-kit hands over once the signature checked out):
/// decoding either fails or gives claims whose checks and derived numbers (the AUTH reply's
/// `expiresAt`, the expiry timer) never trap, stay in range, and survive a re-encoding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClaims(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let data = Data(bytes: start, count: count)
    guard let claims = try? JSONDecoder().decode(SwitchboardClaims.self, from: data) else { return 0 }
    for now in [Date(timeIntervalSince1970: 0), Date(), Date(timeIntervalSince1970: 1e12), Date.distantFuture, Date.distantPast] {
        guard let identity = try? claims.identity(at: now) else { continue }
        precondition(!identity.user.isEmpty, "an identity without a user")
        precondition(identity.expiresAt > now, "an expired token was accepted")
        precondition((0...Int64(SwitchboardClaims.latestSeconds)).contains(identity.expiresAtSeconds), "expiresAt out of range")
        // What the expiry timer is armed with (clamped to a TimeAmount by the gateway).
        let left = identity.expiresAt.timeIntervalSince(now)
        precondition(left.isFinite && left > 0, "expiry timer out of range")
    }
    let again: SwitchboardClaims
    do {
        again = try JSONDecoder().decode(SwitchboardClaims.self, from: JSONEncoder().encode(claims))
    } catch {
        fatalError("accepted claims do not re-decode: \(error)")
    }
    precondition(again.sub == claims.sub && again.roles == claims.roles, "re-encoding changed the claims")
    precondition(abs(again.exp.timeIntervalSince(claims.exp)) < 1, "re-encoding moved exp by a second or more")
    return 0
}
