import Foundation
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

@testable import SwitchboardProxy

/// Runs an in-process proxy in front of `upstream` on a free port for `body`, then shuts it
/// down. Reconnect delays are short so the tests are quick.
func withProxy(
    upstream: TestUpstream, _ configure: (inout ProxyConfiguration) -> Void = { _ in },
    _ body: (ProxyServer, Int) async throws -> Void
) async throws {
    var configuration = ProxyConfiguration(upstream: try UpstreamURL(upstream.url))
    configuration.port = 0
    configuration.backoffInitial = 0.05
    configuration.backoffMax = 0.2
    configuration.pingInterval = 2
    configuration.closeTimeout = 1
    configure(&configuration)
    var logger = Logger(label: "proxy-test")
    logger.logLevel = ProcessInfo.processInfo.environment["PROXY_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
    let proxy = try ProxyServer(configuration: configuration, logger: logger)
    let services = ServiceGroup(services: [proxy], gracefulShutdownSignals: [], logger: logger)
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await services.run() }
        let port = await proxy.waitUntilListening()
        do {
            try await body(proxy, port)
        } catch {
            await services.triggerGracefulShutdown()
            throw error
        }
        await services.triggerGracefulShutdown()
        try await group.waitForAll()
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
func waitFor(_ what: String, timeout: Duration = .seconds(10), _ condition: () async -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    if await condition() { return }
    throw TimedOut(what: what)
}

struct TimedOut: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(self.what)" }
}

/// A value the test's upstream handlers and the test share.
final class Shared<Value: Sendable>: Sendable {
    private let box: NIOLockedValueBox<Value>
    init(_ value: Value) { self.box = NIOLockedValueBox(value) }
    var value: Value { self.box.withLockedValue { $0 } }
    func update<T>(_ body: (inout Value) -> T) -> T { self.box.withLockedValue { body(&$0) } }
}
