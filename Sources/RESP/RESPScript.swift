import Crypto

/// A Lua script identified by its SHA1; `run` uses EVALSHA and loads it on NOSCRIPT.
public struct RESPScript: Sendable, Hashable {
    public let source: String
    /// Lowercase hex, as Redis names scripts.
    public let sha1: String

    public init(source: String) {
        self.source = source
        let hex = Array("0123456789abcdef".utf8)
        let digest = Insecure.SHA1.hash(data: Array(source.utf8))
        self.sha1 = String(decoding: digest.flatMap { [hex[Int($0 >> 4)], hex[Int($0 & 0x0F)]] }, as: UTF8.self)
    }
}

extension RESPCommandExecutor {
    /// EVALSHA; on `NOSCRIPT` does `SCRIPT LOAD` and retries once.
    public func run(
        _ script: RESPScript, keys: [String] = [], args: [RESPArgument] = [],
        timeout: Duration? = nil
    ) async throws -> RESPValue {
        do {
            return try await evalsha(script.sha1, keys: keys, args: args, timeout: timeout)
        } catch RESPError.server(let code, _) where code == "NOSCRIPT" {
            let loaded = try await scriptLoad(script.source, keys: keys, timeout: timeout)
            if let sha = loaded.string, sha.lowercased() != script.sha1 {
                throw RESPError.unexpectedReply("SCRIPT LOAD returned sha \(sha), expected \(script.sha1)")
            }
            return try await evalsha(script.sha1, keys: keys, args: args, timeout: timeout)
        }
    }
}
