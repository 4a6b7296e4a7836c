// The errors the client reports: `Error`s with fields (`code`, `stream`…) the application tests.

export function makeError(message, props) {
  return Object.assign(new Error(message), props);
}

/** The `error` field of a JSON error body (`{"error":"…","reason":"…"}`), or null. */
export function errorCode(body) {
  try {
    const value = JSON.parse(body);
    return value && typeof value.error === 'string' ? value.error : null;
  } catch {
    return null;
  }
}
