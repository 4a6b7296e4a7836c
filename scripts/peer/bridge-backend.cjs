// The backend of `bash scripts/bench.sh bridge`: Express answering GET /hello with a small JSON
// body, for requests through the gateway's bridge and straight from the load tool alike (it
// checks no signature, so both sides cost it the same).
// Usage: NODE_PATH=/usr/share/nodejs node bridge-backend.cjs PORT
'use strict';
const express = require('express');
const app = express();
app.set('etag', false);
app.get('/hello', (req, res) => res.json({ hello: req.get('Switchboard-User') || 'anonymous' }));
const server = app.listen(Number(process.argv[2] || 3000), '127.0.0.1', () => console.log('listening ' + server.address().port));
server.keepAliveTimeout = 65000;
