// Switchboard browser client (protocol v1, see docs/protocol.md): the entry point.
// ES modules, no dependencies, no build step; import this file, the others are its parts:
//   frame.js          frame codec (parse/encode HEAD|TARGET|META|BODY)
//   backoff.js        full-jitter exponential backoff
//   stream-book.js    per-stream resume state and decisions (offsets, epoch, tag)
//   persistence.js    session id and positions in a Web Storage
//   client.js         the connection loop (SwitchboardClient), with
//   subscriptions.js  subscribe, SUB replies, pushes, acks
//   requests.js       requests and token refresh
//   errors.js         error objects

export { parseFrame, encodeTarget, encodeBody, encodeFrame } from './frame.js';
export { backoffDelay } from './backoff.js';
export { SwitchboardClient } from './client.js';
export { default } from './client.js';
