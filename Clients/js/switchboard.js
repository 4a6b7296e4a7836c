// Switchboard browser client (protocol v1, see docs/protocol.md).
// One ES module, no dependencies, no build step.

const SUBPROTOCOL = 'switchboard.v1';
const OPEN = 1; // WebSocket.OPEN
const MAX_FIELD = 4096;
const RESERVED_METHODS = new Set(['HELLO', 'PUSH', 'ERR', 'SUB', 'UNSUB', 'ACK', 'AUTH']);
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);
const META_KEY = /^[a-z0-9_-]{1,32}$/;
const META_VALUE = /^[\x21-\x7e]*$/;
const TARGET = /^\/(?:[\x21-\x24\x26-\x7b\x7d\x7e]|%[0-9A-Fa-f]{2})*$/; // printable, no '|', valid %XX
const HEAD = /^([A-Z]{1,16})(\d{3})?$/;
// A message tag (META `t`): six of [0-9a-z] today; anything else a server sends is taken as "no tag".
const TAG = /^[0-9A-Za-z_.~-]{1,32}$/;
// Timers of one connection: cleared when its socket closes (and by close(), with the reconnect timer).
const CONNECTION_TIMERS = ['_stableTimer', '_ackTimer', '_idleAckTimer', '_ackRetryTimer', '_subRetryTimer'];

// ---------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------

/**
 * Parse one frame `HEAD|TARGET|META|BODY`. Returns
 * `{method, status, target, meta, body}` (status is a number or null, meta a plain
 * object of raw string values) or `null` when the frame is malformed.
 */
export function parseFrame(text) {
  if (typeof text !== 'string') return null;
  const i1 = text.indexOf('|');
  if (i1 < 0) return null;
  const i2 = text.indexOf('|', i1 + 1);
  if (i2 < 0) return null;
  const i3 = text.indexOf('|', i2 + 1);
  if (i3 < 0) return null;
  const head = HEAD.exec(text.slice(0, i1));
  if (!head) return null;
  const status = head[2] === undefined ? null : Number(head[2]);
  if (status !== null && status < 100) return null;
  const target = text.slice(i1 + 1, i2);
  if (target.length > MAX_FIELD || !TARGET.test(target)) return null;
  const metaText = text.slice(i2 + 1, i3);
  if (metaText.length > MAX_FIELD) return null;
  const meta = {};
  if (metaText !== '') {
    for (const pair of metaText.split(';')) {
      const eq = pair.indexOf('=');
      if (eq < 0) return null;
      const key = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      if (!META_KEY.test(key) || !META_VALUE.test(value) || value.includes('=')) return null;
      if (Object.prototype.hasOwnProperty.call(meta, key)) return null;
      Object.defineProperty(meta, key, { value, enumerable: true, writable: true, configurable: true });
    }
  }
  return { method: head[1], status, target, meta, body: text.slice(i3 + 1) };
}

function percentEncode(ch) {
  let out = '';
  for (const b of new TextEncoder().encode(ch)) out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  return out;
}

/** Percent-encode what a TARGET may not hold; throws on '|' or a missing leading '/'. */
export function encodeTarget(target) {
  if (typeof target !== 'string' || !target.startsWith('/')) throw new TypeError('target must start with "/"');
  if (target.includes('|')) throw new TypeError('target must not contain "|"');
  let out = '';
  for (let i = 0; i < target.length; i++) {
    const ch = target[i];
    const c = target.charCodeAt(i);
    if (ch === '%' && /^[0-9A-Fa-f]{2}$/.test(target.slice(i + 1, i + 3))) out += ch;
    else if (ch === '%') out += '%25';
    else if (c > 0x20 && c < 0x7f) out += ch;
    else {
      const cp = target.codePointAt(i);
      const s = String.fromCodePoint(cp);
      out += percentEncode(s);
      i += s.length - 1;
    }
  }
  if (out.length > MAX_FIELD) throw new RangeError('target longer than 4096 bytes');
  return out;
}

function encodeMetaValue(value) {
  const s = String(value);
  let out = '';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (c > 0x20 && c < 0x7f && ch !== '|' && ch !== ';' && ch !== '=') out += ch;
    else out += percentEncode(ch);
  }
  return out;
}

/** Encode a body: strings as-is, undefined as empty, anything else JSON. */
export function encodeBody(body) {
  if (body === undefined) return '';
  if (typeof body === 'string') return body;
  return JSON.stringify(body);
}

/**
 * Encode `{method, status?, target, meta?, body?}` to `HEAD|TARGET|META|BODY`.
 * Meta values that are not allowed on the wire are percent-encoded. Throws on an
 * invalid method, status, target or meta key.
 */
export function encodeFrame({ method, status = null, target, meta = {}, body } = {}) {
  if (typeof method !== 'string' || !/^[A-Z]{1,16}$/.test(method)) throw new TypeError('method must be 1-16 letters A-Z');
  let head = method;
  if (status !== null && status !== undefined) {
    if (!Number.isInteger(status) || status < 100 || status > 999) throw new RangeError('status must be 100-999');
    head += String(status);
  }
  const parts = [];
  for (const [key, value] of Object.entries(meta)) {
    if (value === undefined || value === null) continue;
    if (!META_KEY.test(key)) throw new TypeError(`bad meta key "${key}"`);
    parts.push(key + '=' + encodeMetaValue(value));
  }
  const metaText = parts.join(';');
  if (metaText.length > MAX_FIELD) throw new RangeError('meta longer than 4096 bytes');
  return head + '|' + encodeTarget(target) + '|' + metaText + '|' + encodeBody(body);
}

/** Full-jitter exponential backoff: random() * min(maxDelay, minDelay * 2^attempt). */
export function backoffDelay(attempt, minDelay = 500, maxDelay = 20000, random = Math.random) {
  const cap = Math.min(maxDelay, minDelay * Math.pow(2, Math.max(0, attempt)));
  return random() * cap;
}

function isBuiltinStream(stream) {
  return stream === '/broadcast' || /^\/(?:users|sessions)\/[^/?]+$/.test(stream);
}

/** An offset `id`: a plain decimal 0…2^53−1, else null (treated like a missing `id`). */
function toOffset(value) {
  if (value === undefined || !/^\d+$/.test(value)) return null;
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : null;
}

/** A message tag `t`, or null (absent, empty, or not a tag: an older server, no check on resume). */
function toTag(value) {
  return typeof value === 'string' && TAG.test(value) ? value : null;
}

/** The `error` field of a JSON error body (`{"error":"…","reason":"…"}`), or null. */
function errorCode(body) {
  try {
    const value = JSON.parse(body);
    return value && typeof value.error === 'string' ? value.error : null;
  } catch {
    return null;
  }
}

function randomKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  let s = '';
  for (let i = 0; i < 4; i++) s += Math.floor(Math.random() * 0x100000000).toString(36);
  return s;
}

function makeError(message, props) {
  return Object.assign(new Error(message), props);
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

export class SwitchboardClient {
  constructor(url, options = {}) {
    if (typeof url !== 'string' || url === '') throw new TypeError('url is required');
    this.url = url;
    this._opts = {
      minDelay: 500,
      maxDelay: 20000,
      stableAfter: 10000,
      ackInterval: 1000,
      ackIdle: 250,
      requestTimeout: 10000,
      rateLimitDelay: 5000,
      storageKey: 'switchboard',
      random: Math.random,
      ...options,
    };
    this._tokenSource = options.token;
    this._token = typeof options.token === 'string' ? options.token : null;
    this._storage = options.storage || null;

    this._state = 'closed';
    this._listeners = new Map();
    this._ws = null;
    this._gen = 0; // invalidates async token fetches of older attempts
    this._opened = false; // current socket fired 'open'
    this._stopped = true; // no connect() yet, or close()d / terminal close
    this._attempt = 0;
    this._reconnectTimer = null;
    this._reconnectHold = false; // the pending reconnect is a 4429 back-off: 'online' does not cut it short
    this._stableTimer = null;
    this._ackTimer = null;
    this._idleAckTimer = null;
    this._ackRetryTimer = null;
    this._ackRetryAttempt = 0;
    this._subRetryTimer = null;
    this._subRetryAttempt = 0;
    this._nextR = 1;
    this._pending = new Map(); // r -> pending entry
    this._streams = new Map(); // stream -> record
    this._everClosed = false;
    this.sessionId = null;
    this.hello = null;

    this._onOnline = () => {
      if (this._state === 'reconnecting' && this._reconnectTimer !== null && !this._reconnectHold) {
        clearTimeout(this._reconnectTimer);
        this._reconnectTimer = null;
        this._open();
      }
    };
    this._load();
  }

  /** 'connecting' | 'open' | 'reconnecting' | 'closed' */
  get state() {
    return this._state;
  }

  on(event, fn) {
    if (typeof fn !== 'function') throw new TypeError('listener must be a function');
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  _emit(event, payload) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (err) {
        if (event !== 'error') this._emit('error', err);
      }
    }
  }

  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._emit('state', state);
  }

  // ----- lifecycle ---------------------------------------------------------

  connect() {
    if (!this._stopped) return;
    this._stopped = false;
    this._attempt = 0;
    if (typeof globalThis.addEventListener === 'function') globalThis.addEventListener('online', this._onOnline);
    this._setState('connecting');
    this._open();
  }

  close() {
    const wasStopped = this._stopped;
    this._flushAcks();
    this._stop();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try {
        ws.close(1000);
      } catch {}
    }
    this._resetConnectionState();
    this._rejectPending(makeError('client closed', { code: 'closed' }));
    this._setState('closed');
    if (ws || !wasStopped) this._emit('close', { code: 1000, reason: 'client closed', wasClean: true, willReconnect: false });
  }

  _stop() {
    this._stopped = true;
    this._gen++;
    this._clearTimers(['_reconnectTimer', ...CONNECTION_TIMERS]);
    if (typeof globalThis.removeEventListener === 'function') globalThis.removeEventListener('online', this._onOnline);
  }

  _clearTimers(names) {
    for (const t of names) {
      if (this[t] !== null) clearTimeout(this[t]);
      this[t] = null;
    }
  }

  _open() {
    if (this._stopped) return;
    const gen = ++this._gen;
    let token;
    try {
      token = this._getToken();
    } catch (err) {
      this._connectFailed(err);
      return;
    }
    if (token && typeof token.then === 'function') {
      token.then(
        (t) => {
          if (gen !== this._gen || this._stopped) return;
          this._token = t ?? null;
          this._dial(this._token);
        },
        (err) => {
          if (gen !== this._gen || this._stopped) return;
          this._connectFailed(err);
        },
      );
    } else {
      this._token = token ?? null;
      this._dial(this._token);
    }
  }

  _getToken() {
    if (this._token !== null) return this._token;
    if (typeof this._tokenSource === 'function') return this._tokenSource();
    return this._tokenSource ?? null;
  }

  _connectFailed(err) {
    this._emit('error', makeError('could not get a token: ' + (err && err.message), { cause: err }));
    this._setState('reconnecting');
    this._scheduleReconnect();
  }

  _dial(token) {
    const WS = this._opts.WebSocket || globalThis.WebSocket;
    if (typeof WS !== 'function') throw new Error('no WebSocket implementation (pass options.WebSocket)');
    const protocols = token ? [SUBPROTOCOL, 'bearer.' + token] : [SUBPROTOCOL];
    let ws;
    try {
      ws = new WS(this._connectUrl(), protocols);
    } catch (err) {
      this._emit('error', err);
      this._setState('reconnecting');
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._opened = false;
    ws.onopen = () => {
      if (ws === this._ws) this._opened = true;
    };
    ws.onmessage = (ev) => {
      if (ws === this._ws) this._onMessage(ev.data);
    };
    ws.onerror = () => {
      if (ws === this._ws) this._emit('error', makeError('WebSocket error', { code: 'socket' }));
    };
    ws.onclose = (ev) => {
      if (ws === this._ws) this._onSocketClose(ev ? ev.code : 1006, ev ? ev.reason || '' : '', !!(ev && ev.wasClean));
    };
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  }

  _connectUrl() {
    const sid = this.sessionId;
    if (!sid) return this.url;
    try {
      const base = globalThis.location ? globalThis.location.href : undefined;
      const u = new URL(this.url, base);
      u.searchParams.set('sid', sid);
      return u.toString();
    } catch {
      return this.url + (this.url.includes('?') ? '&' : '?') + 'sid=' + encodeURIComponent(sid);
    }
  }

  _resetConnectionState() {
    for (const s of this._streams.values()) {
      s.active = false;
      s.subR = null;
      // An ack that failed (or whose retry was not answered) goes again after the resubscribe.
      if (s.ackRetry) s.acked = null;
    }
    for (const [r, p] of this._pending) {
      if (p.kind === 'request' || p.kind === 'auth') p.sent = false;
      else this._pending.delete(r);
    }
  }

  _onSocketClose(code, reason, wasClean) {
    const ws = this._ws;
    this._ws = null;
    if (ws) this._detach(ws);
    this._clearTimers(CONNECTION_TIMERS);
    this._resetConnectionState();
    const terminal = this._stopped || code === 4403 || code === 4409;
    if (code === 4409) this._setSid(null); // never come back with the session another connection took
    // 4401: token expired. A failure before 'open' may be a refused upgrade (§3.1): maybe unauthorized.
    if ((code === 4401 || !this._opened) && typeof this._tokenSource === 'function') this._token = null;
    this._opened = false;
    this._emit('close', { code, reason, wasClean, willReconnect: !terminal });
    if (terminal) {
      this._stop();
      this._rejectPending(makeError(`connection closed (${code})`, { code: 'closed', closeCode: code }));
      this._setState('closed');
      return;
    }
    this._setState('reconnecting');
    // 4429: the server closed us for exceeding its rate limit (§7): stay away longer than
    // after an ordinary drop. Unanswered requests are resent after the HELLO, with their `k`.
    this._scheduleReconnect(code === 4429 ? this._opts.rateLimitDelay : 0);
  }

  _scheduleReconnect(extraDelay = 0) {
    if (this._stopped) return;
    if (this._reconnectTimer !== null) clearTimeout(this._reconnectTimer);
    const { minDelay, maxDelay, random } = this._opts;
    const delay = extraDelay + backoffDelay(this._attempt++, minDelay, maxDelay, random);
    this._reconnectHold = extraDelay > 0;
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this._reconnectHold = false;
      this._open();
    }, delay);
  }

  // ----- incoming ----------------------------------------------------------

  _onMessage(data) {
    if (typeof data !== 'string') {
      this._emit('error', makeError('binary message ignored', { code: 'bad_frame' }));
      return;
    }
    const f = parseFrame(data);
    if (!f) {
      this._emit('error', makeError('malformed frame from server', { code: 'bad_frame', frame: data }));
      return;
    }
    if (f.method === 'HELLO' && f.status !== null) return this._onHello(f);
    if (f.method === 'PUSH') return this._onPush(f);
    const r = f.meta.r;
    const p = r !== undefined ? this._pending.get(Number(r)) : undefined;
    if (f.method === 'SUB' && f.status !== null) return this._onSubReply(f, p && p.kind === 'sub' ? Number(r) : null);
    if (p && f.status !== null) return this._settle(Number(r), p, f);
    if (f.method === 'ACK' && f.status !== null && f.status >= 500) return this._ackFailed(f.target);
    if (f.status !== null && f.status >= 400) {
      this._emit('error', makeError(`${f.method}${f.status} ${f.target}: ${f.body}`, { code: 'server', frame: f }));
    }
  }

  _onHello(f) {
    let body = {};
    try {
      body = JSON.parse(f.body) || {};
    } catch {}
    const sid = f.meta.s || body.session || null;
    const prev = this.sessionId;
    if (prev && sid && prev !== sid) {
      // a new session: the old session's private stream is gone
      const old = '/sessions/' + encodeURIComponent(prev);
      if (this._streams.delete(old) || this._streams.delete('/sessions/' + prev)) this._persistStreams();
    }
    if (sid) this._setSid(sid);
    this.hello = body;
    this._setState('open');
    if (this._stableTimer !== null) clearTimeout(this._stableTimer);
    this._stableTimer = setTimeout(() => {
      this._stableTimer = null;
      this._attempt = 0;
    }, this._opts.stableAfter);
    this._resubscribe();
    for (const [r, p] of this._pending) {
      if ((p.kind === 'request' || p.kind === 'auth') && !p.sent) this._sendPending(r, p);
    }
    this._emit('hello', body);
  }

  _record(stream) {
    let s = this._streams.get(stream);
    if (!s) {
      // last: offset handed to the application; tag: the tag of the message at `last`, null when
      // `last` came from a SUB reply (or the message had none).
      s = { last: null, epoch: null, tag: null, acked: null, handlers: new Set(), active: false, subR: null, subSince: false, ack: true, ackRetry: false };
      this._streams.set(stream, s);
    }
    return s;
  }

  // §9.2: (re)subscribe every wanted stream that has no subscription and no SUB in flight,
  // with since/e/t when its position is known. Refused streams are gone: they are not sent again.
  _resubscribe() {
    for (const [stream, s] of this._streams) {
      if (s.handlers.size > 0 && !s.active && s.subR === null) this._sendSub(stream, s);
    }
  }

  _sendSub(stream, s) {
    const r = this._nextR++;
    const meta = { r };
    if (s.last !== null) {
      meta.since = s.last;
      if (s.epoch !== null) meta.e = s.epoch;
      if (s.tag !== null) meta.t = s.tag; // the server answers SUB410 if it keeps another message there
    }
    s.subR = r;
    s.subSince = s.last !== null;
    this._pending.set(r, { kind: 'sub', stream });
    this._send(encodeFrame({ method: 'SUB', target: stream, meta }));
  }

  _onSubReply(f, r) {
    const stream = f.target;
    const id = toOffset(f.meta.id);
    const e = f.meta.e ?? null;
    if (r !== null) {
      this._pending.delete(r);
      const s = this._streams.get(stream);
      if (!s || s.subR !== r) return; // unsubscribed or superseded meanwhile
      s.subR = null;
      if (f.status === 200 && id !== null) {
        s.active = true;
        this._subRetryAttempt = 0;
        if (e !== null) s.epoch = e;
        if (!s.subSince || s.last === null) {
          s.last = id; // live from the top: no message known there
          s.tag = null;
          s.acked = id;
        }
        this._persistStreams();
        this._maybeAck(s);
      } else if (f.status === 410 && id !== null) {
        s.active = true;
        this._notRecovered(stream, s, id, e, f.body);
      } else {
        this._subFailed(stream, f.status, f.body);
      }
      return;
    }
    // Unsolicited: a built-in stream (§3.3), or an epoch change on a live subscription (§4.2).
    if (id === null) return;
    const s = this._record(stream);
    s.active = true;
    if (f.status === 410) {
      this._notRecovered(stream, s, id, e, f.body);
      return;
    }
    if (f.status !== 200) return;
    if (s.subR !== null) return; // our own SUB (with since) will position it
    if (s.last !== null && s.epoch === e) {
      if (id > s.last && s.handlers.size > 0) this._sendSub(stream, s); // missed some: recover them
      else if (id > s.last) this._setPosition(s, id, e);
      // id <= last: the server resumes from its acked offset, duplicates are dropped
      this._maybeAck(s);
      return;
    }
    if (s.last !== null && s.handlers.size > 0) {
      this._notRecovered(stream, s, id, e, 'epoch changed');
      return;
    }
    this._setPosition(s, id, e);
  }

  // A position from a SUB reply (or an epoch change): the message there is unknown, so no tag.
  _setPosition(s, id, e) {
    s.last = id;
    s.epoch = e;
    s.tag = null;
    s.acked = id;
    this._persistStreams();
  }

  _notRecovered(stream, s, id, e, reason) {
    this._setPosition(s, id, e);
    this._emit('notRecovered', { stream, reason, offset: id, epoch: e });
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
      const s = this._streams.get(stream);
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
    const s = this._streams.get(stream);
    const id = toOffset(f.meta.id);
    if (!s || id === null) return; // not (or no longer) subscribed
    const e = f.meta.e ?? null;
    if (e !== null && s.epoch !== null && e !== s.epoch) {
      if (s.subR !== null) return; // the pending SUB's reply will reposition us
      // §9.4: epoch changed under us: not recovered, continue from this message.
      this._notRecovered(stream, s, id - 1, e, 'epoch changed');
    }
    if (s.last === null) return; // position unknown until the SUB reply
    if (s.epoch === null && e !== null) s.epoch = e;
    if (id <= s.last) return; // duplicate
    if (id > s.last + 1) {
      // gap (should not happen): ask for the missing part, drop this one, the replay brings it again
      if (s.subR === null && this._state === 'open') this._sendSub(stream, s);
      return;
    }
    s.last = id;
    s.tag = toTag(f.meta.t);
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
    for (const [stream, s] of this._streams) {
      if (s.ack && s.active && s.last !== null && s.last !== s.acked) {
        // The retry of a failed ack asks for an answer (ACK200), to know when the engine is back.
        const r = s.ackRetry ? this._nextR++ : undefined;
        if (this._send(encodeFrame({ method: 'ACK', target: stream, meta: { r, id: s.last } }))) {
          s.acked = s.last;
          if (r !== undefined) this._pending.set(r, { kind: 'ack', stream, id: s.last });
        }
      }
    }
  }

  // ACK503 (the engine could not record it, §4.4): the ack is lost. Keep the stream marked,
  // send its highest processed offset again later (backing off while it keeps failing), and
  // after a reconnect.
  _ackFailed(stream) {
    const s = this._streams.get(stream);
    if (!s || !s.ack) return;
    s.ackRetry = true;
    s.acked = null;
    if (this._ackRetryTimer !== null || this._state !== 'open') return;
    const { ackInterval, maxDelay, random } = this._opts;
    const base = Math.max(1, ackInterval);
    const delay = Math.max(base, backoffDelay(this._ackRetryAttempt++, base, Math.max(base, maxDelay), random));
    this._ackRetryTimer = setTimeout(() => {
      this._ackRetryTimer = null;
      this._flushAcks();
    }, delay);
  }

  // ----- subscriptions -----------------------------------------------------

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
    const s = this._record(name);
    if (ack !== undefined) s.ack = ack !== false;
    const reposition = since !== undefined && since !== null;
    if (reposition) {
      // Start after `since` whatever was known: the server replays since+1 … (or answers SUB410).
      s.last = since;
      s.epoch = typeof epoch === 'string' ? epoch : null;
      s.tag = tag ?? null; // the message at `since`, when the application kept it
      s.acked = since;
      s.active = false;
      this._persistStreams();
    }
    const entry = (body, info) => handler(body, info);
    s.handlers.add(entry);
    // A SUB already in flight for the old position is superseded: its reply is ignored.
    if (this._state === 'open' && (reposition || (!s.active && s.subR === null))) this._sendSub(name, s);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      s.handlers.delete(entry);
      if (s.handlers.size > 0 || this._streams.get(name) !== s) return;
      this._drop(name, s);
    };
  }

  /** Drop every handler of `stream` and unsubscribe; false when it had none. */
  unsubscribe(stream) {
    const name = encodeTarget(stream);
    const s = this._streams.get(name);
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
    this._streams.delete(name);
    this._persistStreams();
  }

  /** Current `{last, epoch, tag}` of a stream, or null when it is not tracked. */
  position(stream) {
    const s = this._streams.get(encodeTarget(stream));
    return s ? { last: s.last, epoch: s.epoch, tag: s.tag } : null;
  }

  // ----- requests ----------------------------------------------------------

  request(method, url, body, options = {}) {
    let frame;
    try {
      if (typeof method !== 'string' || !/^[A-Z]{1,16}$/.test(method)) throw new TypeError('method must be 1-16 letters A-Z');
      if (RESERVED_METHODS.has(method)) throw new TypeError(`method ${method} is reserved by the protocol`);
      if (typeof url !== 'string' || !url.startsWith('/') || url.includes('|')) {
        throw new TypeError('url must start with "/" and must not contain "|"');
      }
      // Resent requests must not be applied twice: unsafe methods get a key unless told otherwise.
      let key = options.idempotencyKey;
      if (key === undefined) key = SAFE_METHODS.has(method) ? null : randomKey();
      else if (key === true) key = randomKey();
      else if (key === false) key = null;
      frame = { method, target: encodeTarget(url), meta: key == null ? {} : { k: String(key) }, body: encodeBody(body) };
    } catch (err) {
      return Promise.reject(err);
    }
    return this._enqueue('request', frame, options.timeout);
  }

  refreshToken(token) {
    const fetched = token === undefined && typeof this._tokenSource === 'function' ? this._tokenSource() : token;
    return Promise.resolve(fetched).then((t) => {
      if (typeof t !== 'string' || t === '') throw new TypeError('token must be a non-empty string');
      this._token = t; // used by later reconnects too
      return this._enqueue('auth', { method: 'AUTH', target: '/', meta: {}, body: t });
    });
  }

  _enqueue(kind, frame, timeout) {
    if (this._stopped && this._state === 'closed' && this._everClosed) {
      return Promise.reject(makeError('client closed', { code: 'closed' }));
    }
    const ms = timeout ?? this._opts.requestTimeout;
    return new Promise((resolve, reject) => {
      const r = this._nextR++;
      const p = { kind, frame, resolve, reject, sent: false, timer: null };
      p.timer = setTimeout(() => {
        this._pending.delete(r);
        reject(makeError(`${frame.method} ${frame.target} timed out after ${ms} ms`, { code: 'timeout', name: 'TimeoutError' }));
      }, ms);
      this._pending.set(r, p);
      if (this._state === 'open') this._sendPending(r, p);
    });
  }

  _sendPending(r, p) {
    const { method, target, meta, body } = p.frame;
    p.sent = this._send(encodeFrame({ method, target, meta: { r, ...meta }, body }));
  }

  _settle(r, p, f) {
    this._pending.delete(r);
    if (p.kind === 'sub') {
      // e.g. ERR429/ERR400 for our SUB; ignored when a newer SUB superseded it (or it was dropped)
      const s = this._streams.get(p.stream);
      if (!s || s.subR !== r) return;
      s.subR = null;
      this._subFailed(p.stream, f.status, f.body);
      return;
    }
    if (p.kind === 'unsub') return;
    if (p.kind === 'ack') {
      const s = this._streams.get(p.stream);
      if (f.method === 'ACK' && f.status === 200) {
        this._ackRetryAttempt = 0;
        if (s && s.last !== null && p.id >= s.last) s.ackRetry = false; // recorded up to the top
      } else if (f.status >= 500 || f.status === 429) {
        this._ackFailed(p.stream); // ACK503, or ERR429: send it again later
      }
      return;
    }
    clearTimeout(p.timer);
    const result = { status: f.status, body: f.body, meta: f.meta };
    if (p.kind === 'auth' && f.status !== 200) {
      if (typeof this._tokenSource === 'function') this._token = null; // fetch a fresh one next time
      p.reject(makeError(`token refresh refused: ${f.status}`, { code: 'auth', ...result }));
    } else {
      p.resolve(result);
    }
  }

  _rejectPending(err) {
    this._everClosed = true;
    for (const [r, p] of this._pending) {
      if (p.timer) clearTimeout(p.timer);
      if (p.reject) p.reject(err);
      this._pending.delete(r);
    }
  }

  _send(text) {
    const ws = this._ws;
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(text);
      return true;
    } catch (err) {
      this._emit('error', err);
      return false;
    }
  }

  // ----- persistence -------------------------------------------------------

  _setSid(sid) {
    if (this.sessionId === sid) return;
    this.sessionId = sid;
    this._write('.sid', sid);
  }

  _persistStreams() {
    if (!this._storage) return;
    const out = {};
    for (const [stream, s] of this._streams) {
      if (s.last === null) continue;
      out[stream] = s.tag === null ? { last: s.last, epoch: s.epoch } : { last: s.last, epoch: s.epoch, tag: s.tag };
    }
    this._write('.streams', JSON.stringify(out));
  }

  _write(suffix, value) {
    if (!this._storage) return;
    const key = this._opts.storageKey + suffix;
    try {
      if (value === null) this._storage.removeItem(key);
      else this._storage.setItem(key, value);
    } catch {
      // quota exceeded, private mode: resume then starts from the server's acked offsets
    }
  }

  _load() {
    if (!this._storage) return;
    const prefix = this._opts.storageKey;
    try {
      const sid = this._storage.getItem(prefix + '.sid');
      if (sid) this.sessionId = sid;
      const streams = JSON.parse(this._storage.getItem(prefix + '.streams') || '{}');
      for (const [stream, pos] of Object.entries(streams || {})) {
        if (!pos || !Number.isSafeInteger(pos.last) || pos.last < 0) continue;
        const s = this._record(stream);
        s.last = pos.last;
        s.epoch = typeof pos.epoch === 'string' ? pos.epoch : null;
        s.tag = toTag(pos.tag);
        s.acked = pos.last;
      }
    } catch {
      // corrupt storage: start fresh
    }
  }
}

export default SwitchboardClient;
