#!/usr/bin/env bash
# Reproduces docs/benchmarks.md: builds the release binary, starts what each scenario needs on
# loopback, runs the load tool and prints its JSON summaries.
#   bash scripts/bench.sh [idle|fanout|steady|redis|cluster|peer|bridge|all]
# `peer` runs the fan-out scenario against Switchboard, a Node `ws` reference server
# (scripts/peer/ws-reference.cjs, Debian's node-ws) and the C floor of bare write() calls
# (scripts/peer/writecost.c), in one run, so ratios are measured, not remembered.
# `bridge` measures a request answered by an Express backend through the gateway (a WebSocket
# frame) against the same request sent straight to it over HTTP keep-alive (scripts/peer/
# bridge-backend.cjs, Debian's node-express), from one load-tool process, in alternating rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
swift build -c release --product switchboard >/dev/null
bin=.build/release/switchboard
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# A node (in-memory engine, or "$2" as --redis); limits raised so the load tool measures the
# gateway, not them.
node() {
  "$bin" serve --allow-anonymous --port "$1" --log-level warning --request-rate 1000000 --request-burst 100000 \
    --max-in-flight 1024 ${2:+--redis "$2"} >/dev/null 2>&1 &
  pids+=($!)
  server=$!
  sleep 1
}

if [[ $what == idle || $what == all ]]; then
  node 18080
  echo "# idle: 15,000 connections from 4 worker processes"
  "$bin" bench idle --url ws://127.0.0.1:18080/ws --server-pid "$server" --connections 15000 --processes 4 2>/dev/null
  kill "$server"
fi
if [[ $what == fanout || $what == all ]]; then
  node 18081
  for window in 32 128 512; do
    echo "# fanout: 1,000 subscribers, flat out with $window publishes in flight"
    "$bin" bench fanout --url ws://127.0.0.1:18081/ws --server-pid "$server" --subscribers 1000 --processes 2 \
      --duration 15 --rate 0 --window "$window" 2>/dev/null | tail -1
  done
  kill "$server"
fi
if [[ $what == steady || $what == all ]]; then
  node 18082
  echo "# steady: 1,000 subscribers, 20 messages/s = 20,000 deliveries/s"
  "$bin" bench fanout --url ws://127.0.0.1:18082/ws --server-pid "$server" --subscribers 1000 --processes 2 \
    --duration 20 --rate 20 2>/dev/null | tail -1
  kill "$server"
fi
if [[ $what == bridge || $what == all ]]; then
  [ -f /usr/share/nodejs/express/package.json ] || { echo "bridge: needs Debian's node-express (apt-get install node-express)"; exit 1; }
  NODE_PATH=/usr/share/nodejs command node scripts/peer/bridge-backend.cjs 18090 >/dev/null &
  pids+=($!)
  "$bin" serve --allow-anonymous --port 18091 --log-level warning --request-rate 1000000 --request-burst 100000 \
    --max-in-flight 1024 --backend http://127.0.0.1:18090 >/dev/null 2>&1 &
  pids+=($!)
  server=$!
  sleep 1
  echo "# bridge: 16 connections x 4 in flight, through the gateway and straight to the backend"
  "$bin" bench bridge --url ws://127.0.0.1:18091/ws --backend 127.0.0.1:18090 --connections 16 --window 4 --duration 5 --rounds 3
  kill "$server"
fi
if [[ $what == peer || $what == all ]]; then
  if [ ! -d /usr/share/nodejs/ws ]; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y node-ws >/dev/null; else echo "peer: needs Debian's node-ws (apt-get install node-ws)"; exit 1; fi
  fi
  mkdir -p .build/peer
  gcc -O2 -pthread -o .build/peer/writecost scripts/peer/writecost.c
  steady=(--subscribers 1000 --processes 2 --duration 20 --rate 20)
  flat=(--subscribers 1000 --processes 2 --duration 15 --rate 0 --window 128)
  summary() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(json.dumps({k: d[k] for k in ("deliveriesPerSecond","serverCPUMicrosPerDelivery","latencyP50Micros","latencyP99Micros") if k in d}))'; }
  node 18083
  echo "# peer, steady 20,000 deliveries/s: switchboard"
  "$bin" bench fanout --url ws://127.0.0.1:18083/ws --server-pid "$server" "${steady[@]}" 2>/dev/null | summary
  echo "# peer, steady: what the node itself adds (switchboard_fanout_duration_seconds, bucket upper bounds)"
  curl -s http://127.0.0.1:18083/metrics | python3 -c '
import re, sys
buckets = sorted((float(m.group(1)), float(m.group(2))) for m in
                 re.finditer(r"switchboard_fanout_duration_seconds_bucket\{[^}]*le=\"([0-9.e+-]+)\"[^}]*\} ([0-9.e+]+)", sys.stdin.read()))
total = buckets[-1][1] if buckets else 0
quantile = lambda q: next((le for le, n in buckets if n >= q * total), float("inf"))
print({"messages": int(total), "p50_ms_at_most": quantile(0.5) * 1e3, "p99_ms_at_most": quantile(0.99) * 1e3})'
  echo "# peer, flat out, window 128: switchboard"
  "$bin" bench fanout --url ws://127.0.0.1:18083/ws --server-pid "$server" "${flat[@]}" 2>/dev/null | summary
  kill "$server"
  NODE_PATH=/usr/share/nodejs command node scripts/peer/ws-reference.cjs 18084 >/dev/null &
  pids+=($!)
  server=$!
  sleep 1
  echo "# peer, steady 20,000 deliveries/s: node ws"
  "$bin" bench fanout --url ws://127.0.0.1:18084/ws --server-pid "$server" "${steady[@]}" 2>/dev/null | summary
  echo "# peer, flat out, window 128: node ws"
  "$bin" bench fanout --url ws://127.0.0.1:18084/ws --server-pid "$server" "${flat[@]}" 2>/dev/null | summary
  kill "$server"
  echo "# peer, C floor: one write() per socket per message, 1,000 sockets, 20 messages/s"
  .build/peer/writecost 1000 400 1 50000
  echo "# peer, C floor: flat out"
  .build/peer/writecost 1000 1000 1
fi
if [[ $what == redis || $what == all ]]; then
  port=16399
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --loglevel warning >/dev/null &
  pids+=($!)
  sleep 0.5
  echo "# redis-benchmark -P 16 -c 50"
  redis-benchmark -p "$port" -P 16 -c 50 -n 2000000 -q -t set,get | tr '\r' '\n' | grep "per second"
  redis-benchmark -p "$port" -P 16 -c 50 -n 2000000 -q PUBLISH bench xxx | tr '\r' '\n' | grep "per second"
  for connections in 1 2; do
    echo "# switchboard bench redis: 50 callers, 16 commands per batch, $connections connection(s)"
    "$bin" bench redis --port "$port" --pipeline 16 --clients 50 --connections "$connections" --requests 2000000 | tail -1
  done
fi
if [[ $what == cluster || $what == all ]]; then
  port=16398
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --loglevel warning >/dev/null &
  pids+=($!)
  sleep 0.5
  node 18091 "redis://127.0.0.1:$port"; a=$server
  node 18092 "redis://127.0.0.1:$port"; b=$server
  redis-cli -p "$port" CONFIG RESETSTAT >/dev/null
  echo "# cross-node: 1,000 subscribers on node A, publisher on node B, 20 messages/s = 20,000 deliveries/s"
  "$bin" bench fanout --url ws://127.0.0.1:18091/ws --publish-url ws://127.0.0.1:18092/ws --server-pids "$a,$b" \
    --subscribers 1000 --processes 2 --duration 20 --rate 20 --redis-stats "127.0.0.1:$port" 2>&1 | grep -v "^published\|^subscribed" | tail -2
  echo "# cross-node: 20 subscribers on node A, publisher on node B, 1,000 messages/s = 20,000 deliveries/s"
  "$bin" bench fanout --url ws://127.0.0.1:18091/ws --publish-url ws://127.0.0.1:18092/ws --server-pids "$a,$b" \
    --subscribers 20 --processes 2 --duration 20 --rate 1000 --redis-stats "127.0.0.1:$port" 2>&1 | grep -v "^published\|^subscribed" | tail -2
  echo "# a group over two nodes (500 subscribers each), flat out with 128 publishes in flight"
  "$bin" bench fanout --url ws://127.0.0.1:18091/ws,ws://127.0.0.1:18092/ws --server-pids "$a,$b" \
    --subscribers 1000 --processes 2 --duration 15 --rate 0 --window 128 --redis-stats "127.0.0.1:$port" 2>&1 | grep -v "^published\|^subscribed" | tail -2
fi
