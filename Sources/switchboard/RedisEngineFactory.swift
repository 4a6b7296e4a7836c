import ArgumentParser
import Logging
import Switchboard
import SwitchboardRedis

/// Builds the cluster engine for `--redis`, with the same history and session limits.
enum RedisEngineFactory {
    static func make(url: String, cluster: Bool, history: MemoryEngine.Configuration, logger: Logger) throws -> any SwitchboardEngine {
        do {
            let configuration = cluster
                ? try RedisEngineConfiguration(
                    clusterURL: url, historySize: history.historySize, historyAge: history.historyAge,
                    sessionTTL: history.sessionTTL, idempotencyTTL: history.idempotencyTTL)
                : try RedisEngineConfiguration(
                    url: url, historySize: history.historySize, historyAge: history.historyAge,
                    sessionTTL: history.sessionTTL, idempotencyTTL: history.idempotencyTTL)
            return RedisEngine(configuration: configuration, logger: logger)
        } catch {
            throw ConfigError("--redis \(url): \(error)")
        }
    }
}
