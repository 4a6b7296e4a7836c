import Foundation
import Testing

@testable import SwitchboardClient

/// The shared resume rules (Tests/Fixtures/resume-rules.json) against `StreamBook`; the JS
/// client runs the same cases against its stream book (Clients/js/test/resume-rules.test.mjs).
@Suite struct ResumeRulesTests {
    struct Rules: Decodable {
        let stream: String
        let cases: [Case]
    }

    struct Case: Decodable {
        let name: String
        let start: Position
        let events: [Event]
    }

    /// A stream's position: `start`, and `then` after each event (all nil: none known).
    struct Position: Decodable, Equatable {
        let last: Int64?
        let epoch: String?
        let tag: String?
    }

    /// The `since`/`e`/`t` of a SUB (nil: not sent).
    struct SubParameters: Decodable, Equatable {
        let since: Int64?
        let epoch: String?
        let tag: String?
    }

    struct Push: Decodable {
        let id: Int64
        let epoch: String?
        let tag: String?
    }

    /// `recovered` is in the fixture for the reader: neither book reads it.
    struct SubReply: Decodable {
        let status: Int
        let id: Int64?
        let epoch: String?
        let solicited: Bool
    }

    /// One of `push`, `subReply`, `subscribe`, `connectionLost`, with what it must lead to.
    struct Event: Decodable {
        let push: Push?
        let subReply: SubReply?
        let subscribe: Bool?
        let connectionLost: Bool?
        let decision: String?
        let notRecovered: Bool?
        let sends: SubParameters?
        let then: Position
    }

    static func loadRules() throws -> Rules {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/resume-rules.json")
        return try JSONDecoder().decode(Rules.self, from: Data(contentsOf: url))
    }

    /// A push decision as the fixture names it, and whether it reported "not recovered".
    static func describe(_ decision: StreamBook.PushDecision) -> (name: String, notRecovered: Bool) {
        switch decision {
        case .deliver(let notRecovered): return ("deliver", notRecovered)
        case .drop: return ("drop", false)
        case .resubscribe(let notRecovered): return ("resubscribe", notRecovered)
        }
    }

    static func describe(_ outcome: StreamBook.SubscribeOutcome) -> String {
        switch outcome {
        case .subscribed: return "subscribed"
        case .notRecovered: return "notRecovered"
        case .refused: return "refused"
        }
    }

    /// What the client does before it sends a SUB; checks the SUB's `since`/`e`/`t`.
    static func subscribe(_ book: inout StreamBook, _ stream: String, expecting sends: SubParameters?, at: String) {
        let sent = book.prepareSubscribe(stream)
        #expect(SubParameters(since: sent.since, epoch: sent.epoch, tag: sent.tag) == sends, "\(at): SUB parameters")
    }

    @Test func everyCaseDecidesAsTheFixtureSays() throws {
        let rules = try Self.loadRules()
        #expect(!rules.cases.isEmpty)
        let stream = rules.stream
        for rule in rules.cases {
            var book = StreamBook()
            if let last = rule.start.last {
                try book.seed(stream, last: last, epoch: rule.start.epoch, tag: rule.start.tag)
            }
            for (index, event) in rule.events.enumerated() {
                let at = "\(rule.name), event \(index + 1)"
                if let push = event.push {
                    let (name, notRecovered) = Self.describe(book.push(stream, id: push.id, epoch: push.epoch, tag: push.tag))
                    #expect(name == event.decision, "\(at)")
                    #expect(notRecovered == (event.notRecovered ?? false), "\(at): not recovered")
                    if name == "resubscribe" {
                        Self.subscribe(&book, stream, expecting: event.sends, at: at)
                    }
                } else if let reply = event.subReply {
                    let outcome = book.subscribeReply(stream, status: reply.status, id: reply.id, epoch: reply.epoch, solicited: reply.solicited)
                    #expect(Self.describe(outcome) == event.decision, "\(at)")
                } else if event.subscribe == true {
                    Self.subscribe(&book, stream, expecting: event.sends, at: at)
                } else if event.connectionLost == true {
                    book.connectionLost()
                } else {
                    Issue.record("\(at): unknown event")
                }
                let entry = book[stream]
                #expect(Position(last: entry?.last, epoch: entry?.epoch, tag: entry?.tag) == event.then, "\(at): position")
            }
        }
    }
}
