import RESP

/// The Lua scripts of `RedisEngine`. Every script touches keys of ONE slot only (a
/// stream's keys share the hash tag `{<stream>}`, a session is one key), so they run
/// unchanged on Redis Cluster.
///
/// Per stream P (prefix `sb`):
/// - `sb:{P}:meta`  hash: `epoch`, `top` (offset of the newest message, 0 when empty), `lt`
///   (the tag of the message at `top`)
/// - `sb:{P}:log`   Redis stream; entry id `<offset>-0`, fields `t` (publish time, ms, Redis
///   TIME), `d` (body), `g` (the message's tag: random, chosen by the publishing node) and `p`
///   (the tag of the message before it: the log is a chain, and a rollback shows where a reader
///   crosses it)
/// - `sb:{P}:acks`  sorted set session → acked offset (a sorted set rather than a hash so the
///   minimum is O(log n) on every ack)
/// - `sb:{P}:holds` sorted set session → when its hold on the history ends (ms, Redis TIME):
///   `+inf` while the session is connected (an ack or a SUB sets it: a quiet stream must not
///   end a connected subscriber's hold); a session whose last connection closed keeps it for
///   `sessionTTL` (`RedisEngine.touchSession`), and a dead node's sessions too (its survivors
///   end them). An ack drops the holds that ended from `acks`, so expired sessions stop
///   holding history
/// - `sb:{P}:idem:<key>` string `<offset>,<epoch>,<tag>` with a TTL
/// - `sb:{P}:presence` hash member → expiry (ms, Redis TIME)
/// - channel `sb:{P}` carries `<offset>,<epoch>,<tag>,<previous tag>,<body>`
///
/// Age trimming: offsets are not timestamps, so each entry carries its publish time `t`.
/// Entries are appended in time order, so the scripts drop entries from the head while
/// they are older than `historyAge` (a look at the head entry when nothing is due, at most
/// 16 × 128 entries per call otherwise), then `XTRIM MINID` the first one to keep. It runs
/// on every publish and every read, so a reader never sees an expired entry.
enum RedisScripts {
    static let prelude = """
        local function now_ms()
          local t = redis.call('TIME')
          return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end
        local function offset_of(id)
          return tonumber(string.match(id, '^(%d+)'))
        end
        local function trim_age(log, cutoff)
          local head = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
          if #head == 0 or tonumber(head[1][2][2]) >= cutoff then return end
          for _ = 1, 16 do
            local e = redis.call('XRANGE', log, '-', '+', 'COUNT', 128)
            if #e == 0 then return end
            for i = 1, #e do
              if tonumber(e[i][2][2]) >= cutoff then
                redis.call('XTRIM', log, 'MINID', e[i][1])
                return
              end
            end
            redis.call('XTRIM', log, 'MINID', (offset_of(e[#e][1]) + 1) .. '-0')
          end
        end
        local function touch_keys(ttl, a, b, c, d)
          if tonumber(ttl) > 0 then
            redis.call('PEXPIRE', a, ttl); redis.call('PEXPIRE', b, ttl)
            redis.call('PEXPIRE', c, ttl); redis.call('PEXPIRE', d, ttl)
          end
        end
        -- The stream's epoch and top; creates the stream (new epoch, empty history) if missing.
        local function ensure(meta, log, acks, holds, candidate)
          local m = redis.call('HMGET', meta, 'epoch', 'top')
          if m[1] then return m[1], tonumber(m[2]) end
          redis.call('DEL', log, acks, holds)
          redis.call('HSET', meta, 'epoch', candidate, 'top', 0)
          return candidate, 0
        end

        """

    /// KEYS meta, log, acks, holds[, idem]. ARGV body, candidate epoch, historySize,
    /// historyAge ms, idempotency TTL ms, channel, sharded 0/1, approximate 0/1, stream TTL ms, tag.
    /// Returns {offset, epoch, duplicate 0/1, tag}.
    static let publish = RESPScript(
        source: prelude + """
            local meta, log, acks, holds, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
            if idem then
              local seen = redis.call('GET', idem)
              if seen then
                local c = string.find(seen, ',', 1, true)
                local c2 = string.find(seen, ',', c + 1, true)
                if c2 then
                  return {tonumber(string.sub(seen, 1, c - 1)), string.sub(seen, c + 1, c2 - 1), 1, string.sub(seen, c2 + 1)}
                end
                return {tonumber(string.sub(seen, 1, c - 1)), string.sub(seen, c + 1), 1, ''}
              end
            end
            local epoch = ensure(meta, log, acks, holds, ARGV[2])
            local top = redis.call('HINCRBY', meta, 'top', 1)
            local now = now_ms()
            local id = top .. '-0'
            local tag = ARGV[10]
            local prev = redis.call('HGET', meta, 'lt') or ''
            redis.call('HSET', meta, 'lt', tag)
            if ARGV[8] == '1' then
              redis.call('XADD', log, 'MAXLEN', '~', ARGV[3], id, 't', now, 'd', ARGV[1], 'g', tag, 'p', prev)
            else
              redis.call('XADD', log, 'MAXLEN', ARGV[3], id, 't', now, 'd', ARGV[1], 'g', tag, 'p', prev)
            end
            trim_age(log, now - tonumber(ARGV[4]))
            local payload = top .. ',' .. epoch .. ',' .. tag .. ',' .. prev .. ',' .. ARGV[1]
            if ARGV[7] == '1' then
              redis.call('SPUBLISH', ARGV[6], payload)
            else
              redis.call('PUBLISH', ARGV[6], payload)
            end
            if idem then redis.call('SET', idem, top .. ',' .. epoch .. ',' .. tag, 'PX', ARGV[5]) end
            touch_keys(ARGV[9], meta, log, acks, holds)
            return {top, epoch, 0, tag}
            """)

    /// KEYS meta, log, acks, holds. ARGV after, candidate epoch, limit, historyAge ms,
    /// expected epoch ('' = any), stream TTL ms, historySize, expected tag of the entry at
    /// `after` ('' = any).
    /// Returns {epoch, top, gone 0/1, offset1, tag1, previous tag1, body1, …}. History is the
    /// last `historySize` offsets exactly, whatever `MAXLEN ~` left in the log, so both engines
    /// answer the same reads. A reader whose message at `after` is not the one kept there (its
    /// tag differs, or the next one does not follow it: the history was rolled back and written
    /// again) is gone.
    static let read = RESPScript(
        source: prelude + """
            local meta, log = KEYS[1], KEYS[2]
            local epoch, top = ensure(meta, log, KEYS[3], KEYS[4], ARGV[2])
            touch_keys(ARGV[6], meta, log, KEYS[3], KEYS[4])
            trim_age(log, now_ms() - tonumber(ARGV[4]))
            local after = tonumber(ARGV[1])
            local gone = 0
            if ARGV[5] ~= '' and ARGV[5] ~= epoch then
              gone = 1
            elseif after > top then
              gone = 1
            else
              local head = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
              local first = top + 1
              if #head > 0 then first = offset_of(head[1][1]) end
              first = math.max(first, top - tonumber(ARGV[7]) + 1)
              if after + 1 < first then
                gone = 1
              elseif ARGV[8] ~= '' and after > 0 then
                -- The message at `after` must carry the reader's tag; if it was just trimmed, the one
                -- after it must name it as its predecessor.
                local at = redis.call('XRANGE', log, after .. '-0', (after + 1) .. '-0')
                if #at == 0 and after == top then
                  -- Nothing kept at or after it (aged out): the stream's last tag names the message at top.
                  local lt = redis.call('HGET', meta, 'lt')
                  if lt and lt ~= '' and lt ~= ARGV[8] then gone = 1 end
                end
                for _, entry in ipairs(at) do
                  local fields, g, p = entry[2], '', ''
                  for i = 1, #fields, 2 do
                    if fields[i] == 'g' then g = fields[i + 1] elseif fields[i] == 'p' then p = fields[i + 1] end
                  end
                  if offset_of(entry[1]) == after then
                    if g ~= '' and g ~= ARGV[8] then gone = 1 end
                    break
                  elseif p ~= '' and p ~= ARGV[8] then
                    gone = 1
                  end
                end
              end
            end
            local out = {epoch, top, gone}
            if gone == 0 and tonumber(ARGV[3]) > 0 and after < top then
              local e = redis.call('XRANGE', log, (after + 1) .. '-0', '+', 'COUNT', ARGV[3])
              for i = 1, #e do
                local fields, g, p, d = e[i][2], '', '', ''
                for j = 1, #fields, 2 do
                  local f = fields[j]
                  if f == 'd' then d = fields[j + 1] elseif f == 'g' then g = fields[j + 1] elseif f == 'p' then p = fields[j + 1] end
                end
                out[#out + 1] = offset_of(e[i][1])
                out[#out + 1] = g
                out[#out + 1] = p
                out[#out + 1] = d
              end
            end
            return out
            """)

    /// KEYS meta, log, acks, holds. ARGV session, offset, stream TTL ms, candidate epoch. Records max(acked, min(offset, top)) and trims the log up to the lowest ack of a
    /// session whose hold has not ended. A stream without messages yet is created, so this
    /// consumer holds its history from the start (a later subscriber's acks must not trim what
    /// this one has not read).
    static let ack = RESPScript(
        source: prelude + """
            local meta, log, acks, holds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
            local _, top = ensure(meta, log, acks, holds, ARGV[4])
            local off = math.min(tonumber(ARGV[2]), top)
            if off < 0 then off = 0 end
            redis.call('ZADD', acks, 'GT', off, ARGV[1])
            local now = now_ms()
            redis.call('ZADD', holds, '+inf', ARGV[1])
            local ended = redis.call('ZRANGEBYSCORE', holds, '-inf', '(' .. now, 'LIMIT', 0, 100)
            if #ended > 0 then
              redis.call('ZREM', acks, unpack(ended))
              redis.call('ZREM', holds, unpack(ended))
            end
            local low = redis.call('ZRANGE', acks, 0, 0, 'WITHSCORES')
            if #low > 0 then
              local min = tonumber(low[2])
              if min > 0 then redis.call('XTRIM', log, 'MINID', (min + 1) .. '-0') end
            end
            touch_keys(ARGV[3], meta, log, acks, holds)
            return off
            """)

    /// KEYS holds. ARGV session, ms. A session whose connection closed holds the stream's
    /// history for `ms` more (its TTL), unless it has no hold there.
    static let endHold = RESPScript(
        source: prelude + """
            return redis.call('ZADD', KEYS[1], 'XX', now_ms() + tonumber(ARGV[2]), ARGV[1])
            """)

    /// KEYS meta. ARGV seen epoch, new epoch. The stream's history in the seen epoch was rolled
    /// back (offsets handed out again): it moves to the new epoch, unless another node moved it
    /// already. Returns {epoch, top}.
    static let newEpoch = RESPScript(
        source: """
            local e = redis.call('HGET', KEYS[1], 'epoch')
            if e == ARGV[1] then
              redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
              redis.call('HDEL', KEYS[1], 'lt')
              e = ARGV[2]
            end
            return {e or '', tonumber(redis.call('HGET', KEYS[1], 'top') or '0')}
            """)

    /// KEYS node sessions set. ARGV add 1/0, session. The node's index of its sessions (a script
    /// so it can go in one pipeline with `touchSession`).
    static let nodeSessionIndex = RESPScript(
        source: """
            if ARGV[1] == '1' then return redis.call('SADD', KEYS[1], ARGV[2]) end
            return redis.call('SREM', KEYS[1], ARGV[2])
            """)

    /// KEYS session. ARGV field, offset. Raises the session's cursor (if the session exists).
    static let sessionCursor = RESPScript(
        source: """
            if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
            local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
            if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
            return 1
            """)

    /// KEYS session. ARGV ttl ms, has user 0/1, user, then stream/cursor pairs.
    /// Replaces the record, keeps the connection count `n` and owner node `o`; without
    /// connections the key expires after the TTL.
    static let saveSession = RESPScript(
        source: """
            local k = KEYS[1]
            local n = tonumber(redis.call('HGET', k, 'n') or '0')
            local o = redis.call('HGET', k, 'o')
            redis.call('DEL', k)
            local f = {'n', n}
            if o then f[#f + 1] = 'o'; f[#f + 1] = o end
            if ARGV[2] == '1' then f[#f + 1] = 'u'; f[#f + 1] = ARGV[3] end
            for i = 4, #ARGV - 1, 2 do f[#f + 1] = 'c:' .. ARGV[i]; f[#f + 1] = ARGV[i + 1] end
            redis.call('HSET', k, unpack(f))
            if n == 0 then redis.call('PEXPIRE', k, ARGV[1]) end
            return n
            """)

    /// KEYS session. ARGV delta (+1/-1), ttl ms, node. Counts the session's live connections
    /// and records the node of the newest one (`o`); without connections the key expires after
    /// the TTL. Returns the count (-1: no session).
    static let touchSession = RESPScript(
        source: """
            local k = KEYS[1]
            if redis.call('EXISTS', k) == 0 then return -1 end
            local n = redis.call('HINCRBY', k, 'n', ARGV[1])
            if n < 0 then redis.call('HSET', k, 'n', 0); n = 0 end
            if tonumber(ARGV[1]) > 0 then
              redis.call('HSET', k, 'o', ARGV[3])
            elseif n == 0 and redis.call('HGET', k, 'o') == ARGV[3] then
              redis.call('HDEL', k, 'o')
            end
            if n == 0 then redis.call('PEXPIRE', k, ARGV[2]) else redis.call('PERSIST', k) end
            return n
            """)

    /// KEYS session. ARGV node, has user 0/1, user. A session with a live connection on `node`
    /// after Redis came back: recreated if Redis lost it, counted again if it was released (its
    /// node was declared dead). Returns 1 when recreated.
    static let restoreSession = RESPScript(
        source: """
            local k = KEYS[1]
            if redis.call('EXISTS', k) == 0 then
              redis.call('HSET', k, 'n', 1, 'o', ARGV[1])
              if ARGV[2] == '1' then redis.call('HSET', k, 'u', ARGV[3]) end
              return 1
            end
            if redis.call('HGET', k, 'o') ~= ARGV[1] then
              redis.call('HINCRBY', k, 'n', 1)
              redis.call('HSET', k, 'o', ARGV[1])
              redis.call('PERSIST', k)
            end
            return 0
            """)

    /// KEYS nodes. ARGV node id, deadAfter ms. Records the heartbeat (Redis time, so node
    /// clocks do not matter) and returns up to 10 nodes silent for `deadAfter`.
    static let nodeHeartbeat = RESPScript(
        source: prelude + """
            local now = now_ms()
            redis.call('ZADD', KEYS[1], now, ARGV[1])
            return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])), 'LIMIT', 0, 10)
            """)

    /// KEYS node. ARGV address, started ms, connections, ttl ms. Returns 1 if the entry existed.
    static let nodeInfo = RESPScript(
        source: """
            local existed = redis.call('EXISTS', KEYS[1])
            redis.call('HSET', KEYS[1], 'address', ARGV[1], 'started', ARGV[2], 'connections', ARGV[3])
            redis.call('PEXPIRE', KEYS[1], ARGV[4])
            return existed
            """)

    /// KEYS nodes. ARGV deadAfter ms. Returns id, heartbeat ms pairs of live nodes.
    static let liveNodes = RESPScript(
        source: prelude + """
            return redis.call('ZRANGEBYSCORE', KEYS[1], now_ms() - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
            """)

    /// KEYS presence. ARGV ttl ms, members… Sets each member's expiry to now + ttl; returns
    /// how many members were not there yet.
    static let presenceJoin = RESPScript(
        source: prelude + """
            local exp = now_ms() + tonumber(ARGV[1])
            local added = 0
            for i = 2, #ARGV do added = added + redis.call('HSET', KEYS[1], ARGV[i], exp) end
            redis.call('PEXPIRE', KEYS[1], ARGV[1])
            return added
            """)

    /// KEYS presence. Returns live members, deletes expired ones.
    static let presenceList = RESPScript(
        source: prelude + """
            local now = now_ms()
            local all = redis.call('HGETALL', KEYS[1])
            local out, dead = {}, {}
            for i = 1, #all, 2 do
              if tonumber(all[i + 1]) > now then out[#out + 1] = all[i] else dead[#dead + 1] = all[i] end
            end
            if #dead > 0 then redis.call('HDEL', KEYS[1], unpack(dead)) end
            return out
            """)

    /// KEYS meta… (any number, one server only). Returns epoch, top for each ('' and 0 for a
    /// stream that does not exist; nothing is created).
    static let tops = RESPScript(
        source: """
            local out = {}
            for i = 1, #KEYS do
              local m = redis.call('HMGET', KEYS[i], 'epoch', 'top')
              out[#out + 1] = m[1] or ''
              out[#out + 1] = tonumber(m[2] or '0')
            end
            return out
            """)

    /// KEYS bucket; ARGV rate (tokens/s), burst. A token bucket in Redis time, so every node
    /// shares it. Returns 1 if a token was taken, 0 if the bucket is empty.
    static let takeToken = RESPScript(
        source: """
            local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
            local t = redis.call('TIME')
            local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
            local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
            local tokens = burst
            if b[1] then tokens = math.min(burst, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate) end
            local taken = 0
            if tokens >= 1 then tokens = tokens - 1; taken = 1 end
            redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
            redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
            return taken
            """)

    static let all: [RESPScript] = [
        publish, read, ack, endHold, newEpoch, nodeSessionIndex, sessionCursor, saveSession, touchSession, restoreSession, nodeHeartbeat, nodeInfo,
        liveNodes,
        presenceJoin, presenceList, tops, takeToken,
    ]
}
