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
  const view = { room, stops: [], last: 0, members: new Map() };
  current = view;
  $('room').hidden = false;
  $('room-title').textContent = '#' + room;
  $('room-title').dataset.room = room;
  $('messages').replaceChildren();
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
  view.stops.push(
    client.subscribe(roomStream(room), (body, { offset }) => onMessage(view, body, offset), {
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

function onMessage(view, body, offset) {
  if (view !== current || offset <= view.last) return; // the client already dedupes; a rejoin resets
  view.last = offset;
  let m;
  try {
    m = JSON.parse(body);
  } catch {
    return;
  }
  const li = el('li', undefined, { className: 'message' + (m.from === user ? ' mine' : '') });
  li.dataset.offset = String(offset);
  li.append(
    el('span', m.from, { className: 'from' }),
    el('span', m.text, { className: 'text' }),
    el('time', new Date(m.ts).toLocaleTimeString(), { className: 'time' }),
  );
  const list = $('messages');
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 40;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
  if (typing.delete(m.from)) renderTyping();
}

$('composer').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $('text');
  const text = input.value;
  if (!current || text.trim() === '') return;
  input.value = '';
  lastTypingSent = 0;
  try {
    // Sent now if connected, else as soon as the socket is back; its idempotency key makes
    // a resend after a reconnect count once.
    const res = await client.request('POST', `/rooms/${current.room}/messages`, { text }, { timeout: 120000 });
    if (res.status === 429) {
      notice('Slow down: you are sending too fast.');
      if (!input.value) input.value = text;
    } else if (res.status >= 400) {
      notice(reason(res));
    } else {
      notice('');
    }
  } catch (err) {
    notice('Not sent: ' + err.message);
    if (!input.value) input.value = text;
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
