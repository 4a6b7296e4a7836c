// Reconnect and retry delays (the sibling of the Swift client's Backoff.swift).

/** Full-jitter exponential backoff: random() * min(maxDelay, minDelay * 2^attempt). */
export function backoffDelay(attempt, minDelay = 500, maxDelay = 20000, random = Math.random) {
  const cap = Math.min(maxDelay, minDelay * Math.pow(2, Math.max(0, attempt)));
  return random() * cap;
}
