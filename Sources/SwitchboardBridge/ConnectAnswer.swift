import Foundation
import HTTPTypes
import NIOCore
import Switchboard
import SwitchboardWire

/// The connect hook's answer: `2xx {"user": "ann", "roles": ["admin"], "expiresAt": 1767225600,
/// "streams": ["/rooms/lobby"]}` (every key optional; no user is an anonymous connection), or
/// any other status, which the upgrade answers with. An answer that is not that is a 502: a
/// backend's mistake must not let a connection in as somebody.
enum ConnectAnswer {
    static let maxStreams = 100

    static func decision(_ answer: BackendResponse) -> BackendConnectDecision {
        guard (200..<300).contains(answer.status.code) else {
            return .refuse(answer.status, Self.reason(answer.body) ?? "refused by the backend")
        }
        do {
            return try Self.accept(answer.body)
        } catch {
            return .refuse(.badGateway, "the backend's connect answer is not valid: \(error.reason)")
        }
    }

    struct Invalid: Error { let reason: String }

    private static func accept(_ body: ByteBuffer) throws(Invalid) -> BackendConnectDecision {
        let object: [String: Any]
        if body.readableBytes == 0 {
            object = [:]
        } else {
            guard let parsed = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] else {
                throw Invalid(reason: "not a JSON object")
            }
            object = parsed
        }
        var user: String?
        if let value = object["user"], !(value is NSNull) {
            guard let text = value as? String, !text.isEmpty, text.utf8.count <= 256 else {
                throw Invalid(reason: "user must be a non-empty string of at most 256 bytes")
            }
            user = text
        }
        var roles: [String] = []
        if let value = object["roles"] {
            guard let list = value as? [String], list.count <= 64, list.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 64 }) else {
                throw Invalid(reason: "roles must be at most 64 non-empty strings")
            }
            roles = list
        }
        var expiresAt: Date?
        if let value = object["expiresAt"] {
            guard let number = value as? NSNumber, !(value is Bool), number.doubleValue.isFinite, number.doubleValue > Date().timeIntervalSince1970
            else {
                throw Invalid(reason: "expiresAt must be Unix seconds in the future")
            }
            expiresAt = Date(timeIntervalSince1970: min(number.doubleValue, 253_402_300_799))
        }
        var streams: [String] = []
        if let value = object["streams"] {
            guard let list = value as? [String], list.count <= Self.maxStreams else {
                throw Invalid(reason: "streams must be an array of at most \(Self.maxStreams) stream paths")
            }
            for stream in list {
                guard stream.hasPrefix("/"), stream.utf8.count <= 1024, !BuiltinStream.isBuiltin(stream), !stream.contains("|"),
                    !stream.utf8.contains(where: { $0 < 0x21 || $0 == 0x7F })
                else { throw Invalid(reason: "'\(stream)' is not a stream the backend may subscribe a connection to") }
                streams.append(stream)
            }
        }
        return .accept(user: user, roles: roles, expiresAt: expiresAt, streams: streams)
    }

    private static func reason(_ body: ByteBuffer) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] else { return nil }
        return (object["reason"] as? String) ?? (object["error"] as? String)
    }
}
