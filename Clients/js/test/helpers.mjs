// Test doubles shared by the *.test.mjs files (no tests in here).

/** A fresh FakeWebSocket class with its own `instances` list. */
export function makeFakeWebSocket() {
  class FakeWebSocket {
    static instances = [];
    static get last() {
      return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    }

    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closedByClient = null;
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      FakeWebSocket.instances.push(this);
    }

    send(data) {
      if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
      this.sent.push(data);
    }

    close(code = 1000, reason = '') {
      if (this.readyState >= 2) return;
      this.readyState = 3;
      this.closedByClient = { code, reason };
      if (this.onclose) this.onclose({ code, reason, wasClean: true });
    }

    // --- driven by the test ---
    open() {
      this.readyState = 1;
      if (this.onopen) this.onopen({});
    }

    receive(text) {
      if (this.onmessage) this.onmessage({ data: text });
    }

    serverClose(code, reason = '') {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason, wasClean: code !== 1006 });
    }

    /** What a browser reports for a refused upgrade (401/503...). */
    failHandshake() {
      this.readyState = 3;
      if (this.onerror) this.onerror({});
      if (this.onclose) this.onclose({ code: 1006, reason: '', wasClean: false });
    }

    /** Open and send HELLO. */
    hello(sid = 'sess1', { resumed = false, user = 'ann' } = {}) {
      this.open();
      const body = JSON.stringify({ node: 'n1', resumed, session: sid, streams: {}, user });
      this.receive(`HELLO200|/|s=${sid};resumed=${resumed ? 1 : 0};node=n1|${body}`);
    }

    /** Sent frames, optionally only those with this HEAD, then clears the log. */
    take(head) {
      const out = head ? this.sent.filter((f) => f.startsWith(head + '|')) : [...this.sent];
      this.sent = [];
      return out;
    }
  }
  return FakeWebSocket;
}

/** Minimal Web Storage. */
export class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

/** The `r` of a sent frame. */
export function rOf(frame) {
  return /\|(?:[^|]*;)?r=(\d+)/.exec(frame)?.[1];
}

export const flush = () => new Promise((resolve) => setImmediate(resolve));
