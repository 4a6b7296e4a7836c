// Saved positions: the session id and each stream's `{last, epoch, tag}` in a Web Storage
// (the `storage` option: sessionStorage survives a reload), under `<storageKey>.sid` and
// `<storageKey>.streams`. Without a storage nothing is saved.

import { toTag } from './stream-book.js';

export class Persistence {
  constructor(storage, prefix) {
    this.storage = storage || null;
    this.prefix = prefix;
  }

  /** Seeds `book` with the saved positions; returns the saved session id, or null. */
  load(book) {
    if (!this.storage) return null;
    let sid = null;
    try {
      const saved = this.storage.getItem(this.prefix + '.sid');
      if (saved) sid = saved;
      const streams = JSON.parse(this.storage.getItem(this.prefix + '.streams') || '{}');
      for (const [stream, pos] of Object.entries(streams || {})) {
        if (!pos || !Number.isSafeInteger(pos.last) || pos.last < 0) continue;
        book.seed(stream, pos.last, typeof pos.epoch === 'string' ? pos.epoch : null, toTag(pos.tag));
      }
    } catch {
      // corrupt storage: start fresh
    }
    return sid;
  }

  saveSession(sid) {
    this.write('.sid', sid);
  }

  /** Every stream of `book` whose position is known. */
  saveStreams(book) {
    if (!this.storage) return;
    const out = {};
    for (const [stream, s] of book.entries) {
      if (s.last === null) continue;
      out[stream] = s.tag === null ? { last: s.last, epoch: s.epoch } : { last: s.last, epoch: s.epoch, tag: s.tag };
    }
    this.write('.streams', JSON.stringify(out));
  }

  write(suffix, value) {
    if (!this.storage) return;
    const key = this.prefix + suffix;
    try {
      if (value === null) this.storage.removeItem(key);
      else this.storage.setItem(key, value);
    } catch {
      // quota exceeded, private mode: resume then starts from the server's acked offsets
    }
  }
}
