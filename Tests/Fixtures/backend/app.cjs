// A test backend for the gateway's HTTP bridge (docs/backend.md), written as an application
// would: Express routes and middleware. It checks every request's Switchboard-Signature the
// documented way and refuses unsigned or forged ones with 401.
// Usage: NODE_PATH=/usr/share/nodejs node app.cjs SECRET [PORT]; prints "listening PORT".
'use strict';
const crypto = require('crypto');
const express = require('express');

const secret = process.argv[2];
const app = express();
const disconnects = [];
let requests = 0;

// The signature, exactly as docs/backend.md describes it.
function verify(req, rawBody) {
  const h = (name) => req.get(name) || '';
  const lines = ['v1', h('Switchboard-Timestamp'), req.method, req.originalUrl, h('Switchboard-User'), h('Switchboard-Roles'),
    h('Switchboard-Session'), h('Switchboard-Connection'), h('Switchboard-Node'), h('Switchboard-Transport'),
    crypto.createHash('sha256').update(rawBody).digest('hex')];
  const expected = 'v1=' + crypto.createHmac('sha256', secret).update(lines.join('\n')).digest('hex');
  const given = h('Switchboard-Signature');
  if (given.length !== expected.length || !crypto.timingSafeEqual(Buffer.from(given), Buffer.from(expected))) return false;
  return Math.abs(Date.now() / 1000 - Number(h('Switchboard-Timestamp'))) <= 60;
}

app.use(express.raw({ type: '*/*', limit: '1mb' }));
app.use((req, res, next) => {
  requests += 1;
  if (req.path === '/stats') return next();
  const raw = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
  if (!verify(req, raw)) return res.status(401).json({ error: 'bad_signature' });
  req.user = req.get('Switchboard-User') ? decodeURIComponent(req.get('Switchboard-User')) : null;
  req.roles = (req.get('Switchboard-Roles') || '').split(',').filter(Boolean);
  try { req.json = raw.length ? JSON.parse(raw.toString('utf8')) : null; } catch { req.json = undefined; }
  next();
});

const requireUser = (req, res, next) => (req.user ? next() : res.status(401).json({ error: 'login_required' }));
const requireRole = (role) => (req, res, next) => (req.roles.includes(role) ? next() : res.status(403).json({ error: 'forbidden' }));

app.get('/hello', (req, res) => res.json({ user: req.user, transport: req.get('Switchboard-Transport'), query: req.query }));
app.get('/admin', requireUser, requireRole('admin'), (req, res) => res.json({ welcome: req.user }));
app.post('/notes', requireUser, (req, res) => {
  if (!req.json || typeof req.json.text !== 'string') return res.status(422).json({ error: 'text_required' });
  res.status(201).set('Location', '/notes/1').json({ id: 1, text: req.json.text, by: req.user });
});
// What reached the backend: every header, to check what the gateway passes on.
app.all('/headers', (req, res) => res.json(req.headers));
app.get('/slow', (req, res) => setTimeout(() => res.json({ slow: true }), Number(req.query.ms || 3000)));
app.get('/big', (req, res) => res.type('text/plain').send('x'.repeat(200 * 1024)));
app.get('/stats', (req, res) => res.json({ requests, disconnects }));
// A status no HTTP reply may have, written raw (Node refuses to send it itself).
app.get('/status99', (req, res) => req.socket.end('HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok'));
// A head, then a body that never ends.
app.get('/stall', (req, res) => { res.writeHead(200, { 'Content-Length': '10' }); res.write('abc'); });
// Answered here, but a Swift route of the node answers it first.
app.get('/mine', (req, res) => res.json({ from: 'backend' }));

// Streams under `publish: backend`: the backend validates and says what to publish.
app.post('/rooms/:id', requireUser, (req, res) => {
  if (!req.json || typeof req.json.text !== 'string' || req.json.text.length === 0) return res.status(422).json({ error: 'text_required' });
  res.status(200).set('Switchboard-Publish', '1').json({ text: req.json.text, by: req.user });
});
// Streams under `subscribe: backend`.
app.post('/switchboard/subscribe', (req, res) => {
  const { stream, user } = req.json || {};
  if (typeof stream !== 'string') return res.status(400).json({ error: 'no_stream' });
  if (stream.includes('/vip/') && !req.roles.includes('vip')) return res.status(403).json({ error: 'vip_only' });
  if (stream.endsWith('/missing')) return res.status(404).json({ error: 'no_such_stream' });
  res.status(204).end();
});
// Session-cookie auth at the upgrade: the cookie names the user.
app.post('/switchboard/connect', (req, res) => {
  const sid = (/(?:^|;\s*)sid=([^;]+)/.exec(req.get('Cookie') || '') || [])[1];
  if (!sid) return res.status(401).json({ error: 'login_required', reason: 'no session cookie' });
  if (sid === 'expired') return res.status(403).json({ error: 'forbidden', reason: 'session expired' });
  if (sid === 'broken') return res.json({ user: 5 });
  if (sid === 'anon') return res.json({});
  res.json({ user: sid, roles: ['member'], streams: ['/rooms/lobby'] });
});
app.post('/switchboard/disconnect', (req, res) => { disconnects.push(req.json); res.status(204).end(); });

const server = app.listen(Number(process.argv[3] || 0), '127.0.0.1', () => {
  console.log('listening ' + server.address().port);
});
server.keepAliveTimeout = 65000;
