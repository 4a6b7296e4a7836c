import ArgumentParser
import Logging
import Switchboard

/// Builds the cluster engine for `--redis`.
enum RedisEngineFactory {
    static func make(url: String, history: MemoryEngine.Configuration, logger: Logger) throws -> any SwitchboardEngine {
        throw ValidationError("--redis: this build has no Redis engine yet (issue 4)")
    }
}
