// The chat page: an ES module, no build step. Logging in is plain HTTP to Express (it sets the
// HttpOnly `sid` cookie); everything else goes over one WebSocket to a gateway node, which the
// browser opens with that cookie (no token: the gateway asks Express's connect hook who it is).
// Messages are request frames (`client.request('POST', '/rooms/lobby/messages', {text})`) that
// the gateway sends to the very Express route curl uses. Every user-supplied string goes into the
// page with textContent, never innerHTML.
import { SwitchboardClient } from '/client/switchboard.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const store = window.sessionStorage; // per tab: a reload resumes the session and the room's position
const HISTORY = 100; // messages replayed when joining a room

let me = null; // { user, roles }
let client = null;
let gateways = []; // WebSocket URLs of the gateway nodes, from GET /config
let gatewayIndex = 0;
let current = null; // the room on screen: { room, stops, last, members: Map(connection -> user) }

const roomStream = (room) => `/rooms/${room}`;

function el(tag, text, props = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return Object.assign(node, props);
}

function notice(text, status) {
  $('notice').textContent = text || '';
  if (status) $('notice').dataset.status = String(status);
  else delete $('notice').dataset.status;
}

function reason(res) {
  try {
    const body = JSON.parse(res.body);
    return body.reason || body.error || `error ${res.status}`;
  } catch {
    return res.body || `error ${res.status}`;
  }
}

function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// ----- login (plain HTTP: the cookie is Express's) ------------------------------------------

$('login').addEventListener('submit', async (event) => {
  event.preventDefault();
  const res = await fetch('/login', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ name: $('name').value }) });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) return notice(body.reason || `login failed (${res.status})`, res.status);
  me = body;
  notice('');
  start();
});

$('logout').addEventListener('click', async () => {
  if (client) client.close();
  await fetch('/logout', { method: 'POST' }).catch(() => {});
  store.clear();
  location.reload();
});

// ----- the connection ----------------------------------------------------------------------------

async function start() {
  $('login').hidden = true;
  $('chat').hidden = false;
  $('logout').hidden = false;
  $('me').textContent = me.user + (me.roles.includes('admin') ? ' (admin)' : '');
  $('me').dataset.user = me.user;
  $('announce').hidden = !me.roles.includes('admin');
  const config = await (await fetch('/config')).json();
  gateways = config.gateways;
  // ?gateway=N picks the first node (the tests pin pages to nodes); otherwise a random one.
  const asked = Number.parseInt(params.get('gateway'), 10);
  gatewayIndex = Number.isInteger(asked) ? asked % gateways.length : Math.floor(Math.random() * gateways.length);
  renderRooms(config.rooms);

  // No token: the browser sends the `sid` cookie with the upgrade (cookies are per host, not per
  // port), and the gateway asks Express's connect hook who that is.
  client = new SwitchboardClient(gateways[gatewayIndex], { storage: store, storageKey: 'expresschat.' + me.user, WebSocket: NodeWebSocket });
  window.chat = { client, join, send, announce };
  client.on('state', (state) => {
    const shown = state === 'open' ? 'connected' : state;
    $('status').dataset.state = shown;
    $('status').textContent = shown;
  });
  client.on('hello', (hello) => {
    $('node').textContent = 'node ' + hello.node;
    $('node').dataset.node = hello.node;
  });
  client.on('close', ({ code, willReconnect }) => {
    delete $('node').dataset.node;
    $('node').textContent = '';
    if (!willReconnect) {
      if (code !== 1000) notice(`Disconnected by the server (${code}). Reload the page to connect again.`, code);
      return;
    }
    // Reconnect to the next node (NodeWebSocket dials it; the session resumes on any node, it
    // lives in Redis): a dead node costs one reconnect, not a wait for it to come back.
    gatewayIndex = (gatewayIndex + 1) % gateways.length;
    checkLogin();
  });
  client.on('notRecovered', ({ stream }) => {
    if (!current) return;
    if (stream === roomStream(current.room)) {
      notice('Some messages could not be recovered; showing the room afresh.');
      join(current.room, { force: true });
    } else if (stream === '/presence' + roomStream(current.room)) {
      join(current.room, { force: true });
    }
  });
  client.on('error', (err) => {
    // A SUB the subscribe hook refused (SUB403…): the subscription ended.
    if (err.code === 'subscribe' && err.ended && current && err.stream === roomStream(current.room)) {
      notice(`Cannot read #${current.room}: ${reason(err)} (${err.status})`, err.status);
      leaveView();
    }
    console.warn('switchboard:', err.message);
  });
  client.connect();
  await join(store.getItem('expresschat.room') || 'lobby');
}

/**
 * The client takes one URL. Its `WebSocket` option (the constructor it dials with) opens each
 * attempt on the current node instead, keeping the query the client adds (`?sid=` to resume).
 */
class NodeWebSocket {
  constructor(url, protocols) {
    const target = new URL(url);
    const node = new URL(gateways[gatewayIndex]);
    target.protocol = node.protocol;
    target.host = node.host;
    target.pathname = node.pathname;
    return new WebSocket(target.toString(), protocols);
  }
}

/** The upgrade is refused once the login is gone (logged out elsewhere, expired): back to the form. */
async function checkLogin() {
  const res = await fetch('/me').catch(() => null);
  if (res && res.status === 401 && client) {
    client.close();
    store.clear();
    notice('Your session ended: log in again.', 401);
    $('chat').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
  }
}

// ----- rooms ---------------------------------------------------------------------------------------

function renderRooms(rooms) {
  $('rooms').replaceChildren(
    ...rooms.map((room) => {
      const li = el('li');
      li.dataset.room = room;
      const button = el('button', '#' + room, { type: 'button' });
      button.addEventListener('click', () => join(room));
      li.append(button);
      return li;
    }),
  );
}

/** Show `room`: its last HISTORY messages, then live ones; who is in it. Resolves with the info request's status. */
async function join(room, { force = false } = {}) {
  if (!force && current && current.room === room) return 200;
  const view = { room, stops: [], last: 0, members: new Map() };
  // Presence first (live), then the snapshot: no join or leave falls between the two.
  view.stops.push(client.subscribe('/presence' + roomStream(room), (body) => onPresence(view, body)));
  let res;
  try {
    // A request frame: the gateway sends it to Express's GET /rooms/:room/info.
    res = await client.request('GET', `/rooms/${room}/info`, undefined, { timeout: 60000 });
  } catch (err) {
    res = { status: 0, body: JSON.stringify({ reason: err.message }) };
  }
  if (res.status !== 200) {
    for (const stop of view.stops) stop();
    notice(`Cannot join #${room}: ${reason(res)} (${res.status})`, res.status);
    return res.status;
  }
  const info = JSON.parse(res.body);
  leaveView();
  current = view;
  view.last = Math.max(0, info.top - HISTORY);
  for (const member of info.members) view.members.set(member.connection, member.user);
  $('room-title').textContent = '#' + room;
  $('room-title').dataset.room = room;
  $('messages').replaceChildren();
  for (const li of $('rooms').children) li.setAttribute('aria-current', String(li.dataset.room === room));
  renderMembers();
  // The room's stream from a little before its top: the gateway replays since+1 … then goes
  // live; the client hands each message over once, in order, across reconnects and nodes.
  view.stops.push(
    client.subscribe(roomStream(room), (body, { offset }) => onMessage(view, body, offset), { since: view.last, epoch: info.epoch }),
  );
  store.setItem('expresschat.room', room);
  notice('');
  return 200;
}

function leaveView() {
  if (!current) return;
  for (const stop of current.stops) stop();
  current = null;
  $('room-title').textContent = '';
  delete $('room-title').dataset.room;
  $('messages').replaceChildren();
  $('members').replaceChildren();
}

// ----- messages --------------------------------------------------------------------------------

function onMessage(view, body, offset) {
  if (view !== current || offset <= view.last) return;
  view.last = offset;
  let m;
  try {
    m = JSON.parse(body);
  } catch {
    return;
  }
  const li = el('li', undefined, { className: 'message' + (m.announcement ? ' announcement' : '') + (m.from === me.user ? ' mine' : '') });
  li.dataset.offset = String(offset);
  li.dataset.from = String(m.from);
  li.append(
    el('span', String(m.from), { className: 'from' }),
    el('span', String(m.text), { className: 'text' }),
    el('time', new Date(m.at).toLocaleTimeString(), { className: 'time' }),
  );
  const list = $('messages');
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 40;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

/**
 * POST /rooms/<room>/messages as a request frame. Its idempotency key (META `k`, passed to
 * Express as Switchboard-Meta-k) makes a resend after a reconnect count once. Resolves with
 * `{status, body, meta}`; the message itself arrives as a PUSH on the room's stream.
 */
function send(text, room = current && current.room) {
  return client.request('POST', `/rooms/${room}/messages`, { text }, { timeout: 60000, idempotencyKey: newKey() });
}

function announce(text, room = current && current.room) {
  return client.request('POST', `/rooms/${room}/announcements`, { text }, { timeout: 60000, idempotencyKey: newKey() });
}

async function submit(input, action) {
  const text = input.value;
  if (!current) return;
  input.value = '';
  let res;
  try {
    res = await action(text);
  } catch (err) {
    res = { status: 0, body: JSON.stringify({ reason: err.message }) };
  }
  if (res.status >= 200 && res.status < 300) return notice('');
  if (!input.value) input.value = text;
  if (res.status === 429) notice(`Slow down: try again in ${res.meta['retry-after'] || 'a few'} s.`, 429);
  else notice(`Not sent: ${reason(res)} (${res.status})`, res.status);
}

$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  submit($('text'), (text) => send(text));
});

$('announce').addEventListener('submit', (event) => {
  event.preventDefault();
  submit($('announce-text'), (text) => announce(text));
});

// ----- presence --------------------------------------------------------------------------------

function onPresence(view, body) {
  let event;
  try {
    event = JSON.parse(body);
  } catch {
    return;
  }
  if (!event.user) return;
  if (event.event === 'join') view.members.set(event.connection, event.user);
  else if (event.event === 'leave') view.members.delete(event.connection);
  if (view === current) renderMembers();
}

function renderMembers() {
  const users = current ? [...new Set(current.members.values())].sort() : [];
  $('members').replaceChildren(
    ...users.map((name) => {
      const li = el('li', name);
      li.dataset.user = name;
      return li;
    }),
  );
}

// ----- boot ------------------------------------------------------------------------------------

const res = await fetch('/me');
if (res.ok) {
  me = await res.json();
  start();
} else {
  $('login').hidden = false;
}
