import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// `/health/live` (the process runs), `/health/ready` (it should get traffic) and `/health`
/// (a JSON report for people and monitors).
public enum HealthRoutes {
    struct HealthReport: Encodable {
        struct Engine: Encodable {
            let available: Bool
            let catchingUp: Bool
            let detail: String
            let roundTripMillis: Double?
        }
        let status: String
        let node: String
        let connections: Int
        let users: Int
        let engine: Engine
    }

    public static func add<Context: SwitchboardRequestContextProtocol>(to router: Router<Context>) {
        router.get("/health/live") { _, _ in ["status": "ok"] }
        // Not ready while draining, while the engine is unavailable (Redis away) and while it
        // catches subscriptions up after an outage.
        router.get("/health/ready") { _, context -> Response in
            let core = context.switchboard.core
            let health = await core.engine.health()
            let status = core.isDraining ? "draining" : !health.available ? "engine_unavailable" : health.catchingUp ? "catching_up" : "ready"
            return Response(
                status: status == "ready" ? .ok : .serviceUnavailable,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: JSONBody.encode(["status": status, "engine": health.detail]))
            )
        }
        router.get("/health") { _, context -> Response in
            let core = context.switchboard.core
            let health = await core.engine.health()
            let connections = core.hub.allConnections()
            let report = HealthReport(
                status: core.isDraining ? "draining" : health.isReady ? "ready" : "not_ready", node: core.nodeID,
                connections: connections.count, users: Set(connections.compactMap(\.user)).count,
                engine: .init(
                    available: health.available, catchingUp: health.catchingUp, detail: health.detail,
                    roundTripMillis: health.roundTrip.map { Double($0.components.seconds) * 1000 + Double($0.components.attoseconds) / 1e15 })
            )
            return Response(
                status: report.status == "ready" ? .ok : .serviceUnavailable,
                headers: [.contentType: "application/json"], body: .init(byteBuffer: JSONBody.encode(report))
            )
        }
    }
}
