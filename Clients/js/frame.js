// The frame codec: `HEAD|TARGET|META|BODY` (docs/protocol.md §2), where HEAD is
// `METHOD` or `METHOD` + a three-digit status.

const MAX_FIELD = 4096;
const META_KEY = /^[a-z0-9_-]{1,32}$/;
const META_VALUE = /^[\x21-\x7e]*$/;
const TARGET = /^\/(?:[\x21-\x24\x26-\x7b\x7d\x7e]|%[0-9A-Fa-f]{2})*$/; // printable, no '|', valid %XX
const HEAD = /^([A-Z]{1,16})(\d{3})?$/;

/**
 * Parse one frame `HEAD|TARGET|META|BODY`. Returns
 * `{method, status, target, meta, body}` (status is a number or null, meta a plain
 * object of raw string values) or `null` when the frame is malformed.
 */
export function parseFrame(text) {
  if (typeof text !== 'string') return null;
  const i1 = text.indexOf('|');
  if (i1 < 0) return null;
  const i2 = text.indexOf('|', i1 + 1);
  if (i2 < 0) return null;
  const i3 = text.indexOf('|', i2 + 1);
  if (i3 < 0) return null;
  const head = HEAD.exec(text.slice(0, i1));
  if (!head) return null;
  const status = head[2] === undefined ? null : Number(head[2]);
  if (status !== null && status < 100) return null;
  const target = text.slice(i1 + 1, i2);
  if (target.length > MAX_FIELD || !TARGET.test(target)) return null;
  const metaText = text.slice(i2 + 1, i3);
  if (metaText.length > MAX_FIELD) return null;
  const meta = {};
  if (metaText !== '') {
    for (const pair of metaText.split(';')) {
      const eq = pair.indexOf('=');
      if (eq < 0) return null;
      const key = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      if (!META_KEY.test(key) || !META_VALUE.test(value) || value.includes('=')) return null;
      if (Object.prototype.hasOwnProperty.call(meta, key)) return null;
      Object.defineProperty(meta, key, { value, enumerable: true, writable: true, configurable: true });
    }
  }
  return { method: head[1], status, target, meta, body: text.slice(i3 + 1) };
}

function percentEncode(ch) {
  let out = '';
  for (const b of new TextEncoder().encode(ch)) out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  return out;
}

/** Percent-encode what a TARGET may not hold; throws on '|' or a missing leading '/'. */
export function encodeTarget(target) {
  if (typeof target !== 'string' || !target.startsWith('/')) throw new TypeError('target must start with "/"');
  if (target.includes('|')) throw new TypeError('target must not contain "|"');
  let out = '';
  for (let i = 0; i < target.length; i++) {
    const ch = target[i];
    const c = target.charCodeAt(i);
    if (ch === '%' && /^[0-9A-Fa-f]{2}$/.test(target.slice(i + 1, i + 3))) out += ch;
    else if (ch === '%') out += '%25';
    else if (c > 0x20 && c < 0x7f) out += ch;
    else {
      const cp = target.codePointAt(i);
      const s = String.fromCodePoint(cp);
      out += percentEncode(s);
      i += s.length - 1;
    }
  }
  if (out.length > MAX_FIELD) throw new RangeError('target longer than 4096 bytes');
  return out;
}

function encodeMetaValue(value) {
  const s = String(value);
  let out = '';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (c > 0x20 && c < 0x7f && ch !== '|' && ch !== ';' && ch !== '=') out += ch;
    else out += percentEncode(ch);
  }
  return out;
}

/** Encode a body: strings as-is, undefined as empty, anything else JSON. */
export function encodeBody(body) {
  if (body === undefined) return '';
  if (typeof body === 'string') return body;
  return JSON.stringify(body);
}

/**
 * Encode `{method, status?, target, meta?, body?}` to `HEAD|TARGET|META|BODY`.
 * Meta values that are not allowed on the wire are percent-encoded. Throws on an
 * invalid method, status, target or meta key.
 */
export function encodeFrame({ method, status = null, target, meta = {}, body } = {}) {
  if (typeof method !== 'string' || !/^[A-Z]{1,16}$/.test(method)) throw new TypeError('method must be 1-16 letters A-Z');
  let head = method;
  if (status !== null && status !== undefined) {
    if (!Number.isInteger(status) || status < 100 || status > 999) throw new RangeError('status must be 100-999');
    head += String(status);
  }
  const parts = [];
  for (const [key, value] of Object.entries(meta)) {
    if (value === undefined || value === null) continue;
    if (!META_KEY.test(key)) throw new TypeError(`bad meta key "${key}"`);
    parts.push(key + '=' + encodeMetaValue(value));
  }
  const metaText = parts.join(';');
  if (metaText.length > MAX_FIELD) throw new RangeError('meta longer than 4096 bytes');
  return head + '|' + encodeTarget(target) + '|' + metaText + '|' + encodeBody(body);
}
