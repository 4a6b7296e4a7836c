#!/usr/bin/env bash
# `switchboard proxy` between real processes (Tests/ProxyEndToEnd): the example backend is
# SIGKILLed mid-stream and restarted under a live client. Builds nothing: it runs the binary
# `swift build` made (.build/debug/switchboard, or $SWITCHBOARD_BINARY). Needs the Python
# `websockets` package (pip install websockets).
set -euo pipefail
cd "$(dirname "$0")/.."
export SWITCHBOARD_BINARY="${SWITCHBOARD_BINARY:-$PWD/.build/debug/switchboard}"
[ -x "$SWITCHBOARD_BINARY" ] || { echo "$SWITCHBOARD_BINARY is missing: run swift build first"; exit 1; }
python3 -c 'import websockets' 2>/dev/null || { echo "websockets is needed (pip install websockets)"; exit 1; }
timeout --kill-after=10 300 python3 -m unittest discover -s Tests/ProxyEndToEnd -p 'test_*.py' -v "$@"
