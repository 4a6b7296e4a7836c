import Foundation

/// The `switchboard` binary `swift build` put next to the tests (override with
/// SWITCHBOARD_BINARY), for tests that run it as a process.
public let switchboardBinary: String = {
    if let path = ProcessInfo.processInfo.environment["SWITCHBOARD_BINARY"] { return path }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    for candidate in [
        ".build/debug/switchboard", ".build/x86_64-unknown-linux-gnu/debug/switchboard", ".build/aarch64-unknown-linux-gnu/debug/switchboard",
    ] {
        let path = root.appendingPathComponent(candidate).path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return root.appendingPathComponent(".build/debug/switchboard").path
}()
