import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// Server-side checks and clean-up of everything a user types. HTML is *not* escaped here:
/// the page renders every user-supplied string with `textContent`, never `innerHTML`, so
/// markup in a message is shown as text. What the server does is keep the data sane:
/// lengths, a room-name charset, no control or bidi-override characters.
enum Validation {
    static let maxMessageCharacters = 500
    static let maxMessageBytes = 2000
    static let maxNameCharacters = 24
    static let maxRoomCharacters = 32

    /// User names: 1–24 of `A-Z a-z 0-9 _ -` (they become stream path segments).
    static func userName(_ raw: String) throws(ChatError) -> String {
        let name = self.stripControls(raw).trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty else { throw ChatError(.badRequest, "invalid_name", "a name is required") }
        guard name.count <= self.maxNameCharacters else {
            throw ChatError(.badRequest, "invalid_name", "a name is at most \(self.maxNameCharacters) characters")
        }
        guard name.unicodeScalars.allSatisfy({ self.isNameScalar($0) }) else {
            throw ChatError(.badRequest, "invalid_name", "a name may hold only letters A-Z a-z, digits, '_' and '-'")
        }
        return name
    }

    /// Room names: lower-cased, 1–32 of `a-z 0-9 _ -`, starting with a letter or digit.
    static func roomName(_ raw: String) throws(ChatError) -> String {
        let room = self.stripControls(raw).trimmingCharacters(in: .whitespaces).lowercased()
        guard !room.isEmpty, room.count <= self.maxRoomCharacters else {
            throw ChatError(.badRequest, "invalid_room", "a room name is 1-\(self.maxRoomCharacters) characters")
        }
        let scalars = Array(room.unicodeScalars)
        guard self.isRoomStart(scalars[0]), scalars.allSatisfy({ self.isRoomStart($0) || $0 == "_" || $0 == "-" }) else {
            throw ChatError(.badRequest, "invalid_room", "a room name holds a-z, 0-9, '_' and '-' and starts with a letter or digit")
        }
        return room
    }

    /// Message text: control and bidi-override characters removed (tabs and line breaks
    /// become spaces), trimmed, 1–500 characters and at most 2000 UTF-8 bytes.
    static func messageText(_ raw: String) throws(ChatError) -> String {
        let text = self.stripControls(raw).trimmingCharacters(in: .whitespaces)
        guard !text.isEmpty else { throw ChatError(.badRequest, "empty_message", "the message is empty") }
        guard text.count <= self.maxMessageCharacters, text.utf8.count <= self.maxMessageBytes else {
            throw ChatError(.badRequest, "message_too_long", "a message is at most \(self.maxMessageCharacters) characters")
        }
        return text
    }

    /// Removes C0/C1 controls, DEL and the bidi embedding/override/isolate characters
    /// (U+202A–U+202E, U+2066–U+2069) that can make text display other than it reads.
    /// Tabs and line breaks become a space.
    static func stripControls(_ raw: String) -> String {
        var out = String.UnicodeScalarView()
        for scalar in raw.unicodeScalars {
            switch scalar.value {
            case 0x09, 0x0A, 0x0D: out.append(" ")
            case 0x00...0x1F, 0x7F...0x9F, 0x202A...0x202E, 0x2066...0x2069: continue
            default: out.append(scalar)
            }
        }
        return String(out)
    }

    private static func isNameScalar(_ s: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(s) || ("A"..."Z").contains(s) || ("0"..."9").contains(s) || s == "_" || s == "-"
    }

    private static func isRoomStart(_ s: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(s) || ("0"..."9").contains(s)
    }
}

/// An error answered as `{"error": code, "reason": …}` with its status, over HTTP and
/// WebSocket alike.
struct ChatError: HTTPResponseError {
    let status: HTTPResponse.Status
    let code: String
    let reason: String
    var headers: HTTPFields = [:]

    init(_ status: HTTPResponse.Status, _ code: String, _ reason: String, headers: HTTPFields = [:]) {
        self.status = status
        self.code = code
        self.reason = reason
        self.headers = headers
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers = self.headers
        headers[.contentType] = "application/json"
        let body = try JSONEncoder().encode(["error": self.code, "reason": self.reason])
        return Response(status: self.status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}
