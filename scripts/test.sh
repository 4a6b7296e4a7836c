#!/usr/bin/env bash
# Runs every test suite: Swift (unit + integration against real redis-server and
# real sockets) and the JavaScript client's unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in redis-server nginx haproxy; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || [ -x "/usr/bin/$tool" ] || { echo "$tool is needed (apt-get install redis-server nginx haproxy)"; exit 1; }
done
# The OpenAPI spec (docs/openapi.yaml) must list exactly the HTTP routes the code registers.
python3 scripts/openapi-check.py
swift build --build-tests
# Every test bounds its own time; these outer bounds make a hang fail the run instead of stalling it.
timeout --kill-after=30 900 swift test --skip-build
# The chat example in real headless Chromium, on the switchboard-chat binary built above.
timeout --kill-after=30 900 bash scripts/browser-test.sh
# The reconnecting proxy between real processes (a backend SIGKILLed under a live client).
timeout --kill-after=10 300 bash scripts/proxy-e2e.sh
timeout --kill-after=10 300 node --test Clients/js/test/
# RFC 6455 conformance: the Autobahn fuzzing client against the echo endpoint (sections 1-7, 10).
timeout --kill-after=10 600 bash scripts/autobahn.sh
# The same cases through the reconnecting proxy in front of that endpoint.
AUTOBAHN_THROUGH_PROXY=1 timeout --kill-after=10 600 bash scripts/autobahn.sh
# A short libFuzzer run of each parser of untrusted input (frames, RESP replies).
timeout --kill-after=10 900 bash scripts/fuzz.sh
