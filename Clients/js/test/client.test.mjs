import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SwitchboardClient } from '../switchboard.js';
import { makeFakeWebSocket, MemoryStorage, rOf, flush } from './helpers.mjs';

function setup(t, options = {}) {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const WS = makeFakeWebSocket();
  const client = new SwitchboardClient('wss://sb.example/ws', { WebSocket: WS, random: () => 1, ...options });
  const events = [];
  for (const name of ['state', 'hello', 'notRecovered', 'close', 'error']) client.on(name, (p) => events.push([name, p]));
  t.after(() => client.close());
  return { client, WS, events, tick: (ms) => t.mock.timers.tick(ms) };
}

/** Subscribe to /rooms/a and position it at `last` with epoch E1. */
function subscribed(client, ws, last = 5) {
  const got = [];
  const unsubscribe = client.subscribe('/rooms/a', (body, info) => got.push([body, info.offset]));
  const [sub] = ws.take('SUB');
  ws.receive(`SUB200|/rooms/a|r=${rOf(sub)};id=${last};e=E1|`);
  return { got, unsubscribe, sub };
}

const push = (ws, id, e = 'E1', stream = '/rooms/a') => ws.receive(`PUSH200|${stream}|id=${id};e=${e}|m${id}`);

test('connects with the token as subprotocol and reports states and HELLO', (t) => {
  const { client, WS, events } = setup(t, { token: 'jwt.abc' });
  assert.equal(client.state, 'closed');
  client.connect();
  assert.equal(client.state, 'connecting');
  assert.deepEqual(WS.last.protocols, ['switchboard.v1', 'bearer.jwt.abc']);
  assert.equal(WS.last.url, 'wss://sb.example/ws');
  WS.last.hello('sess1');
  assert.equal(client.state, 'open');
  assert.equal(client.sessionId, 'sess1');
  assert.deepEqual(events.filter(([n]) => n === 'state').map(([, s]) => s), ['connecting', 'open']);
  assert.equal(events.find(([n]) => n === 'hello')[1].session, 'sess1');
});

test('without a token only switchboard.v1 is offered', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  assert.deepEqual(WS.last.protocols, ['switchboard.v1']);
});

test('an async token function is awaited', async (t) => {
  const { client, WS } = setup(t, { token: async () => 'tok1' });
  client.connect();
  assert.equal(WS.instances.length, 0);
  await flush();
  assert.deepEqual(WS.last.protocols, ['switchboard.v1', 'bearer.tok1']);
});

test('reconnects with full-jitter exponential backoff and resets after a stable connection', (t) => {
  const { client, WS, tick } = setup(t, { minDelay: 100, maxDelay: 1000, stableAfter: 5000 });
  client.connect();
  WS.last.hello('sess1');
  // random() = 1 gives the upper bound: 100, 200, 400, 800, 1000, 1000
  for (const bound of [100, 200, 400, 800, 1000, 1000]) {
    const n = WS.instances.length;
    WS.last.failHandshake();
    assert.equal(client.state, 'reconnecting');
    tick(bound - 1);
    assert.equal(WS.instances.length, n, `no reconnect before ${bound} ms`);
    tick(1);
    assert.equal(WS.instances.length, n + 1, `reconnect at ${bound} ms`);
  }
  // connected, but not long enough: the next delay keeps growing
  WS.last.hello('sess1');
  tick(4999);
  WS.last.serverClose(1001);
  tick(999);
  const n = WS.instances.length;
  tick(1);
  assert.equal(WS.instances.length, n + 1);
  // stable for stableAfter: attempts reset to 0
  WS.last.hello('sess1');
  tick(5000);
  WS.last.serverClose(1011);
  tick(99);
  assert.equal(WS.instances.length, n + 1);
  tick(1);
  assert.equal(WS.instances.length, n + 2);
});

test('jittered delays stay within the bounds', (t) => {
  const values = [0.3, 0.9, 0.01, 0.5];
  let i = 0;
  const { client, WS, tick } = setup(t, { minDelay: 1000, maxDelay: 3000, random: () => values[i++ % values.length] });
  client.connect();
  for (const expected of [300, 1800, 30, 1500]) {
    const n = WS.instances.length;
    WS.last.serverClose(1006);
    tick(expected - 1);
    assert.equal(WS.instances.length, n);
    tick(1);
    assert.equal(WS.instances.length, n + 1);
  }
});

test('reconnects at once on the browser "online" event', (t) => {
  const listeners = new Map();
  const saved = [globalThis.addEventListener, globalThis.removeEventListener];
  globalThis.addEventListener = (type, fn) => listeners.set(type, fn);
  globalThis.removeEventListener = (type, fn) => listeners.get(type) === fn && listeners.delete(type);
  t.after(() => ([globalThis.addEventListener, globalThis.removeEventListener] = saved));
  const { client, WS } = setup(t, { minDelay: 10000 });
  client.connect();
  WS.last.serverClose(1006);
  assert.equal(WS.instances.length, 1);
  listeners.get('online')();
  assert.equal(WS.instances.length, 2);
  client.close();
  assert.equal(listeners.has('online'), false);
});

test('resume: after a reconnect the SUB carries since/e of the last delivered message and sid is in the URL', (t) => {
  const { client, WS, tick } = setup(t);
  client.connect();
  WS.last.hello('sess1');
  const { got, sub } = subscribed(client, WS.last, 5);
  assert.match(sub, /^SUB\|\/rooms\/a\|r=\d+\|$/);
  push(WS.last, 6);
  push(WS.last, 7);
  WS.last.serverClose(4001);
  tick(500);
  const ws = WS.last;
  assert.equal(ws.url, 'wss://sb.example/ws?sid=sess1');
  ws.hello('sess1', { resumed: true });
  const [again] = ws.take('SUB');
  assert.match(again, /^SUB\|\/rooms\/a\|r=\d+;since=7;e=E1\|$/);
  ws.receive(`SUB200|/rooms/a|r=${rOf(again)};id=7;e=E1;recovered=1|`);
  push(ws, 7); // duplicate after resume
  push(ws, 8);
  assert.deepEqual(got.map(([, id]) => id), [6, 7, 8]);
});

test('dedupe: duplicate and out-of-order pushes are delivered once, in order', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  WS.last.hello();
  const ws = WS.last;
  const { got } = subscribed(client, ws, 5);
  push(ws, 6);
  push(ws, 6);
  push(ws, 5);
  push(ws, 8); // gap: resubscribe with since=6
  const [resub] = ws.take('SUB');
  assert.match(resub, /^SUB\|\/rooms\/a\|r=\d+;since=6;e=E1\|$/);
  push(ws, 9); // still waiting for the replay: no second SUB
  assert.deepEqual(ws.take('SUB'), []);
  ws.receive(`SUB200|/rooms/a|r=${rOf(resub)};id=6;e=E1;recovered=1|`);
  for (const id of [7, 8, 7, 9, 8, 10]) push(ws, id);
  assert.deepEqual(got, [['m6', 6], ['m7', 7], ['m8', 8], ['m9', 9], ['m10', 10]]);
});

test('handler gets body and {stream, offset, epoch, tag}', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  WS.last.hello();
  const infos = [];
  client.subscribe('/rooms/a', (body, info) => infos.push([body, info]));
  WS.last.receive(`SUB200|/rooms/a|r=${rOf(WS.last.take('SUB')[0])};id=0;e=E1|`);
  WS.last.receive('PUSH200|/rooms/a|id=1;e=E1|{"a":"x|y"}');
  WS.last.receive('PUSH200|/rooms/a|id=2;e=E1;t=5kq2ab|b');
  assert.deepEqual(infos, [
    ['{"a":"x|y"}', { stream: '/rooms/a', offset: 1, epoch: 'E1', tag: null }],
    ['b', { stream: '/rooms/a', offset: 2, epoch: 'E1', tag: '5kq2ab' }],
  ]);
});

test('SUB410 emits notRecovered and repositions the stream', (t) => {
  const { client, WS, tick } = setup(t);
  client.connect();
  WS.last.hello();
  const { got } = subscribed(client, WS.last, 5);
  push(WS.last, 6);
  WS.last.serverClose(1001);
  tick(500);
  WS.last.hello('sess1', { resumed: true });
  const [sub] = WS.last.take('SUB');
  WS.last.receive(`SUB410|/rooms/a|r=${rOf(sub)};id=40;e=E2;recovered=0|history trimmed`);
  const nr = t.mock.fn();
  client.on('notRecovered', nr);
  push(WS.last, 40, 'E2');
  push(WS.last, 41, 'E2');
  assert.deepEqual(got.map(([, id]) => id), [6, 41]);
  assert.deepEqual(client.position('/rooms/a'), { last: 41, epoch: 'E2', tag: null });
  // unsolicited SUB410 (epoch changed under a live subscription)
  WS.last.receive('SUB410|/rooms/a|id=3;e=E3;recovered=0|epoch changed');
  push(WS.last, 4, 'E3');
  assert.deepEqual(got.map(([, id]) => id), [6, 41, 4]);
  assert.equal(nr.mock.callCount(), 1);
});

test('the first notRecovered carries stream and reason', (t) => {
  const { client, WS, events } = setup(t);
  client.connect();
  WS.last.hello();
  client.subscribe('/rooms/a', () => {});
  const [sub] = WS.last.take('SUB');
  WS.last.receive(`SUB410|/rooms/a|r=${rOf(sub)};id=9;e=E2;recovered=0|trimmed`);
  const [, payload] = events.find(([n]) => n === 'notRecovered');
  assert.equal(payload.stream, '/rooms/a');
  assert.equal(payload.reason, 'trimmed');
});

test('a PUSH with another epoch counts as not recovered and is delivered', (t) => {
  const { client, WS, events } = setup(t);
  client.connect();
  WS.last.hello();
  const { got } = subscribed(client, WS.last, 5);
  push(WS.last, 1, 'E9');
  assert.deepEqual(got.map(([, id]) => id), [1]);
  assert.equal(events.filter(([n]) => n === 'notRecovered').length, 1);
});

test('built-in streams are tracked from their unsolicited SUB200 and deduped', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello('sess1');
  ws.receive('SUB200|/broadcast|id=3;e=B|');
  ws.receive('SUB200|/users/ann|id=0;e=U|');
  push(ws, 4, 'B', '/broadcast');
  push(ws, 4, 'B', '/broadcast');
  const got = [];
  client.subscribe('/broadcast', (body, { offset }) => got.push(offset));
  assert.deepEqual(ws.take('SUB'), [], 'already subscribed by the server');
  push(ws, 5, 'B', '/broadcast');
  push(ws, 5, 'B', '/broadcast');
  assert.deepEqual(got, [5]);
  assert.deepEqual(client.position('/users/ann'), { last: 0, epoch: 'U', tag: null });
});

test('acks are sent on the timer with the highest delivered offset', (t) => {
  const { client, WS, tick } = setup(t, { ackInterval: 1000, ackIdle: 0 });
  client.connect();
  const ws = WS.last;
  ws.hello();
  subscribed(client, ws, 5);
  ws.take();
  push(ws, 6);
  push(ws, 7);
  tick(500);
  push(ws, 8);
  assert.deepEqual(ws.take('ACK'), []);
  tick(500);
  assert.deepEqual(ws.take('ACK'), ['ACK|/rooms/a|id=8|']);
  tick(5000);
  assert.deepEqual(ws.take('ACK'), [], 'nothing new: no ack');
  push(ws, 9);
  tick(1000);
  assert.deepEqual(ws.take('ACK'), ['ACK|/rooms/a|id=9|']);
});

test('close() flushes pending acks', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello();
  subscribed(client, ws, 5);
  push(ws, 6);
  client.close();
  assert.deepEqual(ws.take('ACK'), ['ACK|/rooms/a|id=6|']);
});

test('request resolves on the response with the same r', async (t) => {
  const { client, WS } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello();
  const p = client.request('POST', '/rooms/a/messages', { text: 'hi' }, { idempotencyKey: 'k1' });
  const [frame] = ws.take();
  assert.equal(frame, `POST|/rooms/a/messages|r=${rOf(frame)};k=k1|{"text":"hi"}`);
  ws.receive(`POST201|/rooms/a/messages|r=999|{"id":1}`);
  ws.receive(`POST201|/rooms/a/messages|r=${rOf(frame)}|{"id":42}`);
  const res = await p;
  assert.equal(res.status, 201);
  assert.equal(res.body, '{"id":42}');
  assert.equal(res.meta.r, rOf(frame));
});

test('GET has no idempotency key, POST gets one by default', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  WS.last.hello();
  client.request('GET', '/x').catch(() => {});
  client.request('POST', '/x', 'raw body').catch(() => {});
  const [get, post] = WS.last.take();
  assert.match(get, /^GET\|\/x\|r=\d+\|$/);
  assert.match(post, /^POST\|\/x\|r=\d+;k=[^;|]+\|raw body$/);
});

test('request rejects on timeout', async (t) => {
  const { client, WS, tick } = setup(t, { requestTimeout: 3000 });
  client.connect();
  WS.last.hello();
  const p = client.request('GET', '/slow');
  const p2 = client.request('GET', '/slower', undefined, { timeout: 5000 });
  tick(3000);
  await assert.rejects(p, { code: 'timeout' });
  let settled = false;
  p2.catch(() => (settled = true));
  await flush();
  assert.equal(settled, false);
  tick(2000);
  await assert.rejects(p2, { code: 'timeout' });
});

test('requests are validated', async (t) => {
  const { client } = setup(t);
  await assert.rejects(client.request('get', '/x'), TypeError);
  await assert.rejects(client.request('GET', 'x'), TypeError);
  await assert.rejects(client.request('GET', '/a|b'), TypeError);
  await assert.rejects(client.request('SUB', '/a'), TypeError);
});

test('requests are resent after reconnect with the same idempotency key, and queued while disconnected', async (t) => {
  const { client, WS, tick } = setup(t);
  client.connect();
  WS.last.hello();
  const p = client.request('POST', '/orders', { n: 1 });
  const [first] = WS.last.take();
  const key = /k=([^;|]+)/.exec(first)[1];
  WS.last.serverClose(1006);
  const q = client.request('GET', '/later'); // issued while disconnected
  tick(500);
  WS.last.hello('sess1', { resumed: true });
  const frames = WS.last.take();
  const resent = frames.find((f) => f.startsWith('POST|'));
  assert.equal(resent, first, 'same r, same k, same body');
  assert.ok(resent.includes(`k=${key}`));
  const later = frames.find((f) => f.startsWith('GET|/later|'));
  assert.ok(later);
  WS.last.receive(`POST201|/orders|r=${rOf(resent)}|ok`);
  WS.last.receive(`GET200|/later|r=${rOf(later)}|fine`);
  assert.equal((await p).body, 'ok');
  assert.equal((await q).body, 'fine');
});

test('refreshToken sends AUTH and resolves on AUTH200, rejects otherwise', async (t) => {
  const { client, WS, tick } = setup(t, { token: 'old' });
  client.connect();
  WS.last.hello();
  const p = client.refreshToken('new.jwt');
  await flush();
  const [auth] = WS.last.take();
  assert.equal(auth, `AUTH|/|r=${rOf(auth)}|new.jwt`);
  WS.last.receive(`AUTH200|/|r=${rOf(auth)}|{"expiresAt":1790000000}`);
  assert.equal((await p).status, 200);
  const bad = client.refreshToken('other.user');
  await flush();
  const [auth2] = WS.last.take();
  WS.last.receive(`AUTH403|/|r=${rOf(auth2)}|{"error":"forbidden"}`);
  await assert.rejects(bad, { code: 'auth', status: 403 });
  // reconnects use the refreshed token
  WS.last.serverClose(1001);
  tick(500);
  assert.deepEqual(WS.last.protocols, ['switchboard.v1', 'bearer.other.user']);
});

test('no reconnect after 4409: state closed, close emitted, session dropped', async (t) => {
  const { client, WS, events, tick } = setup(t);
  client.connect();
  WS.last.hello('sess1');
  const p = client.request('GET', '/x');
  WS.last.take();
  WS.last.serverClose(4409, 'session taken');
  assert.equal(client.state, 'closed');
  assert.deepEqual(events.find(([n]) => n === 'close')[1], { code: 4409, reason: 'session taken', wasClean: true, willReconnect: false });
  await assert.rejects(p, { code: 'closed' });
  assert.equal(client.sessionId, null);
  tick(60000);
  assert.equal(WS.instances.length, 1);
});

test('no reconnect after 4403', (t) => {
  const { client, WS, tick } = setup(t);
  client.connect();
  WS.last.hello();
  WS.last.serverClose(4403);
  tick(60000);
  assert.equal(WS.instances.length, 1);
  assert.equal(client.state, 'closed');
});

test('4401 fetches a fresh token before reconnecting', async (t) => {
  let n = 0;
  const { client, WS, tick } = setup(t, { token: () => `tok${++n}` });
  client.connect();
  WS.last.hello();
  WS.last.serverClose(1001); // ordinary close: the cached token is reused
  tick(500);
  assert.deepEqual(WS.last.protocols, ['switchboard.v1', 'bearer.tok1']);
  WS.last.hello();
  WS.last.serverClose(4401);
  tick(1000);
  assert.equal(n, 2);
  assert.deepEqual(WS.last.protocols, ['switchboard.v1', 'bearer.tok2']);
});

test('a failure before open refetches the token (maybe unauthorized)', (t) => {
  let n = 0;
  const { client, WS, tick } = setup(t, { token: () => `tok${++n}` });
  client.connect();
  WS.last.failHandshake();
  tick(500);
  assert.deepEqual(WS.last.protocols, ['switchboard.v1', 'bearer.tok2']);
});

test('close() stops reconnecting and rejects pending requests', async (t) => {
  const { client, WS, tick } = setup(t);
  client.connect();
  WS.last.hello();
  const p = client.request('GET', '/x');
  client.close();
  assert.equal(client.state, 'closed');
  assert.equal(WS.last.closedByClient.code, 1000);
  await assert.rejects(p, { code: 'closed' });
  tick(60000);
  assert.equal(WS.instances.length, 1);
  await assert.rejects(client.request('GET', '/y'), { code: 'closed' });
});

test('unsubscribe sends UNSUB and later pushes are ignored', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello();
  const { got, unsubscribe } = subscribed(client, ws, 5);
  unsubscribe();
  const [unsub] = ws.take('UNSUB');
  assert.match(unsub, /^UNSUB\|\/rooms\/a\|r=\d+\|$/);
  push(ws, 6);
  assert.deepEqual(got, []);
  assert.equal(client.position('/rooms/a'), null);
});

test('malformed server frames are reported, not fatal', (t) => {
  const { client, WS, events } = setup(t);
  client.connect();
  WS.last.hello();
  WS.last.receive('garbage');
  assert.equal(events.filter(([n]) => n === 'error').length, 1);
  assert.equal(client.state, 'open');
});

test('storage round-trip: a reload resumes session and stream positions', (t) => {
  const storage = new MemoryStorage();
  const a = setup(t, { storage, storageKey: 'sb' });
  a.client.connect();
  a.WS.last.hello('sess7');
  subscribed(a.client, a.WS.last, 5);
  push(a.WS.last, 6);
  a.WS.last.receive('SUB200|/broadcast|id=2;e=B|');
  assert.equal(storage.getItem('sb.sid'), 'sess7');
  assert.deepEqual(JSON.parse(storage.getItem('sb.streams')), {
    '/rooms/a': { last: 6, epoch: 'E1' },
    '/broadcast': { last: 2, epoch: 'B' },
  });
  a.client.close();

  // "page reload"
  const WS = makeFakeWebSocket();
  const b = new SwitchboardClient('wss://sb.example/ws?v=1', { WebSocket: WS, storage, storageKey: 'sb' });
  t.after(() => b.close());
  assert.equal(b.sessionId, 'sess7');
  assert.deepEqual(b.position('/rooms/a'), { last: 6, epoch: 'E1', tag: null });
  const got = [];
  b.subscribe('/rooms/a', (body, { offset }) => got.push(offset));
  b.connect();
  assert.equal(WS.last.url, 'wss://sb.example/ws?v=1&sid=sess7');
  WS.last.hello('sess7', { resumed: true });
  const [sub] = WS.last.take('SUB');
  assert.match(sub, /^SUB\|\/rooms\/a\|r=\d+;since=6;e=E1\|$/);
  WS.last.receive(`SUB200|/rooms/a|r=${rOf(sub)};id=6;e=E1;recovered=1|`);
  WS.last.receive('SUB200|/broadcast|id=1;e=B|'); // server resumes from its (older) acked offset
  push(WS.last, 6);
  push(WS.last, 7);
  push(WS.last, 2, 'B', '/broadcast'); // duplicate, dropped
  push(WS.last, 3, 'B', '/broadcast');
  assert.deepEqual(got, [7]);
  assert.deepEqual(b.position('/broadcast'), { last: 3, epoch: 'B', tag: null });
  assert.deepEqual(JSON.parse(storage.getItem('sb.streams'))['/rooms/a'], { last: 7, epoch: 'E1' });
});

test('a new session replaces the stored one', (t) => {
  const storage = new MemoryStorage();
  storage.setItem('switchboard.sid', 'old');
  storage.setItem('switchboard.streams', JSON.stringify({ '/sessions/old': { last: 4, epoch: 'S' } }));
  const { client, WS } = setup(t, { storage });
  client.connect();
  assert.equal(WS.last.url, 'wss://sb.example/ws?sid=old');
  WS.last.hello('fresh');
  assert.equal(storage.getItem('switchboard.sid'), 'fresh');
  assert.equal(client.position('/sessions/old'), null);
});

test('acks go out when the flow of pushes pauses, and on the interval while it keeps flowing', (t) => {
  const { client, WS, tick } = setup(t, { ackInterval: 1000, ackIdle: 200 });
  client.connect();
  const ws = WS.last;
  ws.hello();
  subscribed(client, ws, 5);
  ws.take();
  push(ws, 6);
  tick(100);
  push(ws, 7);
  tick(150);
  assert.deepEqual(ws.take('ACK'), [], 'still flowing: 150 ms since the last push');
  tick(50);
  assert.deepEqual(ws.take('ACK'), ['ACK|/rooms/a|id=7|'], 'idle for 200 ms');
  // A steady flow never idles: the interval still acks.
  for (let id = 8; id <= 20; id++) {
    push(ws, id);
    tick(100);
  }
  const acks = ws.take('ACK');
  assert.equal(acks.length, 1, 'one ack per interval');
  assert.match(acks[0], /^ACK\|\/rooms\/a\|id=(1[4-9]|20)\|$/);
  tick(200);
  assert.deepEqual(ws.take('ACK'), ['ACK|/rooms/a|id=20|']);
  tick(5000);
  assert.deepEqual(ws.take('ACK'), []);
});

test('a stream subscribed with ack: false is never acked, others are', (t) => {
  const { client, WS, tick } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello();
  const got = [];
  client.subscribe('/rooms/log', (body, { offset }) => got.push(offset), { ack: false });
  const [sub] = ws.take('SUB');
  ws.receive(`SUB200|/rooms/log|r=${rOf(sub)};id=3;e=E1|`);
  subscribed(client, ws, 5);
  push(ws, 4, 'E1', '/rooms/log');
  push(ws, 6);
  tick(2000);
  assert.deepEqual(got, [4]);
  assert.deepEqual(ws.take('ACK'), ['ACK|/rooms/a|id=6|']);
  client.close();
  assert.deepEqual(ws.take('ACK'), [], 'close() does not ack it either');
});

test('subscribe with since replays from there, overriding a known position, and reposition resends SUB', (t) => {
  const storage = new MemoryStorage();
  storage.setItem('switchboard.streams', JSON.stringify({ '/rooms/a': { last: 9, epoch: 'E1' } }));
  const { client, WS } = setup(t, { storage });
  const got = [];
  client.subscribe('/rooms/a', (body, { offset }) => got.push(offset), { since: 0 });
  assert.deepEqual(client.position('/rooms/a'), { last: 0, epoch: null, tag: null });
  client.connect();
  const ws = WS.last;
  ws.hello();
  const [sub] = ws.take('SUB');
  assert.match(sub, /^SUB\|\/rooms\/a\|r=\d+;since=0\|$/, 'no epoch: any epoch will do');
  ws.receive(`SUB200|/rooms/a|r=${rOf(sub)};id=0;e=E2;recovered=1|`);
  for (let id = 1; id <= 3; id++) push(ws, id, 'E2');
  assert.deepEqual(got, [1, 2, 3]);
  assert.deepEqual(client.position('/rooms/a'), { last: 3, epoch: 'E2', tag: null });

  // Reposition while subscribed: a new SUB, old pushes beyond the new start are dropped
  // until the replay brings them in order.
  const got2 = [];
  client.subscribe('/rooms/a', (body, { offset }) => got2.push(offset), { since: 1, epoch: 'E2' });
  const [again] = ws.take('SUB');
  assert.match(again, /^SUB\|\/rooms\/a\|r=\d+;since=1;e=E2\|$/);
  push(ws, 4, 'E2'); // live push racing the replay: a gap from 1, dropped
  ws.receive(`SUB200|/rooms/a|r=${rOf(again)};id=1;e=E2;recovered=1|`);
  for (let id = 2; id <= 4; id++) push(ws, id, 'E2');
  assert.deepEqual(got2, [2, 3, 4]);
  assert.throws(() => client.subscribe('/rooms/a', () => {}, { since: -1 }), RangeError);
});

test('subscribe with since answered SUB410 reports not recovered and continues from the top', (t) => {
  const { client, WS, events } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello();
  const got = [];
  client.subscribe('/rooms/a', (body, { offset }) => got.push(offset), { since: 0 });
  const [sub] = ws.take('SUB');
  ws.receive(`SUB410|/rooms/a|r=${rOf(sub)};id=40;e=E1;recovered=0|{"error":"history_gone"}`);
  push(ws, 41);
  assert.deepEqual(got, [41]);
  const nr = events.filter(([n]) => n === 'notRecovered').map(([, p]) => p);
  assert.equal(nr.length, 1);
  assert.equal(nr[0].stream, '/rooms/a');
  assert.equal(nr[0].offset, 40);
});

test('unsubscribe(stream) drops every handler, sends UNSUB once, and is false when nothing was subscribed', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello();
  const { got } = subscribed(client, ws, 5);
  const other = [];
  const stopOther = client.subscribe('/rooms/a', (body, { offset }) => other.push(offset));
  assert.deepEqual(ws.take('SUB'), [], 'already subscribed');
  assert.equal(client.unsubscribe('/rooms/a'), true);
  assert.equal(ws.take('UNSUB').length, 1);
  stopOther(); // a stale stop function does nothing
  assert.deepEqual(ws.take('UNSUB'), []);
  push(ws, 6);
  assert.deepEqual([got, other], [[], []]);
  assert.equal(client.unsubscribe('/rooms/a'), false);
  assert.equal(client.position('/rooms/a'), null);
});

test('gap detection: a push skipping ahead is not delivered; the client resubscribes from its last offset', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello();
  const { got } = subscribed(client, ws, 5);
  ws.take();
  push(ws, 6);
  push(ws, 8); // 7 is missing
  assert.deepEqual(got.map(([, o]) => o), [6]);
  const [resub] = ws.take('SUB');
  assert.match(resub, /^SUB\|\/rooms\/a\|r=\d+;since=6;e=E1\|$/);
  ws.receive(`SUB200|/rooms/a|r=${rOf(resub)};id=6;e=E1;recovered=1|`);
  push(ws, 7);
  push(ws, 8);
  assert.deepEqual(got.map(([, o]) => o), [6, 7, 8]);
});

test('ACK503 (answered without r): the ack is sent again later with the highest processed offset, backing off until ACK200', (t) => {
  const { client, WS, events, tick } = setup(t, { ackInterval: 1000, ackIdle: 0 });
  client.connect();
  const ws = WS.last;
  ws.hello();
  subscribed(client, ws, 5);
  ws.take();
  push(ws, 6);
  push(ws, 7);
  tick(1000);
  assert.deepEqual(ws.take('ACK'), ['ACK|/rooms/a|id=7|']);
  // The engine could not record it: the server answers the error even though the ACK had no r.
  ws.receive('ACK503|/rooms/a||{"error":"ack_failed","reason":"redis unavailable"}');
  tick(999);
  assert.deepEqual(ws.take('ACK'), [], 'not at once');
  tick(1);
  const [retry] = ws.take('ACK');
  const m = /^ACK\|\/rooms\/a\|r=(\d+);id=(\d+)\|$/.exec(retry);
  assert.ok(m, retry);
  assert.ok(Number(m[2]) >= 7, 'same or higher offset');
  // Still failing: the next retry waits longer (random() = 1: 2000 ms), answered with r this time.
  ws.receive(`ACK503|/rooms/a|r=${m[1]}|{"error":"ack_failed","reason":"redis unavailable"}`);
  push(ws, 8); // processed meanwhile: the retry carries it
  tick(1000);
  const [withNew] = ws.take('ACK');
  assert.match(withNew, /^ACK\|\/rooms\/a\|r=\d+;id=8\|$/, 'the regular tick re-sends it too, with the new top');
  ws.receive(`ACK503|/rooms/a|r=${rOf(withNew)}|{"error":"ack_failed"}`);
  tick(999); // the retry set 2000 ms after the second failure
  assert.deepEqual(ws.take('ACK'), []);
  tick(1);
  const [again] = ws.take('ACK');
  assert.match(again, /^ACK\|\/rooms\/a\|r=\d+;id=8\|$/);
  ws.receive(`ACK200|/rooms/a|r=${rOf(again)}|`);
  tick(60000);
  assert.deepEqual(ws.take('ACK'), [], 'recorded: no more retries');
  push(ws, 9);
  tick(1000);
  assert.deepEqual(ws.take('ACK'), ['ACK|/rooms/a|id=9|'], 'back to plain acks');
  assert.deepEqual(events.filter(([n]) => n === 'error'), [], 'a retried ack is not an application error');
});

test('ACK503 just before the socket drops: the ack is sent again after the reconnect', (t) => {
  const { client, WS, tick } = setup(t, { ackInterval: 1000, ackIdle: 0 });
  client.connect();
  WS.last.hello('sess1');
  subscribed(client, WS.last, 5);
  push(WS.last, 6);
  tick(1000);
  assert.deepEqual(WS.last.take('ACK'), ['ACK|/rooms/a|id=6|']);
  WS.last.receive('ACK503|/rooms/a||{"error":"ack_failed"}');
  WS.last.serverClose(1006);
  tick(500);
  const ws = WS.last;
  ws.hello('sess1', { resumed: true });
  const [sub] = ws.take('SUB');
  assert.match(sub, /^SUB\|\/rooms\/a\|r=\d+;since=6;e=E1\|$/);
  ws.receive(`SUB200|/rooms/a|r=${rOf(sub)};id=6;e=E1;recovered=1|`);
  tick(1000);
  const acks = ws.take('ACK');
  assert.equal(acks.length, 1, String(acks));
  assert.match(acks[0], /^ACK\|\/rooms\/a\|r=\d+;id=6\|$/);
});

test('4429: backs off longer than after an ordinary drop, then resends every unanswered request with its k', async (t) => {
  const listeners = new Map();
  const saved = [globalThis.addEventListener, globalThis.removeEventListener];
  globalThis.addEventListener = (type, fn) => listeners.set(type, fn);
  globalThis.removeEventListener = (type, fn) => listeners.get(type) === fn && listeners.delete(type);
  t.after(() => ([globalThis.addEventListener, globalThis.removeEventListener] = saved));
  const { client, WS, events, tick } = setup(t, { minDelay: 500, rateLimitDelay: 5000, requestTimeout: 30000 });
  client.connect();
  WS.last.hello('sess1');
  const p1 = client.request('POST', '/orders', { n: 1 });
  const p2 = client.request('POST', '/orders', { n: 2 }, { idempotencyKey: 'mine-2' });
  const p3 = client.request('GET', '/status');
  const first = WS.last.take();
  assert.equal(first.length, 3);
  const keys = first.map((f) => /[|;]k=([^;|]+)/.exec(f)?.[1]);
  assert.ok(keys[0], 'a POST gets an idempotency key');
  assert.equal(keys[1], 'mine-2');
  assert.equal(keys[2], undefined, 'GET is safe to resend as is');

  // None answered: the server closes for exceeding its rate limit.
  WS.last.serverClose(4429, 'rate limit');
  assert.equal(client.state, 'reconnecting');
  assert.equal(events.find(([n]) => n === 'close')[1].willReconnect, true);
  let settled = 0;
  for (const p of [p1, p2, p3]) p.then(() => settled++, () => settled++);
  listeners.get('online')(); // coming back online does not cut the back-off short
  tick(5499); // rateLimitDelay + the ordinary backoff (random() = 1: 500 ms)
  assert.equal(WS.instances.length, 1, 'no reconnect during the back-off');
  await flush();
  assert.equal(settled, 0, 'requests are kept, not rejected');
  tick(1);
  assert.equal(WS.instances.length, 2);
  const ws = WS.last;
  ws.hello('sess1', { resumed: true });
  const resent = ws.take().filter((f) => !f.startsWith('SUB|') && !f.startsWith('ACK|'));
  assert.deepEqual(resent, first, 'the same frames: same r, same k, same body');

  ws.receive(`POST201|/orders|r=${rOf(resent[1])}|{"id":2,"duplicate":false}`);
  ws.receive(`POST201|/orders|r=${rOf(resent[0])}|{"id":1,"duplicate":true}`);
  ws.receive(`GET200|/status|r=${rOf(resent[2])}|up`);
  assert.deepEqual(
    (await Promise.all([p1, p2, p3])).map((res) => [res.status, res.body]),
    [[201, '{"id":1,"duplicate":true}'], [201, '{"id":2,"duplicate":false}'], [200, 'up']],
  );
});

test('after 4429 an ordinary drop uses the ordinary backoff again', (t) => {
  const { client, WS, tick } = setup(t, { minDelay: 100, maxDelay: 1000, rateLimitDelay: 3000 });
  client.connect();
  WS.last.hello();
  WS.last.serverClose(4429);
  tick(3099);
  assert.equal(WS.instances.length, 1);
  tick(1);
  assert.equal(WS.instances.length, 2);
  WS.last.hello();
  WS.last.serverClose(1006);
  tick(199); // attempt 1: 200 ms
  assert.equal(WS.instances.length, 2);
  tick(1);
  assert.equal(WS.instances.length, 3);
});

// ----- message tags (META t) ------------------------------------------------

const tpush = (ws, id, tag, e = 'E1', stream = '/rooms/a') => ws.receive(`PUSH200|${stream}|id=${id};e=${e};t=${tag}|m${id}`);

/** Drop the connection, reconnect (whatever the backoff), HELLO, and return the SUB the client sent. */
function resubscribe(WS, tick) {
  const n = WS.instances.length;
  WS.last.serverClose(1001);
  tick(20000);
  assert.equal(WS.instances.length, n + 1);
  WS.last.hello('sess1', { resumed: true });
  const subs = WS.last.take('SUB');
  assert.equal(subs.length, 1);
  return subs[0];
}

test('tags: a resume sends since/e/t of the last message handed over', (t) => {
  const { client, WS, tick } = setup(t);
  client.connect();
  WS.last.hello('sess1');
  const tags = [];
  client.subscribe('/rooms/a', (body, info) => tags.push([info.offset, info.tag]));
  const [sub] = WS.last.take('SUB');
  assert.match(sub, /^SUB\|\/rooms\/a\|r=\d+\|$/);
  WS.last.receive(`SUB200|/rooms/a|r=${rOf(sub)};id=5;e=E1|`);
  tpush(WS.last, 6, 'aaaaa6');
  tpush(WS.last, 7, '5kq2ab');
  tpush(WS.last, 7, 'zzzzzz'); // duplicate: neither handed over nor taken as the tag at 7
  assert.deepEqual(tags, [[6, 'aaaaa6'], [7, '5kq2ab']]);
  assert.deepEqual(client.position('/rooms/a'), { last: 7, epoch: 'E1', tag: '5kq2ab' });
  const again = resubscribe(WS, tick);
  assert.match(again, /^SUB\|\/rooms\/a\|r=\d+;since=7;e=E1;t=5kq2ab\|$/);
  WS.last.receive(`SUB200|/rooms/a|r=${rOf(again)};id=7;e=E1;recovered=1|`);
  assert.equal(client.position('/rooms/a').tag, '5kq2ab', 'a recovered resume keeps the tag at since');
  // An older server's push (no t) leaves no tag to check: the next resume goes by offset alone.
  push(WS.last, 8);
  assert.deepEqual(tags.at(-1), [8, null]);
  assert.match(resubscribe(WS, tick), /^SUB\|\/rooms\/a\|r=\d+;since=8;e=E1\|$/);
});

test('tags: a gap resubscription names the tag of the last message', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  WS.last.hello();
  subscribed(client, WS.last, 5);
  tpush(WS.last, 6, 'tag006');
  tpush(WS.last, 8, 'tag008'); // gap
  const [resub] = WS.last.take('SUB');
  assert.match(resub, /^SUB\|\/rooms\/a\|r=\d+;since=6;e=E1;t=tag006\|$/);
});

test('tags: after SUB410 the next SUB carries no t until a message is handed over', (t) => {
  const { client, WS, tick, events } = setup(t);
  client.connect();
  WS.last.hello('sess1');
  const { got } = subscribed(client, WS.last, 5);
  tpush(WS.last, 6, 'old006');
  const sub = resubscribe(WS, tick);
  assert.match(sub, /^SUB\|\/rooms\/a\|r=\d+;since=6;e=E1;t=old006\|$/);
  // The history was rolled back: offset 6 now holds another message.
  WS.last.receive(`SUB410|/rooms/a|r=${rOf(sub)};id=6;e=E1;recovered=0|tag mismatch`);
  assert.equal(events.filter(([n]) => n === 'notRecovered').length, 1);
  assert.deepEqual(client.position('/rooms/a'), { last: 6, epoch: 'E1', tag: null });
  const next = resubscribe(WS, tick);
  assert.match(next, /^SUB\|\/rooms\/a\|r=\d+;since=6;e=E1\|$/, 'no t: the message at 6 is unknown');
  WS.last.receive(`SUB200|/rooms/a|r=${rOf(next)};id=6;e=E1;recovered=1|`);
  tpush(WS.last, 7, 'new007');
  assert.deepEqual(got.map(([, id]) => id), [6, 7]);
  assert.match(resubscribe(WS, tick), /^SUB\|\/rooms\/a\|r=\d+;since=7;e=E1;t=new007\|$/);
});

test('tags: an unsolicited SUB410 (epoch changed on a live subscription) forgets the tag', (t) => {
  const { client, WS, tick } = setup(t);
  client.connect();
  WS.last.hello('sess1');
  subscribed(client, WS.last, 5);
  tpush(WS.last, 6, 'old006');
  WS.last.receive('SUB410|/rooms/a|id=3;e=E2;recovered=0|epoch changed');
  assert.deepEqual(client.position('/rooms/a'), { last: 3, epoch: 'E2', tag: null });
  assert.match(resubscribe(WS, tick), /^SUB\|\/rooms\/a\|r=\d+;since=3;e=E2\|$/);
});

test('tags: an epoch change revealed by a PUSH drops the old tag; the pushed message brings its own', (t) => {
  const { client, WS, tick } = setup(t);
  client.connect();
  WS.last.hello('sess1');
  const { got } = subscribed(client, WS.last, 5);
  tpush(WS.last, 6, 'old006');
  push(WS.last, 2, 'E2'); // new epoch, no tag (older node)
  assert.deepEqual(got.map(([, id]) => id), [6, 2]);
  assert.deepEqual(client.position('/rooms/a'), { last: 2, epoch: 'E2', tag: null });
  tpush(WS.last, 1, 'e3m001', 'E3'); // another epoch change, with a tag
  assert.deepEqual(client.position('/rooms/a'), { last: 1, epoch: 'E3', tag: 'e3m001' });
  assert.match(resubscribe(WS, tick), /^SUB\|\/rooms\/a\|r=\d+;since=1;e=E3;t=e3m001\|$/);
});

test('tags: a stream started live (SUB200 id=N) resubscribes with since=N and no t', (t) => {
  const { client, WS, tick } = setup(t);
  client.connect();
  WS.last.hello('sess1');
  subscribed(client, WS.last, 12);
  assert.deepEqual(client.position('/rooms/a'), { last: 12, epoch: 'E1', tag: null });
  assert.match(resubscribe(WS, tick), /^SUB\|\/rooms\/a\|r=\d+;since=12;e=E1\|$/);

  // A built-in stream positioned by the server's own SUB200 has no tag either, until a push.
  WS.last.receive('SUB200|/broadcast|id=3;e=B|');
  assert.deepEqual(client.position('/broadcast'), { last: 3, epoch: 'B', tag: null });
  tpush(WS.last, 4, 'brd004', 'B', '/broadcast'); // tracked (and acked) without a handler: its tag too
  assert.equal(client.position('/broadcast').tag, 'brd004');
  WS.last.receive('SUB200|/broadcast|id=9;e=B|'); // unsolicited, ahead, nobody listening: jump to the top
  assert.deepEqual(client.position('/broadcast'), { last: 9, epoch: 'B', tag: null });
});

test('tags: a live re-subscribe forgets the tag of a stream it repositions to the top', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  WS.last.hello('sess1');
  const { unsubscribe } = subscribed(client, WS.last, 5);
  tpush(WS.last, 6, 'tag006');
  unsubscribe(); // forgets the stream
  WS.last.take();
  client.subscribe('/rooms/a', () => {});
  const [sub] = WS.last.take('SUB');
  assert.match(sub, /^SUB\|\/rooms\/a\|r=\d+\|$/);
  WS.last.receive(`SUB200|/rooms/a|r=${rOf(sub)};id=9;e=E1|`);
  assert.deepEqual(client.position('/rooms/a'), { last: 9, epoch: 'E1', tag: null });
});

test('tags: persisted with the position and sent again after a reload', (t) => {
  const storage = new MemoryStorage();
  const a = setup(t, { storage, storageKey: 'sb' });
  a.client.connect();
  a.WS.last.hello('sess7');
  subscribed(a.client, a.WS.last, 5);
  tpush(a.WS.last, 6, '5kq2ab');
  a.WS.last.receive('SUB200|/broadcast|id=2;e=B|');
  assert.deepEqual(JSON.parse(storage.getItem('sb.streams')), {
    '/rooms/a': { last: 6, epoch: 'E1', tag: '5kq2ab' },
    '/broadcast': { last: 2, epoch: 'B' },
  });
  a.client.close();

  // "page reload"
  const WS = makeFakeWebSocket();
  const b = new SwitchboardClient('wss://sb.example/ws', { WebSocket: WS, storage, storageKey: 'sb' });
  t.after(() => b.close());
  assert.deepEqual(b.position('/rooms/a'), { last: 6, epoch: 'E1', tag: '5kq2ab' });
  const got = [];
  b.subscribe('/rooms/a', (body, { offset, tag }) => got.push([offset, tag]));
  b.connect();
  WS.last.hello('sess7', { resumed: true });
  const [sub] = WS.last.take('SUB');
  assert.match(sub, /^SUB\|\/rooms\/a\|r=\d+;since=6;e=E1;t=5kq2ab\|$/);
  WS.last.receive(`SUB410|/rooms/a|r=${rOf(sub)};id=6;e=E1;recovered=0|tag mismatch`);
  assert.deepEqual(JSON.parse(storage.getItem('sb.streams'))['/rooms/a'], { last: 6, epoch: 'E1' }, 'tag dropped from storage too');
  tpush(WS.last, 7, 'new007');
  assert.deepEqual(got, [[7, 'new007']]);
  assert.deepEqual(JSON.parse(storage.getItem('sb.streams'))['/rooms/a'], { last: 7, epoch: 'E1', tag: 'new007' });
});

test('tags: a stored position without a tag (older client) or with a bad one restores with no tag', (t) => {
  const storage = new MemoryStorage();
  storage.setItem(
    'switchboard.streams',
    JSON.stringify({ '/rooms/a': { last: 4, epoch: 'E1' }, '/rooms/b': { last: 5, epoch: 'E1', tag: 'a;b=c' }, '/rooms/c': { last: 6, epoch: 'E1', tag: 7 } }),
  );
  const { client, WS } = setup(t, { storage });
  for (const name of ['a', 'b', 'c']) client.subscribe('/rooms/' + name, () => {});
  client.connect();
  WS.last.hello();
  assert.deepEqual(WS.last.take('SUB').map((f) => f.replace(/r=\d+;/, '')), [
    'SUB|/rooms/a|since=4;e=E1|',
    'SUB|/rooms/b|since=5;e=E1|',
    'SUB|/rooms/c|since=6;e=E1|',
  ]);
});

test('tags: subscribe accepts a tag with since/epoch and validates it', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  WS.last.hello();
  const got = [];
  client.subscribe('/rooms/a', (body, { offset }) => got.push(offset), { since: 41, epoch: 'E1', tag: 'x0a1b2' });
  assert.deepEqual(client.position('/rooms/a'), { last: 41, epoch: 'E1', tag: 'x0a1b2' });
  const [sub] = WS.last.take('SUB');
  assert.match(sub, /^SUB\|\/rooms\/a\|r=\d+;since=41;e=E1;t=x0a1b2\|$/);
  WS.last.receive(`SUB200|/rooms/a|r=${rOf(sub)};id=41;e=E1;recovered=1|`);
  tpush(WS.last, 42, 'm00042');
  assert.deepEqual(got, [42]);
  // Repositioning without a tag forgets the one known.
  client.subscribe('/rooms/a', () => {}, { since: 30, epoch: 'E1' });
  assert.match(WS.last.take('SUB')[0], /^SUB\|\/rooms\/a\|r=\d+;since=30;e=E1\|$/);
  for (const tag of ['', 'a;b', 'a|b', 'x=y', 'é', 'a'.repeat(33), 42]) {
    assert.throws(() => client.subscribe('/rooms/a', () => {}, { since: 1, tag }), TypeError, String(tag));
  }
});

test('tags: a malformed or empty t is taken as no tag', (t) => {
  const { client, WS } = setup(t);
  client.connect();
  WS.last.hello();
  const tags = [];
  client.subscribe('/rooms/a', (body, { tag }) => tags.push(tag));
  WS.last.receive(`SUB200|/rooms/a|r=${rOf(WS.last.take('SUB')[0])};id=0;e=E1|`);
  WS.last.receive('PUSH200|/rooms/a|id=1;e=E1;t=|a');
  WS.last.receive('PUSH200|/rooms/a|id=2;e=E1;t=%41%42|b');
  WS.last.receive('PUSH200|/rooms/a|id=3;e=E1;t=ok0003|c');
  assert.deepEqual(tags, [null, null, 'ok0003']);
});

test('ids: a PUSH or SUB reply whose id is not a decimal 0…2^53−1 does not move the stream', (t) => {
  const { client, WS, events } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello();
  const { got } = subscribed(client, ws, 5);
  tpush(ws, 6, 'tag006');
  const before = { last: 6, epoch: 'E1', tag: 'tag006' };
  for (const id of ['9007199254740992', '1e3', '1000.0', '-7', '0x10', '', ' 7', '99999999999999999999']) {
    ws.receive(`PUSH200|/rooms/a|id=${id};e=E1;t=badid0|x`);
    assert.deepEqual(client.position('/rooms/a'), before, `PUSH id=${id}`);
    ws.receive(`SUB410|/rooms/a|id=${id};e=E2;recovered=0|epoch changed`);
    ws.receive(`SUB200|/rooms/a|id=${id};e=E1|`);
    assert.deepEqual(client.position('/rooms/a'), before, `SUB id=${id}`);
  }
  ws.receive('PUSH200|/rooms/a|e=E1;t=noid00|x'); // no id at all: the same
  assert.deepEqual(client.position('/rooms/a'), before);
  assert.deepEqual(got.map(([, id]) => id), [6]);
  assert.deepEqual(ws.take('SUB'), [], 'no resubscription either');
  assert.equal(events.filter(([n]) => n === 'notRecovered').length, 0);
  tpush(ws, 7, 'tag007'); // the stream goes on from where it was
  assert.deepEqual(got.map(([, id]) => id), [6, 7]);

  // The top of the range is an ordinary offset.
  const max = Number.MAX_SAFE_INTEGER; // 2^53 − 1
  client.subscribe('/rooms/b', () => {}, { since: max - 1, epoch: 'E1' });
  const [sub] = ws.take('SUB');
  ws.receive(`SUB200|/rooms/b|r=${rOf(sub)};id=${max - 1};e=E1;recovered=1|`);
  tpush(ws, max, 'topmax', 'E1', '/rooms/b');
  assert.deepEqual(client.position('/rooms/b'), { last: max, epoch: 'E1', tag: 'topmax' });
  ws.receive('PUSH200|/rooms/b|id=9007199254740992;e=E1;t=over00|x');
  assert.deepEqual(client.position('/rooms/b'), { last: max, epoch: 'E1', tag: 'topmax' });
});

// --- SUB refusals: a 4xx ends the subscription; 5xx and rate limiting are retried ---

const subErrors = (events, stream) => events.filter(([n, e]) => n === 'error' && e.code === 'subscribe' && e.stream === stream).map(([, e]) => e);

for (const [status, body] of [[400, '{"error":"bad_since"}'], [403, '{"error":"forbidden"}'], [404, 'no such room']]) {
  test(`SUB${status} ends the subscription: one error, not sent again on a retry pass nor at the next HELLO`, (t) => {
    const { client, WS, events, tick } = setup(t);
    client.connect();
    WS.last.hello();
    const got = [];
    const stop = client.subscribe('/rooms/a', (b, { offset }) => got.push(offset));
    const [sub] = WS.last.take('SUB');
    WS.last.receive(`SUB${status}|/rooms/a|r=${rOf(sub)}|${body}`);
    const [err] = subErrors(events, '/rooms/a');
    assert.equal(err.status, status);
    assert.equal(err.body, body);
    assert.equal(err.ended, true);
    assert.equal(client.position('/rooms/a'), null, 'no longer tracked');
    // Another stream's SUB503 starts the retry timer: only that stream goes again.
    client.subscribe('/rooms/b', () => {});
    const [subB] = WS.last.take('SUB');
    WS.last.receive(`SUB503|/rooms/b|r=${rOf(subB)}|{"error":"subscribe_failed"}`);
    assert.equal(subErrors(events, '/rooms/b')[0].ended, false);
    tick(500);
    assert.deepEqual(WS.last.take('SUB').map((f) => f.split('|')[1]), ['/rooms/b']);
    // Reconnect: the HELLO resubscribes /rooms/b only.
    WS.last.serverClose(4001);
    tick(500);
    WS.last.hello('sess1', { resumed: true });
    assert.deepEqual(WS.last.take('SUB').map((f) => f.split('|')[1]), ['/rooms/b']);
    tick(60000);
    assert.deepEqual(WS.last.take('SUB'), []);
    push(WS.last, 1);
    assert.deepEqual(got, []);
    assert.equal(subErrors(events, '/rooms/a').length, 1, 'reported once');
    stop(); // the stale stop function sends nothing
    assert.deepEqual(WS.last.take('UNSUB'), []);
    // Subscribing again starts anew (live: the old position is forgotten).
    client.subscribe('/rooms/a', () => {});
    assert.match(WS.last.take('SUB')[0], /^SUB\|\/rooms\/a\|r=\d+\|$/);
  });
}

test('a resubscription refused after a reconnect (SUB403) ends the subscription and drops its handlers', (t) => {
  const { client, WS, events, tick } = setup(t, { storage: new MemoryStorage() });
  client.connect();
  WS.last.hello();
  const { got } = subscribed(client, WS.last, 5);
  push(WS.last, 6);
  for (let i = 0; i < 2; i++) {
    WS.last.serverClose(4001);
    tick(500 * 2 ** i);
    WS.last.hello('sess1', { resumed: true });
    const subs = WS.last.take('SUB');
    if (i === 0) {
      assert.match(subs[0], /^SUB\|\/rooms\/a\|r=\d+;since=6;e=E1\|$/);
      WS.last.receive(`SUB403|/rooms/a|r=${rOf(subs[0])}|{"error":"forbidden"}`);
    } else {
      assert.deepEqual(subs, [], 'not sent again at the next HELLO');
    }
  }
  tick(60000);
  assert.deepEqual(WS.last.take('SUB'), []);
  assert.equal(subErrors(events, '/rooms/a').length, 1);
  assert.equal(subErrors(events, '/rooms/a')[0].ended, true);
  assert.equal(client.position('/rooms/a'), null);
  assert.equal(client.unsubscribe('/rooms/a'), false, 'no handler left');
  push(WS.last, 7);
  assert.deepEqual(got.map(([, o]) => o), [6]);
});

test('a refused gap resubscription of a live stream ends it with UNSUB (the server still holds it)', (t) => {
  const { client, WS, events } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello();
  const { got } = subscribed(client, ws, 5);
  ws.take();
  push(ws, 7); // 6 is missing
  const [resub] = ws.take('SUB');
  ws.receive(`SUB403|/rooms/a|r=${rOf(resub)}|{"error":"forbidden"}`);
  assert.equal(ws.take('UNSUB').length, 1);
  assert.equal(subErrors(events, '/rooms/a')[0].ended, true);
  push(ws, 6);
  assert.deepEqual(got, []);
});

test('SUB429 too_many_subscriptions is a refusal: the subscription ends and is not retried', (t) => {
  const { client, WS, events, tick } = setup(t);
  client.connect();
  WS.last.hello();
  client.subscribe('/rooms/a', () => {});
  const [sub] = WS.last.take('SUB');
  const body = '{"error":"too_many_subscriptions","reason":"at most 2 subscriptions per connection"}';
  WS.last.receive(`SUB429|/rooms/a|r=${rOf(sub)}|${body}`);
  const [err] = subErrors(events, '/rooms/a');
  assert.equal(err.status, 429);
  assert.equal(err.ended, true);
  tick(60000);
  assert.deepEqual(WS.last.take('SUB'), [], 'no retry');
  WS.last.serverClose(4001);
  tick(500);
  WS.last.hello('sess1', { resumed: true });
  assert.deepEqual(WS.last.take('SUB'), [], 'not at the HELLO either');
  assert.equal(client.position('/rooms/a'), null);
  assert.equal(subErrors(events, '/rooms/a').length, 1);
});

test('SUB429 too_many_requests and ERR429 rate_limited are temporary: retried with backoff, the subscription stays', (t) => {
  const { client, WS, events, tick } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello();
  const got = [];
  client.subscribe('/rooms/a', (b, { offset }) => got.push(offset));
  const [sub] = ws.take('SUB');
  ws.receive(`SUB429|/rooms/a|r=${rOf(sub)}|{"error":"too_many_requests","reason":"at most 64 requests in flight"}`);
  tick(499);
  assert.deepEqual(ws.take('SUB'), []);
  tick(1);
  const [retry] = ws.take('SUB');
  assert.match(retry, /^SUB\|\/rooms\/a\|r=\d+\|$/);
  ws.receive(`ERR429|/|r=${rOf(retry)}|{"error":"rate_limited","reason":"over 20 requests per second"}`);
  tick(999);
  assert.deepEqual(ws.take('SUB'), []);
  tick(1);
  const [again] = ws.take('SUB');
  ws.receive(`SUB200|/rooms/a|r=${rOf(again)};id=0;e=E1|`);
  push(ws, 1);
  assert.deepEqual(got, [1]);
  assert.deepEqual(subErrors(events, '/rooms/a').map((e) => [e.status, e.ended]), [[429, false], [429, false]]);
});

test('an error answer to a superseded SUB is ignored: the newer SUB decides', (t) => {
  const { client, WS, events, tick } = setup(t);
  client.connect();
  const ws = WS.last;
  ws.hello();
  const got = [];
  client.subscribe('/rooms/a', (b, { offset }) => got.push(offset));
  const [first] = ws.take('SUB');
  client.subscribe('/rooms/a', () => {}, { since: 3, epoch: 'E1' }); // repositions: a second SUB
  const [second] = ws.take('SUB');
  ws.receive(`ERR400|/|r=${rOf(first)}|{"error":"bad_frame"}`);
  assert.deepEqual(subErrors(events, '/rooms/a'), []);
  assert.deepEqual(client.position('/rooms/a'), { last: 3, epoch: 'E1', tag: null });
  ws.receive(`SUB200|/rooms/a|r=${rOf(second)};id=3;e=E1;recovered=1|`);
  push(ws, 4);
  assert.deepEqual(got, [4]);
  tick(60000);
  assert.deepEqual(ws.take('SUB'), []);
});

test('a pending SUB retry ends with its connection: the HELLO resubscribes once', (t) => {
  const { client, WS, tick } = setup(t);
  client.connect();
  WS.last.hello();
  client.subscribe('/rooms/a', () => {});
  const [sub] = WS.last.take('SUB');
  WS.last.receive(`SUB503|/rooms/a|r=${rOf(sub)}|{"error":"subscribe_failed"}`);
  WS.last.serverClose(4001);
  tick(500); // the reconnect, and when the retry would have fired
  WS.last.hello('sess1', { resumed: true });
  assert.equal(WS.last.take('SUB').length, 1);
  tick(60000);
  assert.deepEqual(WS.last.take('SUB'), [], 'no stale retry');
});
