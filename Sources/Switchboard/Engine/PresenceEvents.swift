import Foundation
import NIOCore

/// Presence events. When a connection starts subscribing to a stream (through a `SUB` route)
/// or stops (UNSUB, disconnect, its node died), an event goes to the stream's presence stream,
/// `/presence` + the stream's path. It is a stream like any other: contiguous offsets, history,
/// resume. A connection may subscribe to `/presence/<path>` if its `SUB` route for `<path>`
/// allows it.
public enum PresenceEvents {
    public static let prefix = "/presence"

    public enum Kind: String, Codable, Sendable {
        case join, leave
    }

    /// The body of an event: `{"event":"join","user":"ann","session":"…","connection":"…"}`.
    public struct Event: Codable, Sendable, Equatable {
        public var event: Kind
        public var user: String?
        public var session: String
        public var connection: String

        public init(event: Kind, user: String?, session: String, connection: String) {
            self.event = event
            self.user = user
            self.session = session
            self.connection = connection
        }
    }

    /// The presence stream of `stream`.
    public static func stream(for stream: String) -> String { self.prefix + stream }

    /// The stream whose presence `stream` carries, if it is a presence stream.
    public static func subject(of stream: String) -> String? {
        guard stream.hasPrefix(self.prefix + "/") else { return nil }
        return String(stream.dropFirst(self.prefix.count))
    }

    public static func body(_ kind: Kind, _ member: PresenceMember) -> ByteBuffer {
        let event = Event(event: kind, user: member.user, session: member.session, connection: member.connection)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return ByteBuffer(bytes: (try? encoder.encode(event)) ?? Data())
    }

    /// Records a join (or leave) in `presence` and, when it changed the presence, publishes the
    /// event to the stream's presence stream in `streams`.
    static func record(_ kind: Kind, _ member: PresenceMember, on stream: String, presence: any PresenceStore, streams: any StreamStore) async {
        do {
            let changed =
                kind == .join
                ? try await presence.presenceJoin(stream, member: member)
                : try await presence.presenceLeave(stream, member: member)
            if changed { _ = try await streams.publish(self.stream(for: stream), body: self.body(kind, member), idempotencyKey: nil) }
        } catch {
            // Redis away: the member's entry expires with its node's heartbeat.
        }
    }
}
