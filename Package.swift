// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "switchboard",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "SwitchboardWire", targets: ["SwitchboardWire"]),
        .library(name: "RESP", targets: ["RESP"]),
        .library(name: "SwitchboardAuth", targets: ["SwitchboardAuth"]),
        .library(name: "Switchboard", targets: ["Switchboard"]),
        .library(name: "SwitchboardRedis", targets: ["SwitchboardRedis"]),
        .library(name: "SwitchboardClient", targets: ["SwitchboardClient"]),
        .library(name: "SwitchboardTesting", targets: ["SwitchboardTesting"]),
        .library(name: "SwitchboardProxy", targets: ["SwitchboardProxy"]),
        .library(name: "SwitchboardBridge", targets: ["SwitchboardBridge"]),
        .executable(name: "switchboard", targets: ["switchboard"]),
        .executable(name: "switchboard-chat", targets: ["SwitchboardChat"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.29.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.24.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.1"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.7.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", "4.1.0"..<"6.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.0.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    ],
    targets: [
        // Frame codec: HEAD|TARGET|META|BODY over ByteBuffer, and what every server shares (the
        // connection limit). Depends on NIOCore and NIOConcurrencyHelpers only.
        .target(
            name: "SwitchboardWire",
            dependencies: [
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Redis client on SwiftNIO: RESP3, pipelining, pub/sub, scripts.
        .target(
            name: "RESP",
            dependencies: [
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Who the peer is: token claims and their checks (Foundation only: fuzzed on their own;
        // signatures are verified with jwt-kit in Switchboard).
        .target(name: "SwitchboardAuth"),
        // The gateway: connections, streams, sessions, router bridge, auth, engines.
        .target(
            name: "Switchboard",
            dependencies: [
                "SwitchboardWire", "SwitchboardAuth",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The cluster engine: streams, sessions and presence in Redis (or Redis Cluster).
        .target(
            name: "SwitchboardRedis",
            dependencies: [
                "Switchboard", "SwitchboardWire", "RESP",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The HTTP backend bridge (docs/backend.md): request frames no route answers, and stream
        // rules' backend decisions, asked of the application's HTTP backend over a pooled client.
        .target(
            name: "SwitchboardBridge",
            dependencies: [
                "Switchboard", "SwitchboardWire",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Swift client: reconnect with backoff, resume, dedupe, acks, requests.
        .target(
            name: "SwitchboardClient",
            dependencies: [
                "SwitchboardWire",
                .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The reconnecting proxy for existing WebSocket backends (docs/proxy.md). It uses only
        // NIO's WebSocket pieces, Hummingbird's server and the shared connection limit, not the
        // gateway or the engines.
        .target(
            name: "SwitchboardProxy",
            dependencies: [
                "SwitchboardWire",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // In-process node on a free port plus connected clients, for application tests.
        .target(
            name: "SwitchboardTesting",
            dependencies: [
                "Switchboard", "SwitchboardClient",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "switchboard",
            dependencies: [
                "Switchboard",
                "SwitchboardRedis",
                "RESP",
                "SwitchboardProxy",
                "SwitchboardBridge",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "JWTKit", package: "jwt-kit"),
            ]
        ),
        // The chat example (Examples/Chat): rooms, history, presence, typing, on the library.
        .executableTarget(
            name: "SwitchboardChat",
            dependencies: [
                "Switchboard", "SwitchboardRedis", "SwitchboardWire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Examples/Chat/Sources/SwitchboardChat"
        ),
        .testTarget(name: "SwitchboardWireTests", dependencies: ["SwitchboardWire", .product(name: "NIOCore", package: "swift-nio")]),
        // Real redis-server processes and Redis Clusters on loopback, for the test targets.
        .target(
            name: "RedisTestSupport",
            dependencies: [
                "RESP",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "Tests/RedisTestSupport"
        ),
        .testTarget(
            name: "RESPTests",
            dependencies: [
                "RESP", "RedisTestSupport",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // Real `switchboard serve` processes over real Redis (and Redis Cluster).
        .testTarget(
            name: "SwitchboardClusterTests",
            dependencies: [
                "RedisTestSupport", "RESP", "SwitchboardClient", "SwitchboardTesting", "Switchboard",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // The proxy against real upstream WebSocket servers on loopback (started and killed by the tests).
        .testTarget(
            name: "SwitchboardProxyTests",
            dependencies: [
                "SwitchboardProxy", "RedisTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "SwitchboardRedisTests",
            dependencies: [
                "SwitchboardRedis", "Switchboard", "RESP", "RedisTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "SwitchboardClientTests",
            dependencies: [
                "SwitchboardClient", "SwitchboardWire",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "SwitchboardTests",
            dependencies: [
                "Switchboard", "SwitchboardClient", "SwitchboardTesting", "SwitchboardBridge", "SwitchboardRedis", "RedisTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ]
        ),
    ]
)

// libFuzzer targets for the parsers of untrusted input (frames, RESP replies). Every module
// they use must be built with `--sanitize=fuzzer`, so they only exist when asked for:
//   SWITCHBOARD_FUZZ=1 swift build --scratch-path .build-fuzz --sanitize=fuzzer --product FuzzFrameParser
// scripts/fuzz.sh runs them (a short smoke run in the tests, a long run on demand).
if Context.environment["SWITCHBOARD_FUZZ"] != nil {
    package.targets += [
        .executableTarget(
            name: "FuzzFrameParser", dependencies: ["SwitchboardWire", .product(name: "NIOCore", package: "swift-nio")],
            path: "Fuzz/Sources/FuzzFrameParser"),
        .executableTarget(
            name: "FuzzRESPParser", dependencies: ["RESP", .product(name: "NIOCore", package: "swift-nio")], path: "Fuzz/Sources/FuzzRESPParser"),
        .executableTarget(name: "FuzzClaims", dependencies: ["SwitchboardAuth"], path: "Fuzz/Sources/FuzzClaims"),
    ]
    package.products += [
        .executable(name: "FuzzFrameParser", targets: ["FuzzFrameParser"]),
        .executable(name: "FuzzRESPParser", targets: ["FuzzRESPParser"]),
        .executable(name: "FuzzClaims", targets: ["FuzzClaims"]),
    ]
}
