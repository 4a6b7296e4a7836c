// A reference server for `scripts/bench.sh peer`: the fan-out scenario of `switchboard bench
// fanout` served by Node's `ws` (Debian's node-ws), written the way a Node application would be:
// one stream, SUB answered, each POST numbered and sent to every subscriber with `ws.send`.
// It speaks only the frames the load tool uses (docs/protocol.md): SUB → SUB200, POST → PUSH200
// to every subscriber + POST201. Usage: NODE_PATH=/usr/share/nodejs node ws-reference.cjs PORT
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 18090);
const epoch = 'ref00001';
const streams = new Map(); // stream → { top, subscribers: Set<WebSocket> }

function stream(name) {
  let s = streams.get(name);
  if (!s) streams.set(name, (s = { top: 0, subscribers: new Set() }));
  return s;
}

// METHOD[STATUS]|TARGET|META|BODY, split on the first three '|'.
function parse(text) {
  const a = text.indexOf('|');
  const b = text.indexOf('|', a + 1);
  const c = text.indexOf('|', b + 1);
  if (a < 0 || b < 0 || c < 0) return null;
  const meta = {};
  for (const pair of text.slice(b + 1, c).split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0) meta[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return { method: text.slice(0, a), target: text.slice(a + 1, b), meta, body: text.slice(c + 1) };
}

const server = new WebSocketServer({ port, host: '127.0.0.1', path: '/ws' });
server.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => {
    if (isBinary) return;
    const frame = parse(data.toString());
    if (!frame) return;
    const s = stream(frame.target);
    if (frame.method === 'SUB') {
      s.subscribers.add(socket);
      socket.on('close', () => s.subscribers.delete(socket));
      socket.send(`SUB200|${frame.target}|r=${frame.meta.r};id=${s.top};e=${epoch}|`);
    } else if (frame.method === 'POST') {
      s.top += 1;
      const push = `PUSH200|${frame.target}|id=${s.top};e=${epoch}|${frame.body}`;
      for (const subscriber of s.subscribers) subscriber.send(push);
      socket.send(`POST201|${frame.target}|r=${frame.meta.r}|{"offset":${s.top}}`);
    }
  });
});
server.on('listening', () => console.log(`ws reference server on 127.0.0.1:${port}/ws`));
