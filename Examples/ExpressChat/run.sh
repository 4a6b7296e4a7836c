#!/usr/bin/env bash
# The Express chat in one command: redis-server (free port, no persistence), two Switchboard
# gateway nodes (free ports) with the HTTP backend bridge pointing at Express, and Express
# (PORT, 3000 by default). Prints the URL to open; Ctrl-C stops everything.
#   SWITCHBOARD_BIN  the gateway binary (default: .build/debug/switchboard of this repository)
#   PORT             Express's port (3000); ADMINS, RATE_LIMIT, RATE_WINDOW: see app.cjs
#   NODE_PATH        where `express` is found (default /usr/share/nodejs: Debian's node-express)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${SWITCHBOARD_BIN:-$root/.build/debug/switchboard}"
port="${PORT:-3000}"
export NODE_PATH="${NODE_PATH:-/usr/share/nodejs}"

[ -x "$bin" ] || { echo "$bin is missing: run 'swift build --product switchboard' in $root first (or set SWITCHBOARD_BIN)" >&2; exit 1; }
command -v node >/dev/null || { echo "node is needed (Node.js 20: apt-get install nodejs)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
node -e "require.resolve('express')" 2>/dev/null || { echo "express is not found on NODE_PATH=$NODE_PATH (apt-get install node-express)" >&2; exit 1; }

free_port() { node -e "const s = require('net').createServer().listen(0, '127.0.0.1', () => { console.log(s.address().port); s.close(); })"; }
port_free() { node -e "const s = require('net').createServer().on('error', () => process.exit(1)).listen($1, '127.0.0.1', () => s.close())"; }
random_hex() { node -e "console.log(require('crypto').randomBytes(24).toString('hex'))"; }
# Until GET $1 answers 2xx (at most $2 seconds), or the process $3 exits.
wait_http() {
  local deadline=$((SECONDS + $2))
  until node -e "fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))" "$1" 2>/dev/null; do
    kill -0 "$3" 2>/dev/null || { echo "$4 exited; its log:" >&2; tail -n 20 "$logs/$4.log" >&2; return 1; }
    [ $SECONDS -lt "$deadline" ] || { echo "$4 did not answer $1 within $2 s; its log:" >&2; tail -n 20 "$logs/$4.log" >&2; return 1; }
    sleep 0.2
  done
}

port_free "$port" || { echo "port $port is taken: run with PORT=<another port>" >&2; exit 1; }
logs="$(mktemp -d "${TMPDIR:-/tmp}/express-chat.XXXXXX")"
pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped; logs in $logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Fresh secrets per run, handed over in the environment (not on command lines `ps` shows).
secret="$(random_hex)"
api_key="$(random_hex)"

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$logs" >"$logs/redis.log" 2>&1 &
pids+=($!)

gateway_urls=()
for i in 1 2; do
  gport="$(free_port)"
  gateway_urls+=("http://127.0.0.1:$gport")
  # rules.json holds the stream rules and the bridge's settings; the flags name this run's ports.
  SWITCHBOARD_BACKEND_SECRET="$secret" SWITCHBOARD_API_KEYS="$api_key" \
    "$bin" serve --config "$here/rules.json" --host 127.0.0.1 --port "$gport" --node-id "node-$i" \
    --redis "redis://127.0.0.1:$redis_port" --backend "http://127.0.0.1:$port" \
    --backend-connect-hook /switchboard/connect \
    --allowed-origin "http://127.0.0.1:$port" \
    --log-level warning >"$logs/node-$i.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$gport/health/ready" 30 $! "node-$i"
done

PORT="$port" BACKEND_SECRET="$secret" GATEWAY_API_KEY="$api_key" GATEWAY_URLS="$(IFS=,; echo "${gateway_urls[*]}")" \
  node "$here/app.cjs" >"$logs/express.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$port/config" 15 $! express

cat <<EOF
Express chat is up:
  open       http://127.0.0.1:$port/   (two browsers, or a private window, for two users; log in as
             "admin" for the admin role. Use 127.0.0.1, not localhost: the cookie is per host.)
  gateways   ${gateway_urls[*]}  (WebSocket at /ws; the page picks one, ?gateway=0 or 1 chooses)
  redis      redis://127.0.0.1:$redis_port
  logs       $logs
Ctrl-C stops everything.
EOF
# Until Ctrl-C, or until one of them exits (then the others are stopped too).
set +e
wait -n "${pids[@]}"
echo "a process exited; stopping the others" >&2
exit 1
