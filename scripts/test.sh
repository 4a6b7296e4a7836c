#!/usr/bin/env bash
# Runs every test suite: Swift (unit + integration against real redis-server and
# real sockets) and the JavaScript client's unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)"; exit 1; }
swift build --build-tests
swift test --skip-build
node --test Clients/js/test/
