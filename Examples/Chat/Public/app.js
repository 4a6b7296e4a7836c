// The chat page. Plain ES module, no build step, nothing loaded from elsewhere.
// Every user-supplied string (names, room names, messages) is put into the page with
// textContent, never innerHTML: markup in a message is shown as text, not run. The server
// validates and strips control characters; escaping for HTML is this file's job.
import { SwitchboardClient } from '/js/switchboard.js';

const $ = (id) => document.getElementById(id);
const store = window.sessionStorage; // per tab: a reload keeps the user, room and stream positions
const HISTORY = 100; // messages replayed on joining a room

let client = null;
let user = store.getItem('chat.user');
let current = null; // the room on screen: { room, stops, last, members }
const rooms = new Set(['lobby']);
const typing = new Map(); // user -> until (ms)
let lastTypingSent = 0;
// Messages this page sent that the room's stream has not delivered yet, by idempotency key:
// { key, room, text, status: 'pending' | 'sent', offset, epoch, seen, seenEpoch, li }. Shown at the bottom of
// the room at once ('pending': greyed, "sending…"), 'sent' once the POST answered 2xx (offset
// and epoch known), replaced by the message itself when its PUSH arrives.
const outbox = new Map();

const roomStream = (room) => `/rooms/${room}`;

function notice(text) {
  $('notice').textContent = text || '';
}

function reason(res) {
  try {
    return JSON.parse(res.body).reason || `error ${res.status}`;
  } catch {
    return `error ${res.status}`;
  }
}

function el(tag, text, props = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  Object.assign(node, props);
  return node;
}

/** A random idempotency key (hex; randomUUID needs a secure context, getRandomValues does not). */
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// ----- sign-in ---------------------------------------------------------------

async function signIn(name) {
  const res = await fetch('/auth/sign-in', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.reason || `sign-in failed (${res.status})`);
  return body; // { token, user, expiresAt }
}

$('sign-in').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    const issued = await signIn($('name').value);
    user = issued.user;
    store.setItem('chat.user', user);
    notice('');
    start();
  } catch (err) {
    notice(err.message);
  }
});

$('sign-out').addEventListener('click', () => {
  if (client) client.close();
  store.clear();
  location.reload();
});

// ----- connection ------------------------------------------------------------

function start() {
  $('sign-in').hidden = true;
  $('chat').hidden = false;
  $('sign-out').hidden = false;
  $('me').textContent = user;
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  client = new SwitchboardClient(url, {
    // Asked for on the first connect, after 4401 and after a failed upgrade: sign in again.
    token: () => signIn(user).then((issued) => issued.token),
    storage: store,
    storageKey: 'chat.sb.' + user,
  });
  client.on('state', (state) => {
    $('status').dataset.state = state;
    $('status').textContent = state;
  });
  client.on('hello', (hello) => {
    $('node').textContent = 'node ' + hello.node;
    $('node').dataset.node = hello.node;
  });
  client.on('notRecovered', ({ stream }) => {
    if (!current) return;
    if (stream === roomStream(current.room)) {
      notice('Some messages could not be recovered; showing the room afresh.');
      join(current.room, { force: true });
    } else if (stream === '/presence' + roomStream(current.room)) {
      refreshMembers();
    }
  });
  client.on('close', ({ code, willReconnect }) => {
    if (!willReconnect && code !== 1000) notice(`Disconnected by the server (${code}). Reload the page to connect again.`);
  });
  client.on('error', (err) => console.warn('switchboard:', err.message));
  // The room directory is a stream too: replay all of it, then new rooms live.
  client.subscribe('/rooms', onDirectory, { since: 0, ack: false });
  renderRooms();
  client.connect();
  restore();
}

/** Back to the room this user was in (server-side, so a new tab or a reload finds it), else the lobby. */
async function restore() {
  try {
    const res = await client.request('GET', '/me', undefined, { timeout: 60000 });
    const me = res.status === 200 ? JSON.parse(res.body) : {};
    await join(me.room || store.getItem('chat.room') || 'lobby');
  } catch (err) {
    notice('Could not load your room: ' + err.message);
  }
}

// ----- rooms -----------------------------------------------------------------

function onDirectory(body) {
  try {
    const entry = JSON.parse(body);
    if (typeof entry.name === 'string' && !rooms.has(entry.name)) {
      rooms.add(entry.name);
      renderRooms();
    }
  } catch {}
}

function renderRooms() {
  const items = [...rooms].map((name) => {
    const li = el('li');
    li.dataset.room = name;
    li.setAttribute('aria-current', String(!!current && current.room === name));
    const button = el('button', '#' + name, { type: 'button' });
    button.addEventListener('click', () => join(name));
    li.append(button);
    return li;
  });
  $('rooms').replaceChildren(...items);
}

$('create-room').addEventListener('submit', async (event) => {
  event.preventDefault();
  const name = $('new-room').value.trim().toLowerCase();
  const res = await client.request('POST', '/rooms', { name }, { timeout: 30000 }).catch((err) => ({ status: 0, body: err.message }));
  if (res.status !== 200 && res.status !== 201) return notice(reason(res));
  const { room } = JSON.parse(res.body);
  $('new-room').value = '';
  rooms.add(room);
  renderRooms();
  join(room);
});

async function join(room, { force = false } = {}) {
  if (!force && current && current.room === room) return;
  if (current) leaveView();
  const view = { room, stops: [], last: 0, epoch: null, members: new Map() };
  current = view;
  $('room').hidden = false;
  $('room-title').textContent = '#' + room;
  $('room-title').dataset.room = room;
  $('messages').replaceChildren(...[...outbox.values()].filter((e) => e.room === room).map((e) => e.li));
  typing.clear();
  renderTyping();
  renderMembers();
  renderRooms();
  // Presence first (live), then the snapshot: no join or leave falls between the two.
  view.stops.push(client.subscribe('/presence' + roomStream(room), (body) => onPresence(view, body)));
  let res;
  try {
    res = await client.request('POST', `/rooms/${room}/join`, undefined, { timeout: 60000 });
  } catch (err) {
    res = { status: 0, body: JSON.stringify({ reason: err.message }) };
  }
  if (current !== view) return;
  if (res.status !== 200) {
    notice(`Cannot join #${room}: ${reason(res)}`);
    leaveView();
    return;
  }
  const info = JSON.parse(res.body);
  view.members = new Map(info.members.map((m) => [m.connection, m.user]));
  renderMembers();
  // The room's log is its history: replay the last HISTORY messages, then live. Not acked,
  // so the gateway keeps it for whoever joins next (acks would let it trim what all read).
  view.last = Math.max(0, info.top - HISTORY);
  view.epoch = info.epoch;
  // Sent messages the replay will not bring (older than it, or from a lost epoch) are dropped.
  for (const entry of [...outbox.values()]) {
    if (entry.room === room && entry.status === 'sent' && (entry.epoch !== view.epoch || entry.offset <= view.last)) dropLocal(entry);
  }
  view.stops.push(
    client.subscribe(roomStream(room), (body, { offset, epoch }) => onMessage(view, body, offset, epoch), {
      since: view.last,
      epoch: info.epoch,
      ack: false,
    }),
  );
  view.stops.push(client.subscribe(roomStream(room) + '/typing', (body) => onTyping(view, body)));
  store.setItem('chat.room', room);
  notice('');
}

/** Stop showing the room (unsubscribes: the gateway publishes our presence "leave"). */
function leaveView() {
  if (!current) return;
  for (const stop of current.stops) stop();
  current = null;
  $('room').hidden = true;
  renderMembers();
  renderRooms();
}

$('leave').addEventListener('click', async () => {
  if (!current) return;
  const { room } = current;
  leaveView();
  store.removeItem('chat.room');
  notice('You left #' + room + '. Pick a room.');
  await client.request('POST', `/rooms/${room}/leave`).catch(() => {});
});

// ----- messages --------------------------------------------------------------

function onMessage(view, body, offset, epoch) {
  if (view !== current || offset <= view.last) return; // the client already dedupes; a rejoin resets
  view.last = offset;
  if (epoch) view.epoch = epoch;
  let m;
  try {
    m = JSON.parse(body);
  } catch {
    return;
  }
  // One of ours still shown as pending/sent: that entry becomes this message (never two copies).
  const own = ownEntry(view, offset, m.from === user ? m.text : null);
  const li = own ? own.li : el('li');
  if (own) {
    outbox.delete(own.key);
    li.remove();
    delete li.dataset.local;
    delete li.dataset.status;
  }
  li.className = 'message' + (m.from === user ? ' mine' : '');
  li.dataset.offset = String(offset);
  li.replaceChildren(
    el('span', m.from, { className: 'from' }),
    el('span', m.text, { className: 'text' }),
    el('time', new Date(m.ts).toLocaleTimeString(), { className: 'time' }),
  );
  const list = $('messages');
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 40;
  list.insertBefore(li, list.querySelector('li.local')); // above our own not yet delivered ones
  if (atBottom) list.scrollTop = list.scrollHeight;
  if (typing.delete(m.from)) renderTyping();
}

/**
 * The outbox entry the PUSH at `offset` delivers: the 'sent' one the POST reply gave this
 * offset, else, for a message of ours (`text` not null) that overtook the reply, the oldest
 * 'pending' one with the same text sent when the room was at an earlier offset. Sent entries the stream has gone past (or from another
 * epoch) will not come: dropped.
 */
function ownEntry(view, offset, text) {
  let match = null;
  for (const entry of [...outbox.values()]) {
    if (entry.room !== view.room || entry.status !== 'sent') continue;
    if (entry.epoch === view.epoch && entry.offset === offset) match = entry;
    else if (entry.epoch !== view.epoch || entry.offset < offset) dropLocal(entry);
  }
  if (match || text === null) return match;
  for (const entry of outbox.values()) {
    // Only a message published after it was sent: not an older one the history replays.
    const later = entry.seenEpoch === view.epoch && offset > entry.seen;
    if (entry.room === view.room && entry.status === 'pending' && later && entry.text === text) return entry;
  }
  return null;
}

function setLocalStatus(entry, status) {
  entry.status = status;
  entry.li.dataset.status = status;
  entry.li.className = 'mine local ' + status;
  entry.li.querySelector('.status').textContent = status === 'pending' ? 'sending…' : 'sent';
}

function dropLocal(entry) {
  outbox.delete(entry.key);
  entry.li.remove();
}

/** Show a message being sent, at once, below the delivered ones. */
function addLocal(room, text, key) {
  const li = el('li');
  li.dataset.local = key;
  li.append(el('span', user, { className: 'from' }), el('span', text, { className: 'text' }), el('span', '', { className: 'status' }));
  const view = current && current.room === room ? current : null;
  // `seen`/`seenEpoch`: where the room was when it was sent; its PUSH comes after that.
  const entry = { key, room, text, status: 'pending', offset: null, epoch: null, seen: view ? view.last : 0, seenEpoch: view ? view.epoch : null, li };
  setLocalStatus(entry, 'pending');
  outbox.set(key, entry);
  if (view) {
    const list = $('messages');
    list.append(li);
    list.scrollTop = list.scrollHeight;
  }
  return entry;
}

/** The POST answered 2xx with `{room, offset, epoch, duplicate}`. */
function markSent(entry, posted) {
  if (outbox.get(entry.key) !== entry) return; // its PUSH came first and took its place
  const view = current && current.room === entry.room ? current : null;
  const offset = Number(posted && posted.offset);
  if (!view || !Number.isSafeInteger(offset)) return dropLocal(entry); // the room's history will show it
  if (posted.epoch === view.epoch && offset <= view.last) return dropLocal(entry); // already delivered
  entry.offset = offset;
  entry.epoch = posted.epoch;
  setLocalStatus(entry, 'sent');
}

$('composer').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $('text');
  const text = input.value;
  if (!current || text.trim() === '') return;
  input.value = '';
  lastTypingSent = 0;
  // Shown at once as pending. Sent now if connected, else as soon as the socket is back; its
  // idempotency key makes a resend after a reconnect count once.
  const key = newKey();
  const entry = addLocal(current.room, text.trim(), key);
  let res;
  try {
    res = await client.request('POST', `/rooms/${entry.room}/messages`, { text }, { timeout: 120000, idempotencyKey: key });
  } catch (err) {
    dropLocal(entry);
    notice('Not sent: ' + err.message);
    if (!input.value) input.value = text;
    return;
  }
  if (res.status >= 200 && res.status < 300) {
    let posted = null;
    try {
      posted = JSON.parse(res.body);
    } catch {}
    markSent(entry, posted);
    notice('');
    return;
  }
  dropLocal(entry);
  if (res.status === 429) {
    notice('Slow down: you are sending too fast.');
    if (!input.value) input.value = text;
  } else {
    notice(reason(res));
  }
});

// ----- presence and typing ---------------------------------------------------

function onPresence(view, body) {
  if (view !== current) return;
  let event;
  try {
    event = JSON.parse(body);
  } catch {
    return;
  }
  if (!event.user) return;
  if (event.event === 'join') view.members.set(event.connection, event.user);
  else if (event.event === 'leave') view.members.delete(event.connection);
  renderMembers();
}

async function refreshMembers() {
  const view = current;
  const res = await client.request('GET', `/rooms/${view.room}`).catch(() => null);
  if (!res || current !== view || res.status !== 200) return;
  view.members = new Map(JSON.parse(res.body).members.map((m) => [m.connection, m.user]));
  renderMembers();
}

function renderMembers() {
  const users = current ? [...new Set(current.members.values())].sort() : [];
  $('presence').replaceChildren(
    ...users.map((name) => {
      const li = el('li', name);
      li.dataset.user = name;
      return li;
    }),
  );
}

$('text').addEventListener('input', () => {
  if (!current || client.state !== 'open') return;
  const now = Date.now();
  if (now - lastTypingSent < 2000) return;
  lastTypingSent = now;
  client.request('POST', `/rooms/${current.room}/typing`, undefined, { timeout: 3000, idempotencyKey: false }).catch(() => {});
});

function onTyping(view, body) {
  if (view !== current) return;
  let t;
  try {
    t = JSON.parse(body);
  } catch {
    return;
  }
  // Typing is not history: ignore what a resume replays from more than a few seconds ago.
  if (t.from === user || Math.abs(Date.now() - t.ts) > 10000) return;
  typing.set(t.from, Date.now() + 4000);
  renderTyping();
  setTimeout(renderTyping, 4100);
}

function renderTyping() {
  const now = Date.now();
  for (const [name, until] of typing) if (until <= now) typing.delete(name);
  const names = [...typing.keys()].sort();
  $('typing').textContent = names.length === 0 ? '' : `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} typing…`;
}

// ----- boot ------------------------------------------------------------------

if (user) start();
else $('sign-in').hidden = false;
