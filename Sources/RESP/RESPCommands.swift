import NIOCore

public enum RESPSetCondition: Sendable { case always, ifNotExists, ifExists }

public enum RESPExpiration: Sendable {
    case seconds(Int)
    case milliseconds(Int)
}

/// A stream entry from XRANGE/XREVRANGE.
public struct RESPStreamEntry: Sendable, Equatable {
    public var id: String
    public var fields: [(name: String, value: ByteBuffer)]

    public static func == (a: RESPStreamEntry, b: RESPStreamEntry) -> Bool {
        a.id == b.id && a.fields.count == b.fields.count
            && zip(a.fields, b.fields).allSatisfy { $0.name == $1.name && $0.value == $1.value }
    }

    public func value(_ name: String) -> ByteBuffer? { fields.first { $0.name == name }?.value }
}

extension RESPValue {
    func expectInt(_ what: String) throws -> Int {
        guard let i = self.int else { throw RESPError.unexpectedReply("\(what): \(self)") }
        return i
    }
    func expectOptionalBytes(_ what: String) throws -> ByteBuffer? {
        if case .null = self { return nil }
        guard let b = self.bytes else { throw RESPError.unexpectedReply("\(what): \(self)") }
        return b
    }
    func expectArray(_ what: String) throws -> [RESPValue] {
        guard let a = self.array else { throw RESPError.unexpectedReply("\(what): \(self)") }
        return a
    }
    func expectBytesArray(_ what: String) throws -> [ByteBuffer] {
        try expectArray(what).map { v in
            guard let b = v.bytes else { throw RESPError.unexpectedReply("\(what) element: \(v)") }
            return b
        }
    }
}

extension RESPCommandExecutor {
    // MARK: strings / keys

    public func ping() async throws -> RESPValue { try await send(RESPCommand("PING"), timeout: nil) }

    public func get(_ key: String, timeout: Duration? = nil) async throws -> ByteBuffer? {
        try await send(RESPCommand("GET", .string(key)), timeout: timeout).expectOptionalBytes("GET")
    }

    /// SET with optional EX/PX and NX/XX. Returns false when the condition prevented the write.
    @discardableResult
    public func set(
        _ key: String, _ value: RESPArgument, expiration: RESPExpiration? = nil,
        condition: RESPSetCondition = .always, timeout: Duration? = nil
    ) async throws -> Bool {
        var c = RESPCommand("SET", .string(key), value)
        switch expiration {
        case .seconds(let s)?: c.append("EX", .int(s))
        case .milliseconds(let ms)?: c.append("PX", .int(ms))
        case nil: break
        }
        switch condition {
        case .always: break
        case .ifNotExists: c.append("NX")
        case .ifExists: c.append("XX")
        }
        return try await !send(c, timeout: timeout).isNull
    }

    @discardableResult
    public func del(_ keys: [String], timeout: Duration? = nil) async throws -> Int {
        try await send(RESPCommand("DEL", arguments: keys.map { .string($0) }), timeout: timeout).expectInt("DEL")
    }

    @discardableResult
    public func del(_ keys: String..., timeout: Duration? = nil) async throws -> Int {
        try await del(keys, timeout: timeout)
    }

    @discardableResult
    public func expire(_ key: String, seconds: Int, timeout: Duration? = nil) async throws -> Bool {
        try await send(RESPCommand("EXPIRE", .string(key), .int(seconds)), timeout: timeout).expectInt("EXPIRE") == 1
    }

    public func incr(_ key: String, timeout: Duration? = nil) async throws -> Int {
        try await send(RESPCommand("INCR", .string(key)), timeout: timeout).expectInt("INCR")
    }

    // MARK: hashes

    @discardableResult
    public func hset(_ key: String, fields: [(String, RESPArgument)], timeout: Duration? = nil) async throws -> Int {
        var c = RESPCommand("HSET", .string(key))
        for (f, v) in fields {
            c.append(.string(f))
            c.append(v)
        }
        return try await send(c, timeout: timeout).expectInt("HSET")
    }

    @discardableResult
    public func hset(_ key: String, field: String, value: RESPArgument, timeout: Duration? = nil) async throws -> Int {
        try await hset(key, fields: [(field, value)], timeout: timeout)
    }

    public func hget(_ key: String, field: String, timeout: Duration? = nil) async throws -> ByteBuffer? {
        try await send(RESPCommand("HGET", .string(key), .string(field)), timeout: timeout).expectOptionalBytes("HGET")
    }

    @discardableResult
    public func hincrby(_ key: String, field: String, by increment: Int, timeout: Duration? = nil) async throws -> Int {
        try await send(RESPCommand("HINCRBY", .string(key), .string(field), .int(increment)), timeout: timeout).expectInt("HINCRBY")
    }

    public func hgetall(_ key: String, timeout: Duration? = nil) async throws -> [String: ByteBuffer] {
        let reply = try await send(RESPCommand("HGETALL", .string(key)), timeout: timeout)
        guard let entries = reply.mapEntries else { throw RESPError.unexpectedReply("HGETALL: \(reply)") }
        var out: [String: ByteBuffer] = [:]
        for (k, v) in entries {
            guard let ks = k.string, let vb = v.bytes else { throw RESPError.unexpectedReply("HGETALL entry") }
            out[ks] = vb
        }
        return out
    }

    // MARK: streams

    /// XADD key [MAXLEN [~] n] id field value ... Returns the entry id.
    @discardableResult
    public func xadd(
        _ key: String, id: String = "*", maxLength: Int? = nil, approximate: Bool = true,
        fields: [(String, RESPArgument)], timeout: Duration? = nil
    ) async throws -> String {
        var c = RESPCommand("XADD", .string(key))
        if let maxLength {
            c.append("MAXLEN")
            if approximate { c.append("~") }
            c.append(.int(maxLength))
        }
        c.append(.string(id))
        for (f, v) in fields {
            c.append(.string(f))
            c.append(v)
        }
        let reply = try await send(c, timeout: timeout)
        guard let s = reply.string else { throw RESPError.unexpectedReply("XADD: \(reply)") }
        return s
    }

    public func xrange(
        _ key: String, start: String = "-", end: String = "+", count: Int? = nil,
        timeout: Duration? = nil
    ) async throws -> [RESPStreamEntry] {
        var c = RESPCommand("XRANGE", .string(key), .string(start), .string(end))
        if let count { c.append("COUNT", .int(count)) }
        return try Self.streamEntries(try await send(c, timeout: timeout))
    }

    public func xrevrange(
        _ key: String, end: String = "+", start: String = "-", count: Int? = nil,
        timeout: Duration? = nil
    ) async throws -> [RESPStreamEntry] {
        var c = RESPCommand("XREVRANGE", .string(key), .string(end), .string(start))
        if let count { c.append("COUNT", .int(count)) }
        return try Self.streamEntries(try await send(c, timeout: timeout))
    }

    @discardableResult
    public func xtrim(_ key: String, maxLength: Int, approximate: Bool = true, timeout: Duration? = nil) async throws -> Int {
        var c = RESPCommand("XTRIM", .string(key), "MAXLEN")
        if approximate { c.append("~") }
        c.append(.int(maxLength))
        return try await send(c, timeout: timeout).expectInt("XTRIM")
    }

    static func streamEntries(_ reply: RESPValue) throws -> [RESPStreamEntry] {
        try reply.expectArray("XRANGE").map { entry in
            let parts = try entry.expectArray("stream entry")
            guard parts.count == 2, let id = parts[0].string else { throw RESPError.unexpectedReply("stream entry: \(entry)") }
            let raw = try parts[1].expectArray("stream entry fields")
            var fields: [(name: String, value: ByteBuffer)] = []
            var i = 0
            while i + 1 < raw.count {
                guard let n = raw[i].string, let v = raw[i + 1].bytes else { throw RESPError.unexpectedReply("stream field") }
                fields.append((n, v))
                i += 2
            }
            return RESPStreamEntry(id: id, fields: fields)
        }
    }

    // MARK: sorted sets

    @discardableResult
    public func zadd(_ key: String, members: [(score: Double, member: RESPArgument)], timeout: Duration? = nil) async throws -> Int {
        var c = RESPCommand("ZADD", .string(key))
        for m in members {
            c.append(.double(m.score))
            c.append(m.member)
        }
        return try await send(c, timeout: timeout).expectInt("ZADD")
    }

    /// ZRANGEBYSCORE key min max [LIMIT offset count]; min/max accept "-inf", "(1.5", etc.
    public func zrangebyscore(
        _ key: String, min: String, max: String, limit: (offset: Int, count: Int)? = nil,
        timeout: Duration? = nil
    ) async throws -> [ByteBuffer] {
        var c = RESPCommand("ZRANGEBYSCORE", .string(key), .string(min), .string(max))
        if let limit { c.append(contentsOf: ["LIMIT", .int(limit.offset), .int(limit.count)]) }
        return try await send(c, timeout: timeout).expectBytesArray("ZRANGEBYSCORE")
    }

    public func zrangebyscore(
        _ key: String, min: Double, max: Double, limit: (offset: Int, count: Int)? = nil,
        timeout: Duration? = nil
    ) async throws -> [ByteBuffer] {
        func f(_ d: Double) -> String { d.isInfinite ? (d < 0 ? "-inf" : "+inf") : String(d) }
        return try await zrangebyscore(key, min: f(min), max: f(max), limit: limit, timeout: timeout)
    }

    @discardableResult
    public func zrem(_ key: String, members: [RESPArgument], timeout: Duration? = nil) async throws -> Int {
        try await send(RESPCommand("ZREM", arguments: [.string(key)] + members), timeout: timeout).expectInt("ZREM")
    }

    // MARK: sets

    @discardableResult
    public func sadd(_ key: String, members: [RESPArgument], timeout: Duration? = nil) async throws -> Int {
        try await send(RESPCommand("SADD", arguments: [.string(key)] + members), timeout: timeout).expectInt("SADD")
    }

    @discardableResult
    public func srem(_ key: String, members: [RESPArgument], timeout: Duration? = nil) async throws -> Int {
        try await send(RESPCommand("SREM", arguments: [.string(key)] + members), timeout: timeout).expectInt("SREM")
    }

    public func smembers(_ key: String, timeout: Duration? = nil) async throws -> [ByteBuffer] {
        try await send(RESPCommand("SMEMBERS", .string(key)), timeout: timeout).expectBytesArray("SMEMBERS")
    }

    // MARK: pub/sub publishing

    /// Returns the number of receivers.
    @discardableResult
    public func publish(_ channel: String, _ message: RESPArgument, timeout: Duration? = nil) async throws -> Int {
        try await send(RESPCommand("PUBLISH", .string(channel), message), timeout: timeout).expectInt("PUBLISH")
    }

    @discardableResult
    public func spublish(_ channel: String, _ message: RESPArgument, timeout: Duration? = nil) async throws -> Int {
        try await send(RESPCommand("SPUBLISH", .string(channel), message), timeout: timeout).expectInt("SPUBLISH")
    }

    // MARK: scripting

    public func evalsha(
        _ sha1: String, keys: [String] = [], args: [RESPArgument] = [],
        timeout: Duration? = nil
    ) async throws -> RESPValue {
        try await send(.evalsha(sha1, keys: keys, args: args), timeout: timeout)
    }
}

extension RESPCommand {
    /// `EVALSHA sha1 numkeys key… arg…`, for pipelines (`evalsha(_:keys:args:)` sends one).
    public static func evalsha(_ sha1: String, keys: [String] = [], args: [RESPArgument] = []) -> RESPCommand {
        var c = RESPCommand("EVALSHA", .string(sha1), .int(keys.count))
        c.append(contentsOf: keys.map { .string($0) })
        c.append(contentsOf: args)
        return c
    }
}
