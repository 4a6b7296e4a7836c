import Foundation
import Logging
import Rooms
import ServiceLifecycle
import Switchboard

@main
struct EmbedExample {
    static func main() async throws {
        let logger = Logger(label: "embed-example")
        // Tokens signed with this secret are accepted: `switchboard token --jwt-secret "$JWT_SECRET" --sub ann`.
        // Its UTF-8 bytes are the HMAC key; at least 32 of them.
        guard let secret = ProcessInfo.processInfo.environment["JWT_SECRET"] else {
            logger.critical("set JWT_SECRET (at least 32 bytes)")
            return
        }
        let verifier = try await TokenVerifier.hs256(secret: secret)
        let gateway = Gateway(router: roomsRouter(verifier: verifier), verifier: verifier, logger: logger)
        // SIGTERM and SIGINT drain the node: clients are closed with 4503 and reconnect elsewhere.
        let services = ServiceGroup(
            configuration: .init(services: [gateway], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await services.run()
    }
}
