import Hummingbird
import NIOCore
import Prometheus

/// `GET /metrics`: the Prometheus text exposition of `registry`. Engine gauges (availability,
/// round trip) are read at scrape time, so they are never older than the scrape.
public enum MetricsRoutes {
    public static func add<Context: SwitchboardRequestContextProtocol>(to router: Router<Context>, registry: PrometheusCollectorRegistry) {
        router.get("/metrics") { _, context -> Response in
            let core = context.switchboard.core
            let health = await core.engine.health()
            core.metrics.engineAvailable.record(health.available ? 1 : 0)
            if let rtt = health.roundTrip {
                core.metrics.engineRoundTrip.record(Double(rtt.components.seconds) + Double(rtt.components.attoseconds) / 1e18)
            }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(16 * 1024)
            registry.emit(into: &bytes)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: bytes))
            )
        }
    }
}
