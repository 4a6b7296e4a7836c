// Requests and token refreshes of a SwitchboardClient: each waits for the answer with its `r`,
// survives reconnects (resent after the next HELLO) and times out. The methods are mixed into
// SwitchboardClient (client.js) and share its fields (`_pending`, `_nextR`…).

import { encodeBody, encodeFrame, encodeTarget } from './frame.js';
import { makeError } from './errors.js';

const RESERVED_METHODS = new Set(['HELLO', 'PUSH', 'ERR', 'SUB', 'UNSUB', 'ACK', 'AUTH']);
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

function randomKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  let s = '';
  for (let i = 0; i < 4; i++) s += Math.floor(Math.random() * 0x100000000).toString(36);
  return s;
}

export class Requests {
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

  // An answer with the `r` of something pending: a request, AUTH, or our SUB/UNSUB/ACK.
  _settle(r, p, f) {
    this._pending.delete(r);
    if (p.kind === 'sub') {
      // e.g. ERR429/ERR400 for our SUB; ignored when a newer SUB superseded it (or it was dropped)
      if (this._book.subscribeFailed(p.stream, r)) this._subFailed(p.stream, f.status, f.body);
      return;
    }
    if (p.kind === 'unsub') return;
    if (p.kind === 'ack') {
      const s = this._book.get(p.stream);
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
}
