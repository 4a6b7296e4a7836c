// Identity, claims and AuthError live in SwitchboardAuth (no NIO, no jwt-kit), so the
// claims path can be fuzzed on its own; users of Switchboard see them as before.
@_exported import SwitchboardAuth
