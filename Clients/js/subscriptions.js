// The stream side of a SwitchboardClient: subscribe, SUB replies, pushes, acks. What to do
// with each frame is the StreamBook's decision (stream-book.js); this part sends, saves, emits
// and runs the timers. The methods are mixed into SwitchboardClient (client.js) and share its
// fields (`_book`, `_pending`, `_nextR`…).

import { encodeFrame, encodeTarget } from './frame.js';
import { backoffDelay } from './backoff.js';
import { errorCode, makeError } from './errors.js';
import { TAG, toOffset } from './stream-book.js';

function isBuiltinStream(stream) {
  return stream === '/broadcast' || /^\/(?:users|sessions)\/[^/?]+$/.test(stream);
}

export class Subscriptions {
  subscribe(stream, handler, options = {}) {
    if (typeof handler !== 'function') throw new TypeError('handler must be a function');
    const { since, epoch, tag, ack } = options || {};
    if (since !== undefined && since !== null && (!Number.isSafeInteger(since) || since < 0)) {
      throw new RangeError('since must be a non-negative integer');
    }
    if (tag !== undefined && tag !== null && (typeof tag !== 'string' || !TAG.test(tag))) {
      throw new TypeError('tag must be a message tag (letters, digits, "_.~-", at most 32)');
    }
    const name = encodeTarget(stream);
    const s = this._book.entry(name);
    if (ack !== undefined) s.ack = ack !== false;
    const reposition = since !== undefined && since !== null;
    if (reposition) {
      // Start after `since` whatever was known: the server replays since+1 … (or answers SUB410).
      // `tag`: the message at `since`, when the application kept it.
      this._book.seed(name, since, typeof epoch === 'string' ? epoch : null, tag ?? null);
      s.active = false;
      this._persistStreams();
    }
    const entry = (body, info) => handler(body, info);
    s.handlers.add(entry);
    // A SUB already in flight for the old position is superseded: its reply is ignored.
    if (this._state === 'open' && (reposition || (!s.active && s.subR === null))) this._sendSub(name);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      s.handlers.delete(entry);
      if (s.handlers.size > 0 || this._book.get(name) !== s) return;
      this._drop(name, s);
    };
  }

  /** Drop every handler of `stream` and unsubscribe; false when it had none. */
  unsubscribe(stream) {
    const name = encodeTarget(stream);
    const s = this._book.get(name);
    if (!s || s.handlers.size === 0) return false;
    s.handlers.clear();
    this._drop(name, s);
    return true;
  }

  _drop(name, s) {
    if (isBuiltinStream(name)) return; // keep tracking the server's own subscriptions
    if (this._state === 'open' && (s.active || s.subR !== null)) {
      const r = this._nextR++;
      this._pending.set(r, { kind: 'unsub', stream: name });
      this._send(encodeFrame({ method: 'UNSUB', target: name, meta: { r } }));
    }
    if (s.subR !== null) this._pending.delete(s.subR);
    this._book.forget(name);
    this._persistStreams();
  }

  /** Current `{last, epoch, tag}` of a stream, or null when it is not tracked. */
  position(stream) {
    const s = this._book.get(encodeTarget(stream));
    return s ? { last: s.last, epoch: s.epoch, tag: s.tag } : null;
  }

  // §9.2: (re)subscribe every wanted stream that has no subscription and no SUB in flight,
  // with since/e/t when its position is known. Refused streams are gone: they are not sent again.
  _resubscribe() {
    for (const [stream, s] of this._book.entries) {
      if (s.handlers.size > 0 && !s.active && s.subR === null) this._sendSub(stream);
    }
  }

  _sendSub(stream) {
    const r = this._nextR++;
    const { since, epoch, tag } = this._book.prepareSubscribe(stream, r);
    const meta = { r };
    if (since !== null) {
      meta.since = since;
      if (epoch !== null) meta.e = epoch;
      if (tag !== null) meta.t = tag; // the server answers SUB410 if it keeps another message there
    }
    this._pending.set(r, { kind: 'sub', stream });
    this._send(encodeFrame({ method: 'SUB', target: stream, meta }));
  }

  // `r`: that of our SUB this answers (null: unsolicited, or not ours).
  _onSubReply(f, r) {
    const stream = f.target;
    if (r !== null) this._pending.delete(r);
    const outcome = this._book.subscribeReply(stream, f.status, toOffset(f.meta.id), f.meta.e ?? null, r);
    const s = this._book.get(stream);
    switch (outcome) {
      case 'subscribed':
        if (r !== null) this._subRetryAttempt = 0;
        this._persistStreams();
        this._maybeAck(s);
        break;
      case 'kept':
        this._maybeAck(s);
        break;
      case 'resubscribe':
        this._sendSub(stream);
        this._maybeAck(s);
        break;
      case 'notRecovered':
        // SUB410 says why in its body; an unsolicited SUB200 on another epoch does not.
        this._notRecovered(stream, s, f.status === 410 ? f.body : 'epoch changed');
        break;
      case 'refused':
        this._subFailed(stream, f.status, f.body);
        break;
    }
  }

  _notRecovered(stream, s, reason) {
    this._persistStreams();
    this._emit('notRecovered', { stream, reason, offset: s.last, epoch: s.epoch });
  }

  // A SUB answered with an error. Not now (5xx: the engine is away; 429 for too many requests or
  // the rate limit): sent again after a backoff. Refused (any other 4xx: 403/404 from the route,
  // 400, SUB429 too_many_subscriptions, which lasts until the application unsubscribes from
  // another stream): the subscription ends, as if unsubscribed, so that no HELLO or retry sends
  // it again; the error event (ended: true) is the application's only notice.
  _subFailed(stream, status, body) {
    const retry = status >= 500 || (status === 429 && errorCode(body) !== 'too_many_subscriptions');
    const ended = !retry && status >= 400 && status < 500;
    if (ended) {
      const s = this._book.get(stream);
      if (s) {
        s.handlers.clear();
        this._drop(stream, s); // UNSUB only if the server still holds it (a refused gap resubscribe)
      }
    }
    this._emit('error', makeError(`subscribe ${stream} refused: ${status}`, { code: 'subscribe', stream, status, body, ended }));
    if (retry && this._subRetryTimer === null) {
      const { minDelay, maxDelay, random } = this._opts;
      const delay = Math.max(minDelay, backoffDelay(this._subRetryAttempt++, minDelay, maxDelay, random));
      this._subRetryTimer = setTimeout(() => {
        this._subRetryTimer = null;
        if (this._state === 'open') this._resubscribe();
      }, delay);
    }
  }

  _onPush(f) {
    const stream = f.target;
    const id = toOffset(f.meta.id);
    if (id === null) return; // not a stream message
    const e = f.meta.e ?? null;
    let decision = this._book.push(stream, id, e, f.meta.t);
    if (decision === 'notRecovered') {
      // §9.4: epoch changed under us: not recovered, continue from this message.
      this._notRecovered(stream, this._book.get(stream), 'epoch changed');
      decision = this._book.push(stream, id, e, f.meta.t);
    }
    if (decision === 'resubscribe' && this._state === 'open') this._sendSub(stream);
    if (decision !== 'deliver') return;
    const s = this._book.get(stream);
    this._persistStreams();
    const info = { stream, offset: id, epoch: s.epoch, tag: s.tag };
    for (const handler of [...s.handlers]) {
      try {
        handler(f.body, info);
      } catch (err) {
        this._emit('error', err);
      }
    }
    if (s.ack) this._scheduleAck();
  }

  // ----- acks --------------------------------------------------------------

  _maybeAck(s) {
    if (s.ack && s.last !== null && s.last !== s.acked) this._scheduleAck();
  }

  // Acks go out `ackIdle` ms after the flow of pushes pauses, and at the latest `ackInterval`
  // ms after the first unacked push while it keeps flowing.
  _scheduleAck() {
    const { ackInterval, ackIdle } = this._opts;
    if (ackIdle > 0 && ackIdle < ackInterval) {
      if (this._idleAckTimer !== null) clearTimeout(this._idleAckTimer);
      this._idleAckTimer = setTimeout(() => {
        this._idleAckTimer = null;
        this._flushAcks();
      }, ackIdle);
    }
    if (this._ackTimer !== null) return;
    this._ackTimer = setTimeout(() => {
      this._ackTimer = null;
      this._flushAcks();
    }, ackInterval);
  }

  _flushAcks() {
    this._clearTimers(['_ackTimer', '_idleAckTimer']);
    if (this._state !== 'open') return;
    for (const [stream, s] of this._book.acksDue()) {
      // The retry of a failed ack asks for an answer (ACK200), to know when the engine is back.
      const r = s.ackRetry ? this._nextR++ : undefined;
      if (this._send(encodeFrame({ method: 'ACK', target: stream, meta: { r, id: s.last } }))) {
        s.acked = s.last;
        if (r !== undefined) this._pending.set(r, { kind: 'ack', stream, id: s.last });
      }
    }
  }

  // ACK503 (the engine could not record it, §4.4): the ack is lost. Keep the stream marked,
  // send its highest processed offset again later (backing off while it keeps failing), and
  // after a reconnect.
  _ackFailed(stream) {
    if (!this._book.ackFailed(stream)) return;
    if (this._ackRetryTimer !== null || this._state !== 'open') return;
    const { ackInterval, maxDelay, random } = this._opts;
    const base = Math.max(1, ackInterval);
    const delay = Math.max(base, backoffDelay(this._ackRetryAttempt++, base, Math.max(base, maxDelay), random));
    this._ackRetryTimer = setTimeout(() => {
      this._ackRetryTimer = null;
      this._flushAcks();
    }, delay);
  }
}
