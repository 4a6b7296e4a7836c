import RESP
import Switchboard

/// Rate buckets shared by every node (the `RateBuckets` role): one script per token taken.
extension RedisEngine {
    public func takeToken(_ key: String, rate: Double, burst: Double) async throws -> Bool {
        // The hash tag keeps a bucket in one slot of a Redis Cluster.
        let reply = try await self.run(
            RedisScripts.takeToken, keys: ["\(self.configuration.keyPrefix):rate:{\(key)}"], args: [.double(rate), .double(burst)])
        return reply.int == 1
    }
}
