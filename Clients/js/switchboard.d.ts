// Type definitions for the Switchboard browser client (protocol v1).

/** A parsed frame `HEAD|TARGET|META|BODY`. META values are the raw (still percent-encoded) strings. */
export interface Frame {
  method: string;
  /** HTTP-like status of responses and pushes; null for requests. */
  status: number | null;
  target: string;
  meta: Record<string, string>;
  body: string;
}

/** Input of {@link encodeFrame}. Meta values are stringified and percent-encoded where needed. */
export interface FrameInit {
  method: string;
  status?: number | null;
  target: string;
  meta?: Record<string, string | number | null | undefined>;
  /** Strings are sent as-is, `undefined` as an empty body, anything else as JSON. */
  body?: unknown;
}

/** Parse one frame; `null` when it is malformed. */
export function parseFrame(text: string): Frame | null;
/** Encode a frame; throws TypeError/RangeError on an invalid method, status, target or meta key. */
export function encodeFrame(frame: FrameInit): string;
/** Percent-encode what a TARGET may not hold; throws on '|' or a missing leading '/'. */
export function encodeTarget(target: string): string;
/** Strings as-is, `undefined` as '', anything else JSON.stringify'd. */
export function encodeBody(body: unknown): string;
/** Full-jitter backoff: `random() * min(maxDelay, minDelay * 2 ** attempt)`. */
export function backoffDelay(attempt: number, minDelay?: number, maxDelay?: number, random?: () => number): number;

/** The subset of Web Storage the client uses (sessionStorage, localStorage, ...). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** The subset of the WebSocket API the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string; wasClean?: boolean }) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export type TokenSource = string | (() => string | Promise<string>);

export interface SwitchboardOptions {
  /** JWT, or a function returning one; offered as subprotocol `bearer.<token>`. */
  token?: TokenSource;
  /** WebSocket constructor (defaults to `globalThis.WebSocket`). */
  WebSocket?: WebSocketConstructor;
  /** Backoff base in ms (default 500). */
  minDelay?: number;
  /** Backoff cap in ms (default 20000). */
  maxDelay?: number;
  /** Ms a connection must stay open before backoff attempts reset (default 10000). */
  stableAfter?: number;
  /**
   * Longest wait in ms before processed offsets are acked while pushes keep coming (default 1000).
   * Also the first retry delay of an ack the server answered `ACK503` (later retries: random,
   * up to a cap that doubles each time, at most maxDelay).
   */
  ackInterval?: number;
  /** Ack after this many ms without a new push (default 250); 0 (or >= ackInterval) acks on the interval only. */
  ackIdle?: number;
  /** Default request timeout in ms (default 10000). */
  requestTimeout?: number;
  /**
   * Extra wait in ms before reconnecting after close code 4429 (the server closed the
   * connection for exceeding its rate limit), added to the ordinary backoff (default 5000).
   * The browser's `online` event does not cut it short.
   */
  rateLimitDelay?: number;
  /**
   * Where the session id and stream positions (offset, epoch and tag of the last message handed
   * over) are persisted (e.g. `sessionStorage`).
   */
  storage?: StorageLike;
  /** Key prefix in `storage` (default 'switchboard'): `<prefix>.sid`, `<prefix>.streams`. */
  storageKey?: string;
  /** Random source in [0, 1) for the jitter (default Math.random). */
  random?: () => number;
}

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** The HELLO body (§3.3). */
export interface Hello {
  node?: string;
  resumed?: boolean;
  session?: string;
  /** Highest acked offset per stream of a resumed session. */
  streams?: Record<string, number>;
  user?: string;
  [key: string]: unknown;
}

export interface NotRecoveredEvent {
  stream: string;
  /** The SUB410 body, or 'epoch changed'. */
  reason: string;
  /** The offset the stream continues from. */
  offset: number;
  epoch: string | null;
}

export interface CloseEvent {
  code: number;
  reason: string;
  wasClean: boolean;
  /** false after close(), 4403 and 4409. */
  willReconnect: boolean;
}

export interface SwitchboardError extends Error {
  /** 'bad_frame' | 'socket' | 'subscribe' | 'server' | 'timeout' | 'closed' | 'auth' | ... */
  code?: string;
  stream?: string;
  status?: number;
  body?: string;
  /**
   * `code: 'subscribe'` only. true: the SUB was refused (a 4xx: 403/404 from the route, 400,
   * `SUB429` with error `too_many_subscriptions`) and the subscription ended: its handlers were
   * dropped and it is not sent again; subscribe again to retry. false: the subscription is kept;
   * not now (5xx, or 429 for too many requests / the rate limit): the SUB goes again after a
   * backoff, and after a reconnect.
   */
  ended?: boolean;
  frame?: Frame | string;
}

export interface SwitchboardEvents {
  state: ConnectionState;
  hello: Hello;
  notRecovered: NotRecoveredEvent;
  error: SwitchboardError;
  close: CloseEvent;
}

export interface PushInfo {
  stream: string;
  offset: number;
  epoch: string | null;
  /**
   * The message's tag (META `t`, six of `[0-9a-z]`): with offset and epoch, its identity. null
   * when the server sent none (an older server). Keep it with the offset to resume from this
   * message later (`subscribe(stream, handler, { since: offset, epoch, tag })`).
   */
  tag: string | null;
}

export type PushHandler = (body: string, info: PushInfo) => void;

export interface SubscribeOptions {
  /**
   * Start after this offset, whatever position was known (a stored one included): the server
   * replays `since + 1 …` from the stream's history, then goes live. `0` replays all it keeps.
   * When history no longer reaches back that far, `notRecovered` fires and delivery continues
   * from the top. Without it: resume from the known position, else live from now.
   */
  since?: number;
  /** The epoch `since` belongs to (from an earlier push or HTTP read); omit when unknown. */
  epoch?: string;
  /**
   * The tag of the message at `since` (`PushInfo.tag`), used only with `since`; omit when
   * unknown (e.g. `since` came from a SUB or HTTP reply, not from a message). With it the server
   * answers not recovered (`notRecovered`) when the message it now keeps at `since` is another one
   * (a Redis failover lost it and wrote the offset again); without it the resume goes by offset
   * alone. Letters, digits and `_.~-`, at most 32 characters (else a TypeError).
   */
  tag?: string;
  /**
   * `false`: never ACK this stream. Acks let the server trim history once every subscriber
   * acked it, so a stream that later readers replay (a chat room's log) should not be acked.
   * Default true.
   */
  ack?: boolean;
}

export interface RequestOptions {
  /** Ms before the promise rejects with `code: 'timeout'` (default: requestTimeout). */
  timeout?: number;
  /**
   * Sent as META `k`, the same on every resend. Default: a random key for methods other
   * than GET/HEAD/OPTIONS; `true` forces a random key, `false` sends none.
   */
  idempotencyKey?: string | boolean;
}

export interface SwitchboardResponse {
  status: number;
  body: string;
  meta: Record<string, string>;
}

export class SwitchboardClient {
  constructor(url: string, options?: SwitchboardOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** The session id (from HELLO or storage), sent as `?sid=` on reconnect. */
  readonly sessionId: string | null;
  /** The last HELLO body. */
  readonly hello: Hello | null;

  connect(): void;
  /** Close for good: no reconnect, pending requests are rejected. */
  close(): void;
  on<E extends keyof SwitchboardEvents>(event: E, listener: (payload: SwitchboardEvents[E]) => void): () => void;

  /**
   * Subscribe; every PUSH is handed over once and in order. Returns the unsubscribe function.
   * A refused SUB (initial or on a resume) ends the subscription: one `error` event with
   * `code: 'subscribe'` and `ended: true`.
   */
  subscribe(stream: string, handler: PushHandler, options?: SubscribeOptions): () => void;
  /** Remove every handler of `stream` and send UNSUB; false when nothing was subscribed. */
  unsubscribe(stream: string): boolean;
  /**
   * `{last, epoch, tag}` of a tracked stream, or null. `tag` is the tag of the message at `last`,
   * null when `last` came from a SUB reply (subscribed live, not recovered, epoch changed) or the
   * message had none.
   */
  position(stream: string): { last: number | null; epoch: string | null; tag: string | null } | null;

  /**
   * Send a request; resent after reconnects (4429 included) until answered or timed out, with
   * the same `r` and META `k`. Resolves with any answer, errors included (e.g. 429 or `ERR429`).
   */
  request(method: string, url: string, body?: unknown, options?: RequestOptions): Promise<SwitchboardResponse>;
  /** Send `AUTH` with a new token (or one fetched from the token function); resolves on AUTH200. */
  refreshToken(token?: string): Promise<SwitchboardResponse>;
}

export default SwitchboardClient;
