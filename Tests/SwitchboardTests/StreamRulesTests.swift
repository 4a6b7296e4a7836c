import Foundation
import Switchboard
import SwitchboardTesting
import Testing

/// Stream rules (docs/operations.md, "Stream rules"): who may subscribe and publish, what is
/// kept, whether presence is recorded, on both engines.
@Suite("Stream rules", .serialized, .timeLimit(.minutes(3)))
struct StreamRulesTests {
    static func reply(_ socket: RawSocket, _ request: String, id: String) async throws -> Parsed {
        try await socket.send(request)
        return Parsed(try await socket.nextText(where: { Parsed($0).meta["r"] == id }))
    }

    @Test func patternsMatchAsDocumented() throws {
        let rooms = try StreamPattern("/rooms/*")
        #expect(rooms.match("/rooms/lobby") != nil)
        #expect(rooms.match("/rooms/lobby/x") == nil)
        #expect(rooms.match("/rooms") == nil)
        #expect(rooms.match("/rooms/") == nil)
        let orders = try StreamPattern("/orders/**")
        #expect(orders.match("/orders/1/items") != nil)
        #expect(orders.match("/orders") == nil)
        #expect(orders.match("/orders//x") == nil)
        let mine = try StreamPattern("/users/{user}/**")
        #expect(mine.match("/users/ann/notes")?.isOwned(by: "ann") == true)
        #expect(mine.match("/users/ann/notes")?.isOwned(by: "bob") == false)
        #expect(mine.match("/users/ann/notes")?.isOwned(by: nil) == false)
        for bad in ["rooms/*", "/", "/a//b", "/a/**/b", "/a/b*", "/a/{user"] {
            #expect(throws: StreamRuleError.self) { try StreamPattern(bad) }
        }
        #expect(throws: StreamRuleError.self) { try StreamRule.test("/rooms/*", subscribe: .owner) }
        #expect(throws: StreamRuleError.self) { try StreamRules([StreamRule.test("/sessions/*")]) }
        #expect(throws: StreamRuleError.self) { try StreamRule.test("/a/*", storage: StreamStorage(historyAge: 0)) }
    }

    @Test(arguments: EngineKind.allCases)
    func whoMaySubscribe(_ kind: EngineKind) async throws {
        let rules = [
            try StreamRule.test("/open/**", subscribe: .anyone),
            try StreamRule.test("/members/**", subscribe: .authenticated),
            try StreamRule.test("/users/{user}/**", subscribe: .owner),
            try StreamRule.test("/shared/{user}/*", subscribe: .anyone),
            try StreamRule.test("/closed/**", subscribe: .none),
        ]
        try await withRulesNode(kind, rules: rules) { node in
            let (guest, _) = try await node.raw(user: nil)
            #expect(try await Self.reply(guest, "SUB|/open/a|r=1|", id: "1").head == "SUB200")
            #expect(try await Self.reply(guest, "SUB|/members/a|r=2|", id: "2").head == "SUB401")
            #expect(try await Self.reply(guest, "SUB|/closed/a|r=3|", id: "3").head == "SUB403")
            // No rule: refused.
            #expect(try await Self.reply(guest, "SUB|/elsewhere/a|r=4|", id: "4").head == "SUB404")
            #expect(try await Self.reply(guest, "SUB|/users/ann/notes|r=5|", id: "5").head == "SUB401")

            let (ann, _) = try await node.raw(user: "ann")
            #expect(try await Self.reply(ann, "SUB|/members/a|r=1|", id: "1").head == "SUB200")
            #expect(try await Self.reply(ann, "SUB|/users/ann/notes|r=2|", id: "2").head == "SUB200")
            #expect(try await Self.reply(ann, "SUB|/users/bob/notes|r=3|", id: "3").head == "SUB403")
            #expect(try await Self.reply(ann, "SUB|/closed/a|r=4|", id: "4").head == "SUB403")
            // A path that names a user is that user's even under `anyone`.
            #expect(try await Self.reply(ann, "SUB|/shared/ann/x|r=5|", id: "5").head == "SUB200")
            #expect(try await Self.reply(ann, "SUB|/shared/bob/x|r=6|", id: "6").head == "SUB403")
            // The user's own built-in stream is not a rule's business.
            #expect(try await Self.reply(ann, "SUB|/users/bob|r=7|", id: "7").head == "SUB403")
        }
    }

    @Test(arguments: EngineKind.allCases)
    func whoMayPublishAndWhatIsKept(_ kind: EngineKind) async throws {
        let rules = [
            try StreamRule.test("/chat/*", storage: StreamStorage(historySize: 3, retention: .log), publish: .authenticated),
            try StreamRule.test("/queue/*", publish: .authenticated),
            try StreamRule.test("/ticks/*", storage: .ephemeral, subscribe: .anyone, publish: .anyone),
            try StreamRule.test("/quiet/*", publish: .none),
        ]
        try await withRulesNode(kind, rules: rules) { node in
            let (guest, _) = try await node.raw(user: nil)
            #expect(try await Self.reply(guest, "POST|/chat/a|r=1|{\"t\":1}", id: "1").head == "POST401")
            let (ann, _) = try await node.raw(user: "ann")
            #expect(try await Self.reply(ann, "POST|/quiet/a|r=1|{}", id: "1").head == "POST403")
            for i in 1...5 {
                let published = try await Self.reply(ann, "POST|/chat/a|r=p\(i)|{\"n\":\(i)}", id: "p\(i)")
                #expect(published.head == "POST201")
                #expect(published.body.contains("\"offset\":\(i)"))
            }
            // History size 3: offsets 3…5 are kept, a reader from 0 cannot be caught up.
            #expect(try await RetentionTests.history(node, "/chat/a") == [])
            if case .messages(let kept, _) = try await node.publisher.history(of: "/chat/a", after: 2, limit: 10) {
                #expect(kept.map(\.offset) == [3, 4, 5])
            } else {
                Issue.record("history after 2 should be kept")
            }
            // Ephemeral: offsets count, nothing is kept.
            #expect(try await Self.reply(guest, "POST|/ticks/a|r=2|1", id: "2").head == "POST201")
            #expect(try await Self.reply(guest, "POST|/ticks/a|r=3|2", id: "3").head == "POST201")
            #expect(try await RetentionTests.history(node, "/ticks/a") == [])
            if case .messages(let none, let position) = try await node.publisher.history(of: "/ticks/a", after: 2, limit: 10) {
                #expect(none.isEmpty)
                #expect(position.top == 2)
            } else {
                Issue.record("an ephemeral stream's reader at its top is covered")
            }
            // A subscriber that acked everything trims a queue, never a log.
            for stream in ["/queue/b", "/chat/b"] {
                for i in 1...3 { _ = try await node.publisher.publish("m\(i)", to: stream) }
            }
            let (bob, _) = try await node.raw(user: "bob")
            for (i, stream) in ["/queue/b", "/chat/b"].enumerated() {
                #expect(try await Self.reply(bob, "SUB|\(stream)|r=s\(i);since=0|", id: "s\(i)").head == "SUB200")
                for _ in 1...3 { _ = try await bob.nextText(where: { $0.hasPrefix("PUSH") }) }
                try await bob.send("ACK|\(stream)|id=3|")
            }
            let deadline = ContinuousClock.now + .seconds(10)
            while try await RetentionTests.history(node, "/queue/b") == [1, 2, 3], ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(try await RetentionTests.history(node, "/queue/b") != [1, 2, 3])
            #expect(try await RetentionTests.history(node, "/chat/b") == [1, 2, 3])
        }
    }

    @Test func aPathNamesAUserAsTheBuiltInStreamsSpellIt() async throws {
        let rules = [try StreamRule.test("/users/{user}/**", subscribe: .owner, publish: .authenticated)]
        try await withRulesNode(.memory, rules: rules) { node in
            let (zoe, _) = try await node.raw(user: "zoë")
            #expect(try await Self.reply(zoe, "SUB|/users/zo%C3%AB/notes|r=1|", id: "1").head == "SUB200")
            // A user whose name is that spelling owns nothing of zoë's; a second spelling is nobody's.
            let (impostor, _) = try await node.raw(user: "zo%C3%AB")
            #expect(try await Self.reply(impostor, "SUB|/users/zo%C3%AB/notes|r=1|", id: "1").head == "SUB403")
            let (ann, _) = try await node.raw(user: "ann")
            #expect(try await Self.reply(ann, "SUB|/users/%61nn/notes|r=1|", id: "1").head == "SUB403")
            // A user's built-in stream is no rule's: a client cannot publish into another's inbox.
            #expect(try await Self.reply(ann, "POST|/users/zo%C3%AB|r=2|{}", id: "2").head == "POST404")
            #expect(try await Self.reply(ann, "POST|/broadcast|r=3|{}", id: "3").head == "POST404")
            #expect(try await Self.reply(ann, "POST|/presence/users/ann/x|r=4|{}", id: "4").head == "POST404")
            #expect(try await Self.reply(ann, "POST|/users/ann/notes|r=5|{}", id: "5").head == "POST201")
        }
        #expect(throws: StreamRuleError.self) { try StreamRules([StreamRule.test("/**")]) }
        #expect(throws: StreamRuleError.self) { try StreamRules([StreamRule.test("/*/x")]) }
        #expect(throws: StreamRuleError.self) { try StreamRules([StreamRule.test("/api/**")]) }
        #expect(throws: StreamRuleError.self) { try StreamPattern("/a/{user}/{user}") }
    }

    @Test(arguments: EngineKind.allCases)
    func aRulesHistoryAgeIsItsOwn(_ kind: EngineKind) async throws {
        let rules = [
            try StreamRule.test("/short/*", storage: StreamStorage(historyAge: 2), publish: .authenticated),
            try StreamRule.test("/long/*", publish: .authenticated),
        ]
        try await withRulesNode(kind, rules: rules) { node in
            for stream in ["/short/a", "/long/a"] {
                for i in 1...2 { _ = try await node.publisher.publish("m\(i)", to: stream) }
                #expect(try await RetentionTests.history(node, stream) == [1, 2])
            }
            try await Task.sleep(for: .milliseconds(2300))
            #expect(try await RetentionTests.history(node, "/short/a") == [])
            #expect(try await RetentionTests.history(node, "/long/a") == [1, 2])
        }
    }

    @Test(arguments: EngineKind.allCases)
    func presenceIsRecordedOnlyWhereTheRuleKeepsIt(_ kind: EngineKind) async throws {
        let rules = [try StreamRule.test("/rooms/*"), try StreamRule.test("/silent/*", presence: false)]
        try await withRulesNode(kind, rules: rules) { node in
            let (ann, _) = try await node.raw(user: "ann")
            // The silent stream first: had its join been recorded, it would be by the time the
            // other's is seen.
            #expect(try await Self.reply(ann, "SUB|/silent/a|r=2|", id: "2").head == "SUB200")
            #expect(try await Self.reply(ann, "SUB|/rooms/a|r=1|", id: "1").head == "SUB200")
            #expect(try await Self.reply(ann, "SUB|/presence/silent/a|r=3|", id: "3").head == "SUB404")
            let watch = try await Self.reply(ann, "SUB|/presence/rooms/a|r=4;since=0|", id: "4")
            #expect(watch.head == "SUB200")
            let deadline = ContinuousClock.now + .seconds(5)
            var members: [PresenceMember] = []
            while members.isEmpty, ContinuousClock.now < deadline {
                members = try await node.gateway.publisher.presence(of: "/rooms/a")
                if members.isEmpty { try await Task.sleep(for: .milliseconds(50)) }
            }
            #expect(members.map(\.user) == ["ann"])
            #expect(try await node.gateway.publisher.presence(of: "/silent/a").isEmpty)
        }
    }
}
