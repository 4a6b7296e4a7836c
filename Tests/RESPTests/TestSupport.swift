import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import RedisTestSupport

@testable import RESP

extension ByteBuffer {
    var text: String { String(buffer: self) }
}

/// Self-signed certificate for localhost/127.0.0.1 generated with the openssl CLI.
func makeTestCertificate() throws -> (dir: String, cert: String, key: String) {
    let dir = NSTemporaryDirectory() + "resp-tls-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
    p.arguments = [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", dir + "/key.pem", "-out", dir + "/cert.pem",
        "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw RESPError.unexpectedReply("openssl failed") }
    return (dir, dir + "/cert.pem", dir + "/key.pem")
}
