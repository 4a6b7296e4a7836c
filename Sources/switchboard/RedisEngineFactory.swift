import ArgumentParser
import Logging
import Switchboard
import SwitchboardRedis

/// Builds the cluster engine for `--redis`, with the same history and session limits.
enum RedisEngineFactory {
    /// The engine's settings, validated without connecting (`config check` uses this too).
    static func configuration(url: String, cluster: Bool, history: MemoryEngine.Configuration) throws -> RedisEngineConfiguration {
        do {
            return cluster
                ? try RedisEngineConfiguration(
                    clusterURL: url, historySize: history.historySize, historyAge: history.historyAge,
                    sessionTTL: history.sessionTTL, idempotencyTTL: history.idempotencyTTL)
                : try RedisEngineConfiguration(
                    url: url, historySize: history.historySize, historyAge: history.historyAge,
                    sessionTTL: history.sessionTTL, idempotencyTTL: history.idempotencyTTL)
        } catch {
            throw ConfigError("--redis \(url): \(error)")
        }
    }
}
