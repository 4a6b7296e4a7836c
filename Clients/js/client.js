// The connection loop of the Switchboard client: connect with a token, back off and reconnect,
// HELLO and session resume, dispatch of incoming frames, timers. Subscriptions (subscriptions.js)
// and requests (requests.js) are mixed into the class; per-stream state is a StreamBook
// (stream-book.js), saved by Persistence (persistence.js).

import { parseFrame } from './frame.js';
import { backoffDelay } from './backoff.js';
import { makeError } from './errors.js';
import { Persistence } from './persistence.js';
import { Requests } from './requests.js';
import { StreamBook } from './stream-book.js';
import { Subscriptions } from './subscriptions.js';

const SUBPROTOCOL = 'switchboard.v1';
const OPEN = 1; // WebSocket.OPEN
// Timers of one connection: cleared when its socket closes (and by close(), with the reconnect timer).
const CONNECTION_TIMERS = ['_stableTimer', '_ackTimer', '_idleAckTimer', '_ackRetryTimer', '_subRetryTimer'];

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
    this._book = new StreamBook(); // stream -> resume state and handlers
    this._store = new Persistence(options.storage, this._opts.storageKey);
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
    const sid = this._store.load(this._book);
    if (sid) this.sessionId = sid;
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
    this._book.connectionLost();
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
      if (this._book.forget(old) || this._book.forget('/sessions/' + prev)) this._persistStreams();
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
    this._store.saveSession(sid);
  }

  _persistStreams() {
    this._store.saveStreams(this._book);
  }
}

// Copies the methods of `sources` onto `target`: one class, its code in several modules.
function mixin(target, ...sources) {
  for (const source of sources) {
    for (const name of Object.getOwnPropertyNames(source.prototype)) {
      if (name === 'constructor') continue;
      Object.defineProperty(target.prototype, name, Object.getOwnPropertyDescriptor(source.prototype, name));
    }
  }
}

// subscribe, unsubscribe, position (subscriptions.js); request, refreshToken (requests.js).
mixin(SwitchboardClient, Subscriptions, Requests);

export default SwitchboardClient;
