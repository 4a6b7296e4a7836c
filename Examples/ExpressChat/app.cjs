// An Express chat application behind Switchboard gateway nodes (see README.md).
//
// Express owns the users, the rooms and the rules: its own session cookie, its own auth, role,
// validation and rate-limit middleware. The gateway nodes own the WebSockets: they name each
// connection's user by asking POST /switchboard/connect (with the browser's cookie), ask
// POST /switchboard/subscribe before a SUB to /rooms/<room>, and send every request frame no
// route of theirs answers (`POST|/rooms/lobby/messages|r=7|{"text":"hi"}`) here as a signed HTTP
// request. So one Express route answers both `curl` (with the cookie) and a browser's frame.
// Messages are published to the stream /rooms/<room> through the gateways' server API.
//
// Environment:
//   PORT (3000), HOST (127.0.0.1)
//   BACKEND_SECRET     the gateways' --backend-secret (required): key of the signed headers
//   GATEWAY_API_KEY    one of the gateways' --api-key (required): for POST /api/publish
//   GATEWAY_URLS       the gateways' HTTP base URLs, comma-separated (http://127.0.0.1:8101):
//                      the server API is tried on each in turn until one answers
//   GATEWAY_WS_URLS    WebSocket URLs the page may connect to (default: GATEWAY_URLS as ws://…/ws)
//   ADMINS             user names that get the role "admin" at login (default "admin")
//   RATE_LIMIT, RATE_WINDOW   messages per user per window of seconds (5 per 10)
//   SESSION_TTL        seconds a login lasts (43200)
//   CLIENT_JS          directory of the browser client (default ../../Clients/js), served at /client/
// Run with Debian's node-express: NODE_PATH=/usr/share/nodejs node app.cjs. Prints "listening PORT".
'use strict';
const crypto = require('crypto');
const path = require('path');
const express = require('express');

const env = process.env;
const config = {
  port: Number(env.PORT || 3000),
  host: env.HOST || '127.0.0.1',
  secret: env.BACKEND_SECRET || '',
  apiKey: env.GATEWAY_API_KEY || '',
  gateways: list(env.GATEWAY_URLS || 'http://127.0.0.1:8101').map((u) => u.replace(/\/+$/, '')),
  admins: new Set(list(env.ADMINS || 'admin')),
  rateLimit: Number(env.RATE_LIMIT || 5),
  rateWindow: Number(env.RATE_WINDOW || 10) * 1000,
  sessionTTL: Number(env.SESSION_TTL || 12 * 3600) * 1000,
  clientJs: path.resolve(env.CLIENT_JS || path.join(__dirname, '../../Clients/js')),
};
config.wsUrls = env.GATEWAY_WS_URLS ? list(env.GATEWAY_WS_URLS) : config.gateways.map((u) => u.replace(/^http/, 'ws') + '/ws');
if (config.secret.length < 16) fail('BACKEND_SECRET must be set (at least 16 bytes, the gateways\' --backend-secret)');
if (!config.apiKey) fail('GATEWAY_API_KEY must be set (one of the gateways\' --api-key)');

function list(text) {
  return text.split(',').map((s) => s.trim()).filter(Boolean);
}

function fail(message) {
  console.error(message);
  process.exit(2);
}

const USER_NAME = /^[A-Za-z0-9_-]{1,24}$/;
const ROOM_NAME = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const ROOMS = ['lobby', 'random', 'staff']; // the page's list; any valid name works
const STAFF_ONLY = new Set(['staff']);
const MAX_TEXT = 500;

const app = express();
app.disable('x-powered-by');
app.set('trust proxy', false);
app.set('etag', false); // answers are not cached (and a frame would carry it as META etag)

// ----- sessions: an HttpOnly cookie `sid` naming an entry of this map ---------------------------
// In memory: one Express process. Several would keep sessions in a shared store (Redis…).

const sessions = new Map(); // sid -> { user, roles, expiresAt (ms) }

function parseCookies(header) {
  const out = {};
  for (const part of (header || '').split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const name = part.slice(0, eq).trim();
    if (name && !(name in out)) out[name] = part.slice(eq + 1).trim();
  }
  return out;
}

function sessionOf(cookieHeader) {
  const sid = parseCookies(cookieHeader).sid;
  const session = sid ? sessions.get(sid) : undefined;
  if (!session) return null;
  if (session.expiresAt <= Date.now()) {
    sessions.delete(sid);
    return null;
  }
  return session;
}

setInterval(() => {
  const now = Date.now();
  for (const [sid, s] of sessions) if (s.expiresAt <= now) sessions.delete(sid);
}, 60000).unref();

// ----- the gateway's signed identity headers --------------------------------------------------

// Switchboard-Signature: v1=hex(HMAC-SHA256(secret, lines joined by "\n")) over
// v1, timestamp, METHOD, target (path+query), user, roles, session, connection, node, transport,
// hex(sha256(body)), each exactly as its header carries it (absent: empty).
function verifySignature(req, rawBody) {
  const h = (name) => req.get(name) || '';
  const timestamp = h('Switchboard-Timestamp');
  const lines = ['v1', timestamp, req.method, req.originalUrl, h('Switchboard-User'), h('Switchboard-Roles'), h('Switchboard-Session'),
    h('Switchboard-Connection'), h('Switchboard-Node'), h('Switchboard-Transport'), crypto.createHash('sha256').update(rawBody).digest('hex')];
  const expected = Buffer.from('v1=' + crypto.createHmac('sha256', config.secret).update(lines.join('\n')).digest('hex'));
  const given = Buffer.from(h('Switchboard-Signature'));
  // Same length first (timingSafeEqual needs it; the length of a hex MAC is no secret).
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return 'bad signature';
  if (!/^\d{1,12}$/.test(timestamp) || Math.abs(Date.now() / 1000 - Number(timestamp)) > 60) return 'stale timestamp';
  return null;
}

function decodeHeader(value) {
  try {
    return decodeURIComponent(value);
  } catch {
    return null;
  }
}

// Every body is read raw (the signature covers its bytes), then parsed as JSON when there is one.
app.use(express.raw({ type: () => true, limit: '64kb' }));
app.use((req, res, next) => {
  req.rawBody = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
  req.json = null;
  if (req.rawBody.length > 0) {
    try {
      req.json = JSON.parse(req.rawBody.toString('utf8'));
    } catch {
      req.json = undefined; // not JSON
    }
  }
  next();
});

// ----- auth: who is asking, over either transport ---------------------------------------------
// A request from a gateway (a WebSocket frame, or one of its hooks) carries Switchboard-Signature:
// it is verified, and the identity comes from the signed headers. Any other request is plain
// HTTP: the identity comes from the session cookie. Unsigned Switchboard-* headers mean nothing.
app.use((req, res, next) => {
  req.identity = null;
  if (req.get('Switchboard-Signature') !== undefined) {
    const problem = verifySignature(req, req.rawBody);
    if (problem) return res.status(401).json({ error: 'bad_signature', reason: problem });
    const userHeader = req.get('Switchboard-User');
    const user = userHeader === undefined ? null : decodeHeader(userHeader);
    const roles = (req.get('Switchboard-Roles') || '').split(',').filter(Boolean).map(decodeHeader);
    if ((userHeader !== undefined && !user) || roles.includes(null)) return res.status(400).json({ error: 'bad_identity' });
    req.gateway = { node: req.get('Switchboard-Node'), session: req.get('Switchboard-Session') || null, connection: req.get('Switchboard-Connection') || null };
    req.transport = req.get('Switchboard-Transport') || 'websocket';
    if (user) req.identity = { user, roles };
    return next();
  }
  req.gateway = null;
  req.transport = 'http';
  const session = sessionOf(req.get('Cookie'));
  if (session) req.identity = { user: session.user, roles: session.roles };
  next();
});

const requireUser = (req, res, next) =>
  req.identity ? next() : res.status(401).json({ error: 'login_required', reason: 'log in first (POST /login)' });

const requireRole = (role) => (req, res, next) =>
  req.identity.roles.includes(role) ? next() : res.status(403).json({ error: 'forbidden', reason: `only ${role}s may do this` });

// The gateway's hooks answer gateways only: a verified signature.
const requireGateway = (req, res, next) =>
  req.gateway ? next() : res.status(401).json({ error: 'gateway_only', reason: 'this route answers signed requests from a gateway' });

/** Why `identity` may not read or post in `room`: null (allowed), or [status, error, reason]. */
function roomRefusal(room, identity) {
  if (!ROOM_NAME.test(room)) return [404, 'no_such_room', 'room names are 1-32 of a-z 0-9 _ -'];
  if (STAFF_ONLY.has(room) && !(identity && identity.roles.includes('admin'))) return [403, 'forbidden', `#${room} is for admins`];
  return null;
}

const requireRoom = (req, res, next) => {
  const refusal = roomRefusal(req.params.room, req.identity);
  if (refusal) return res.status(refusal[0]).json({ error: refusal[1], reason: refusal[2] });
  next();
};

// ----- validation ------------------------------------------------------------------------------

function validText(req, res, next) {
  const text = req.json && typeof req.json === 'object' && !Array.isArray(req.json) ? req.json.text : undefined;
  const length = typeof text === 'string' ? [...text.trim()].length : 0;
  if (typeof text !== 'string' || length < 1 || length > MAX_TEXT) {
    return res.status(422).json({ error: 'invalid_text', reason: `text must be a string of 1 to ${MAX_TEXT} characters` });
  }
  req.text = text.trim();
  next();
}

// ----- idempotency: a request sent again (after a reconnect) is answered, not applied, twice ----
// The WebSocket client gives every POST a key (META `k`, passed on by the gateway as
// Switchboard-Meta-k because it runs with --backend-meta k); curl may send Idempotency-Key.
// The gateway's publish dedupes by key too: this cache only keeps a resend out of the rate limit.

const answered = new Map(); // user + key -> { at, body }

function idempotencyKey(req) {
  const key = req.get('Switchboard-Meta-k') || (req.gateway ? '' : req.get('Idempotency-Key') || '');
  return /^[\x21-\x7e]{1,128}$/.test(key) ? key : null;
}

function replayAnswered(req, res, next) {
  const key = idempotencyKey(req);
  req.idemKey = key ? `${req.identity.user}:${key}` : null;
  const hit = req.idemKey && answered.get(req.idemKey);
  if (hit) return res.status(201).json({ ...hit.body, duplicate: true, transport: req.transport });
  next();
}

setInterval(() => {
  const cutoff = Date.now() - 5 * 60000;
  for (const [key, entry] of answered) if (entry.at < cutoff) answered.delete(key);
}, 60000).unref();

// ----- rate limit: RATE_LIMIT messages per user per RATE_WINDOW, over both transports ----------

const sent = new Map(); // user -> [time ms of each accepted message]

function rateLimit(req, res, next) {
  const now = Date.now();
  const times = (sent.get(req.identity.user) || []).filter((t) => t > now - config.rateWindow);
  if (times.length >= config.rateLimit) {
    const retryAfter = Math.max(1, Math.ceil((times[0] + config.rateWindow - now) / 1000));
    sent.set(req.identity.user, times);
    res.set('Retry-After', String(retryAfter));
    return res.status(429).json({ error: 'rate_limited', reason: `at most ${config.rateLimit} messages per ${config.rateWindow / 1000} s` });
  }
  times.push(now);
  sent.set(req.identity.user, times);
  next();
}

// ----- the gateways' server API, on whichever node answers ------------------------------------

let preferred = 0; // the node that answered last is asked first

async function gatewayApi(method, apiPath, body) {
  let lastError = null;
  for (let i = 0; i < config.gateways.length; i++) {
    const index = (preferred + i) % config.gateways.length;
    try {
      const res = await fetch(config.gateways[index] + apiPath, {
        method,
        headers: { 'X-API-Key': config.apiKey, 'Content-Type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(3000),
      });
      const text = await res.text();
      // 5xx: that node cannot now (its Redis away, draining): nothing was accepted, ask another.
      if (res.status >= 500) {
        lastError = new Error(`${config.gateways[index]} answered ${res.status}: ${text}`);
        continue;
      }
      preferred = index;
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {}
      return { status: res.status, json };
    } catch (err) {
      // Refused, reset, timed out: a timed-out publish may have been applied, so every publish
      // carries an idempotency key and the next node applies it at most once.
      lastError = err;
    }
  }
  const error = new Error('no gateway answered: ' + (lastError && lastError.message));
  error.status = 503;
  throw error;
}

async function publish(room, data, key) {
  const { status, json } = await gatewayApi('POST', '/api/publish', { stream: `/rooms/${room}`, data, idempotencyKey: key });
  if (status !== 201) throw Object.assign(new Error(`publish answered ${status}: ${JSON.stringify(json)}`), { status: 502 });
  return json; // { stream, offset, epoch, duplicate }
}

const asyncRoute = (fn) => (req, res, next) => Promise.resolve(fn(req, res, next)).catch(next);

// ----- pages and login (plain HTTP) ------------------------------------------------------------

app.use('/client', express.static(config.clientJs, { index: false }));
app.use(express.static(path.join(__dirname, 'public')));

app.get('/config', (req, res) => res.json({ gateways: config.wsUrls, rooms: ROOMS }));

app.get('/me', requireUser, (req, res) => res.json({ user: req.identity.user, roles: req.identity.roles, transport: req.transport }));

app.post('/login', (req, res) => {
  const name = req.json && typeof req.json.name === 'string' ? req.json.name.trim() : '';
  if (!USER_NAME.test(name)) return res.status(422).json({ error: 'invalid_name', reason: 'names are 1-24 of A-Z a-z 0-9 _ -' });
  const sid = crypto.randomBytes(24).toString('base64url');
  const session = { user: name, roles: config.admins.has(name) ? ['admin'] : [], expiresAt: Date.now() + config.sessionTTL };
  sessions.set(sid, session);
  // HttpOnly: page scripts never see it. SameSite=Lax: other sites' POSTs do not carry it. Add
  // Secure behind HTTPS. The browser sends it to the gateway's WebSocket too: cookies are per
  // host, not per port.
  res.cookie('sid', sid, { httpOnly: true, sameSite: 'lax', path: '/', maxAge: config.sessionTTL });
  res.json({ user: session.user, roles: session.roles });
});

app.post('/logout', (req, res) => {
  const sid = parseCookies(req.get('Cookie')).sid;
  if (sid) sessions.delete(sid);
  res.clearCookie('sid', { httpOnly: true, sameSite: 'lax', path: '/' });
  res.status(204).end();
});

// ----- rooms: each route answers HTTP (cookie) and WebSocket frames (signed headers) alike ------

// POST /rooms/:room/messages {"text"} -> 201 {stream, offset, epoch, duplicate, transport}
app.post('/rooms/:room/messages', requireUser, requireRoom, validText, replayAnswered, rateLimit, asyncRoute(async (req, res) => {
  const message = { text: req.text, from: req.identity.user, at: Date.now() };
  const key = req.idemKey || `${req.identity.user}:${crypto.randomUUID()}`;
  const published = await publish(req.params.room, message, key);
  if (req.idemKey) answered.set(req.idemKey, { at: Date.now(), body: published });
  res.status(201).json({ ...published, transport: req.transport });
}));

// POST /rooms/:room/announcements {"text"}: admins only.
app.post('/rooms/:room/announcements', requireUser, requireRole('admin'), requireRoom, validText, replayAnswered, asyncRoute(async (req, res) => {
  const message = { text: req.text, from: req.identity.user, at: Date.now(), announcement: true };
  const key = req.idemKey || `${req.identity.user}:${crypto.randomUUID()}`;
  const published = await publish(req.params.room, message, key);
  if (req.idemKey) answered.set(req.idemKey, { at: Date.now(), body: published });
  res.status(201).json({ ...published, transport: req.transport });
}));

// GET /rooms/:room/info -> {room, top, epoch, members: [{user, connection}]}: where the room's stream stands (the page
// subscribes from a little before `top`) and who is in it.
app.get('/rooms/:room/info', requireUser, requireRoom, asyncRoute(async (req, res) => {
  const stream = `/rooms/${req.params.room}`;
  const [history, presence] = await Promise.all([
    gatewayApi('GET', `/api/history?stream=${encodeURIComponent(stream)}&after=0&limit=1`),
    gatewayApi('GET', `/api/presence?stream=${encodeURIComponent(stream)}`),
  ]);
  let top;
  let epoch;
  if (history.status === 200) {
    ({ top, epoch } = history.json);
  } else if (history.status === 410) {
    // Trimmed past offset 0: the API says where the stream is only in its message.
    const m = /the stream is at (\d+) in epoch (\S+)/.exec((history.json && history.json.error && history.json.error.message) || '');
    if (!m) throw Object.assign(new Error('history answered 410 without a position'), { status: 502 });
    top = Number(m[1]);
    epoch = m[2];
  } else {
    throw Object.assign(new Error(`history answered ${history.status}`), { status: 502 });
  }
  // Members are connections (a user with two tabs is two); the page lists each user once.
  const members = presence.status === 200 ? presence.json.members.filter((m) => m.user).map(({ user, connection }) => ({ user, connection })) : [];
  res.json({ room: req.params.room, top, epoch, members });
}));

// ----- the gateway's hooks ----------------------------------------------------------------------

// An upgrade without a token: the gateway passes the browser's Cookie. 2xx names the user; any
// other status refuses the upgrade. The connection lasts no longer than the login.
app.post('/switchboard/connect', requireGateway, (req, res) => {
  const session = sessionOf(req.get('Cookie'));
  if (!session) return res.status(401).json({ error: 'login_required', reason: 'no valid session cookie' });
  res.json({ user: session.user, roles: session.roles, expiresAt: Math.floor(session.expiresAt / 1000) });
});

// A SUB to /rooms/<room> (rule `subscribe: backend`; also asked for /presence/rooms/<room>).
app.post('/switchboard/subscribe', requireGateway, (req, res) => {
  const stream = req.json && typeof req.json.stream === 'string' ? req.json.stream : '';
  const m = /^\/rooms\/([^/]+)$/.exec(stream);
  if (!m) return res.status(404).json({ error: 'no_such_stream', reason: `${stream} is not a room` });
  if (!req.identity) return res.status(401).json({ error: 'login_required' });
  const refusal = roomRefusal(m[1], req.identity);
  if (refusal) return res.status(refusal[0]).json({ error: refusal[1], reason: refusal[2] });
  res.status(204).end();
});

// ----- errors ------------------------------------------------------------------------------------

app.use((req, res) => res.status(404).json({ error: 'not_found', reason: `no route for ${req.method} ${req.path}` }));

app.use((err, req, res, next) => { // eslint-disable-line no-unused-vars
  if (err.type === 'entity.too.large') return res.status(413).json({ error: 'too_large' });
  const status = err.status >= 400 && err.status < 600 ? err.status : 500;
  if (status >= 500) console.error(`${req.method} ${req.originalUrl}: ${err.message}`);
  if (status === 503) res.set('Retry-After', '1');
  res.status(status).json({ error: status === 503 ? 'gateway_unavailable' : 'internal', reason: status >= 500 ? 'try again shortly' : err.message });
});

const server = app.listen(config.port, config.host, () => {
  console.log('listening ' + server.address().port);
});
server.keepAliveTimeout = 65000; // longer than the gateways' pooled connections stay idle (60 s)
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)).closeAllConnections());
