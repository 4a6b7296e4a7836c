// swift-tools-version:6.0
// The README's "Embed it" example as a package of its own: what an application that embeds
// Switchboard writes. CI builds it and runs its test (scripts/test.sh).
import PackageDescription

let package = Package(
    name: "embed-example",
    platforms: [.macOS(.v14)],
    dependencies: [
        // In your package: .package(url: "https://github.com/<you>/switchboard.git", branch: "main")
        .package(name: "switchboard", path: "../.."),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
    ],
    targets: [
        // The routes: the same handlers answer HTTP requests and WebSocket frames.
        .target(
            name: "Rooms",
            dependencies: [
                .product(name: "Switchboard", package: "switchboard"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
        // The node: `swift run EmbedExample` (JWT_SECRET from the environment).
        .executableTarget(
            name: "EmbedExample",
            dependencies: [
                "Rooms",
                .product(name: "Switchboard", package: "switchboard"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "RoomsTests",
            dependencies: [
                "Rooms",
                .product(name: "Switchboard", package: "switchboard"),
                .product(name: "SwitchboardTesting", package: "switchboard"),
            ]
        ),
    ]
)
