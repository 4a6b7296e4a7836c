import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseFrame, encodeFrame, backoffDelay } from '../switchboard.js';

test('parses requests, responses and pushes', () => {
  assert.deepEqual(parseFrame('POST|/rooms/lobby/messages|r=7|{"text":"hi"}'), {
    method: 'POST', status: null, target: '/rooms/lobby/messages', meta: { r: '7' }, body: '{"text":"hi"}',
  });
  assert.deepEqual(parseFrame('PUSH200|/rooms/lobby|id=42;e=k3f9x0a1|x'), {
    method: 'PUSH', status: 200, target: '/rooms/lobby', meta: { id: '42', e: 'k3f9x0a1' }, body: 'x',
  });
  assert.deepEqual(parseFrame('UNSUB200|/a%7Cb?x=1|r=9|'), {
    method: 'UNSUB', status: 200, target: '/a%7Cb?x=1', meta: { r: '9' }, body: '',
  });
  assert.deepEqual(parseFrame('ACK|/s||').meta, {});
});

test('the body is everything after the third "|"', () => {
  const f = parseFrame('PUSH200|/s|id=1;e=E|a|b||c|');
  assert.equal(f.body, 'a|b||c|');
  assert.equal(parseFrame('GET|/|||').body, '|');
});

test('rejects malformed frames', () => {
  const bad = [
    '', 'PUSH200', 'PUSH200|/s', 'PUSH200|/s|id=1', // fewer than three '|'
    '|/s||', 'push|/s||', 'P1SH|/s||', 'PUSH20|/s||', 'PUSH2000|/s||', 'PUSH099|/s||', 'ABCDEFGHIJKLMNOPQ|/||',
    'GET|||', 'GET|s||', 'GET|/a b||', 'GET|/é||', 'GET|/%zz||', 'GET|/%7||',
    'GET|/|r|', 'GET|/|=1|', 'GET|/|R=1|', 'GET|/|r=1;r=2|', 'GET|/|r=1;|', 'GET|/|r=a=b|', 'GET|/|r=a b|',
    'GET|/|' + 'k'.repeat(33) + '=1|', 'GET|/' + 'a'.repeat(4096) + '||',
    42, null,
  ];
  for (const text of bad) assert.equal(parseFrame(text), null, `should reject ${JSON.stringify(text)}`);
});

test('meta keys cannot touch the prototype', () => {
  const f = parseFrame('GET|/|__proto__=x;constructor=y|');
  assert.equal(Object.getPrototypeOf(f.meta), Object.prototype);
  assert.equal(Object.getOwnPropertyDescriptor(f.meta, '__proto__').value, 'x');
  assert.equal(f.meta.constructor, 'y');
});

test('encodes frames and round-trips through the parser', () => {
  const text = encodeFrame({ method: 'POST', target: '/rooms/lobby', meta: { r: 3, k: 'abc' }, body: 'a|b' });
  assert.equal(text, 'POST|/rooms/lobby|r=3;k=abc|a|b');
  assert.deepEqual(parseFrame(text), { method: 'POST', status: null, target: '/rooms/lobby', meta: { r: '3', k: 'abc' }, body: 'a|b' });
  assert.equal(encodeFrame({ method: 'PUSH', status: 200, target: '/s', meta: { id: 1 }, body: { a: [1] } }), 'PUSH200|/s|id=1|{"a":[1]}');
  assert.equal(encodeFrame({ method: 'GET', target: '/' }), 'GET|/||');
});

test('encoding percent-encodes what the wire does not allow', () => {
  assert.equal(encodeFrame({ method: 'GET', target: '/a b/é?q=%41%' }), 'GET|/a%20b/%C3%A9?q=%41%25||');
  assert.equal(encodeFrame({ method: 'GET', target: '/', meta: { k: 'a;b=c d' } }), 'GET|/|k=a%3Bb%3Dc%20d|');
  assert.throws(() => encodeFrame({ method: 'GET', target: '/a|b' }), TypeError);
  assert.throws(() => encodeFrame({ method: 'GET', target: 'a' }), TypeError);
  assert.throws(() => encodeFrame({ method: 'get', target: '/' }), TypeError);
  assert.throws(() => encodeFrame({ method: 'GET', target: '/', meta: { Bad: 1 } }), TypeError);
  assert.throws(() => encodeFrame({ method: 'GET', status: 99, target: '/' }), RangeError);
});

test('backoff delays stay within [0, min(max, min * 2^n)]', () => {
  for (let attempt = 0; attempt < 30; attempt++) {
    const cap = Math.min(20000, 500 * 2 ** attempt);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, 500, 20000);
      assert.ok(d >= 0 && d <= cap, `attempt ${attempt}: ${d} > ${cap}`);
    }
    assert.equal(backoffDelay(attempt, 500, 20000, () => 0), 0);
    assert.equal(backoffDelay(attempt, 500, 20000, () => 1), cap);
  }
  assert.equal(backoffDelay(3, 100, 1e9, () => 0.5), 400);
});
