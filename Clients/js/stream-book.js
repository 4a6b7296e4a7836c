// Per-stream resume state (protocol §9) as pure logic: no sockets, timers or storage.
// The sibling of the Swift client's StreamBook (Sources/SwitchboardClient/StreamBook.swift);
// Tests/Fixtures/resume-rules.json holds the cases both books must decide alike.

// A message tag (META `t`): six of [0-9a-z] today; anything else a server sends is taken as "no tag".
export const TAG = /^[0-9A-Za-z_.~-]{1,32}$/;

/** An offset `id`: a plain decimal 0…2^53−1, else null (treated like a missing `id`). */
export function toOffset(value) {
  if (value === undefined || !/^\d+$/.test(value)) return null;
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : null;
}

/** A message tag `t`, or null (absent, empty, or not a tag: an older server, no check on resume). */
export function toTag(value) {
  return typeof value === 'string' && TAG.test(value) ? value : null;
}

/** An epoch `e`, or null when absent or empty (an empty one is never kept nor sent as `e=`). */
export function toEpoch(value) {
  return typeof value === 'string' && value !== '' ? value : null;
}

// A position from a SUB reply (or an epoch change): the message there is unknown, so no tag.
// It counts as acked: the server recorded it when it answered.
function setPosition(s, id, epoch) {
  s.last = id;
  s.epoch = epoch;
  s.tag = null;
  s.acked = id;
}

export class StreamBook {
  constructor() {
    this.entries = new Map(); // stream -> entry, in subscription order
  }

  get(stream) {
    return this.entries.get(stream);
  }

  /** The entry of `stream`, made (position unknown, no handler) when it has none. */
  entry(stream) {
    let s = this.entries.get(stream);
    if (!s) {
      s = {
        last: null, // offset handed to the application
        epoch: null,
        tag: null, // of the message at `last`; null when `last` came from a SUB reply (or it had none)
        acked: null, // `last` when its ACK went out
        handlers: new Set(),
        active: false, // the server holds the subscription on this connection
        subR: null, // `r` of our SUB awaiting its reply
        subSince: false, // that SUB named `since`
        ack: true, // false: never acked (subscribe option `ack`)
        ackRetry: false, // an ACK failed: the next one asks for an answer
      };
      this.entries.set(stream, s);
    }
    return s;
  }

  /** Drops `stream`; false when it had no entry. */
  forget(stream) {
    return this.entries.delete(stream);
  }

  /**
   * Starts `stream` after a message the application (or storage) kept: `last`, its `epoch` and
   * `tag` (null: not known). It counts as acked: the SUB that resumes after it records it.
   */
  seed(stream, last, epoch, tag) {
    const s = this.entry(stream);
    s.last = last;
    s.epoch = toEpoch(epoch);
    s.tag = tag;
    s.acked = last;
    return s;
  }

  /** `since`/`epoch`/`tag` of the SUB (with `r`) to send for `stream`; it now awaits the reply. */
  prepareSubscribe(stream, r) {
    const s = this.entry(stream);
    s.subR = r;
    s.subSince = s.last !== null;
    if (s.last === null) return { since: null, epoch: null, tag: null };
    return { since: s.last, epoch: s.epoch, tag: s.tag };
  }

  /** Our SUB `r` was answered by an ERR frame: false when a newer SUB superseded it (or none). */
  subscribeFailed(stream, r) {
    const s = this.entries.get(stream);
    if (!s || s.subR !== r) return false;
    s.subR = null;
    return true;
  }

  /**
   * A SUB reply; `r` is that of our SUB it answers, null when unsolicited. Returns
   * 'ignore', 'subscribed' (position set or kept, to save), 'kept' (unsolicited, nothing
   * changed), 'resubscribe' (messages were missed), 'notRecovered' or 'refused'.
   */
  subscribeReply(stream, status, id, epoch, r) {
    epoch = toEpoch(epoch);
    if (r !== null) {
      const s = this.entries.get(stream);
      if (!s || s.subR !== r) return 'ignore'; // unsubscribed or superseded meanwhile
      s.subR = null;
      if (status === 200 && id !== null) {
        s.active = true;
        if (epoch !== null) s.epoch = epoch;
        if (!s.subSince || s.last === null) {
          // live from the top: no message known there
          s.last = id;
          s.tag = null;
          s.acked = id;
        }
        return 'subscribed';
      }
      if (status === 410 && id !== null) {
        s.active = true;
        setPosition(s, id, epoch);
        return 'notRecovered';
      }
      return 'refused';
    }
    // Unsolicited: a built-in stream (§3.3), or an epoch change on a live subscription (§4.2).
    if (id === null) return 'ignore';
    const s = this.entry(stream);
    s.active = true;
    if (status === 410) {
      setPosition(s, id, epoch);
      return 'notRecovered';
    }
    if (status !== 200) return 'ignore';
    if (s.subR !== null) return 'ignore'; // our own SUB (with since) will position it
    if (s.last !== null && s.epoch === epoch) {
      // id <= last: the server resumes from its acked offset, duplicates are dropped
      if (id <= s.last) return 'kept';
      if (s.handlers.size > 0) return 'resubscribe'; // missed some: recover them
      setPosition(s, id, epoch);
      return 'subscribed';
    }
    if (s.last !== null && s.handlers.size > 0) {
      setPosition(s, id, epoch); // epoch changed
      return 'notRecovered';
    }
    setPosition(s, id, epoch);
    return 'subscribed';
  }

  /**
   * A PUSH with offset `id` (epoch and tag as received). Returns 'ignore' (not subscribed),
   * 'deliver' (now `last`), 'drop' (a duplicate, position unknown yet, or a gap or epoch change
   * a pending SUB will settle), 'resubscribe' (a gap: SUB with since = last) or 'notRecovered':
   * the epoch changed (§9.4), the position restarts before this push: report it, then offer
   * the push again (it is delivered as the first of the new epoch).
   */
  push(stream, id, epoch, tag) {
    epoch = toEpoch(epoch);
    const s = this.entries.get(stream);
    if (!s) return 'ignore';
    if (epoch !== null && s.epoch !== null && epoch !== s.epoch) {
      if (s.subR !== null) return 'drop'; // the pending SUB's reply will reposition us
      setPosition(s, id - 1, epoch);
      return 'notRecovered';
    }
    if (s.last === null) return 'drop'; // position unknown until the SUB reply
    if (s.epoch === null && epoch !== null) s.epoch = epoch;
    if (id <= s.last) return 'drop';
    // gap (should not happen): drop this one, the replay brings it again
    if (id > s.last + 1) return s.subR === null ? 'resubscribe' : 'drop';
    s.last = id;
    s.tag = toTag(tag);
    return 'deliver';
  }

  /** Streams with an ACK due: acks wanted, subscribed, and `last` past what was acked. */
  *acksDue() {
    for (const [stream, s] of this.entries) {
      if (s.ack && s.active && s.last !== null && s.last !== s.acked) yield [stream, s];
    }
  }

  /** ACK503: the ack of `stream` is lost; false when it is not acked at all. */
  ackFailed(stream) {
    const s = this.entries.get(stream);
    if (!s || !s.ack) return false;
    s.ackRetry = true;
    s.acked = null;
    return true;
  }

  /** The connection went away: nothing subscribed, no SUB awaiting a reply. */
  connectionLost() {
    for (const s of this.entries.values()) {
      s.active = false;
      s.subR = null;
      // An ack that failed (or whose retry was not answered) goes again after the resubscribe.
      if (s.ackRetry) s.acked = null;
    }
  }
}
