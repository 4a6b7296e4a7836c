#!/usr/bin/env bash
# The chat example in real headless Chromium (Tests/Browser): two users, a node restart, a
# page reload, two nodes behind nginx. Builds nothing: it runs the binary `swift build`
# made (.build/debug/switchboard-chat, or $CHAT_BIN). Needs chromium, chromium-driver,
# selenium (pip install selenium, or Debian's python3-selenium), redis-server and nginx.
# The Express chat (Examples/ExpressChat, test_express_chat.py) also runs .build/debug/switchboard
# (or $SWITCHBOARD_BIN) and needs node and Express (node-express); without them it is skipped.
# Extra arguments go to unittest: `-k express` runs the Express chat alone.
# Screenshots go to .build-artifacts/browser/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAT_BIN="${CHAT_BIN:-$PWD/.build/debug/switchboard-chat}"
export SWITCHBOARD_BIN="${SWITCHBOARD_BIN:-$PWD/.build/debug/switchboard}"
[ -x "$CHAT_BIN" ] || { echo "$CHAT_BIN is missing: run swift build --build-tests (or swift build --product switchboard-chat) first"; exit 1; }
for tool in chromium chromedriver; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install chromium chromium-driver)"; exit 1; }
done
python3 -c 'import selenium' 2>/dev/null || { echo "selenium is needed (pip install selenium, or apt-get install python3-selenium)"; exit 1; }
mkdir -p .build-artifacts/browser
# Each wait inside the tests is bounded; this outer bound turns a hang into a failure.
timeout --kill-after=20 600 python3 -m unittest discover -s Tests/Browser -p 'test_*.py' -v "$@"
