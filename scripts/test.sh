#!/usr/bin/env bash
# Runs the tests, after installing what they need on a fresh Debian or Ubuntu machine.
#
#   bash scripts/test.sh                      everything: about 15 minutes on 2 cores (the first
#                                             Swift build alone takes 5-6)
#   bash scripts/test.sh swift js             only some parts, any of:
#       swift     unit and integration tests against real redis-server, Redis Cluster, nginx,
#                 HAProxy and node processes, the embedding example (Examples/Embed), and the
#                 OpenAPI and README checks                                   ~8 min
#       js        the JavaScript client's unit tests (node)                   seconds
#       browser   the chat example in headless Chromium                       ~1 min
#       proxy     the reconnecting proxy between real processes               ~1 min
#       autobahn  RFC 6455 conformance, direct and through the proxy          ~3 min
#       fuzz      a short libFuzzer run of each parser of untrusted input     ~4 min
#
# Everything it needs is checked first. Missing system packages (redis-server, nginx, haproxy,
# chromium, chromium-driver, gcc, curl) are installed with apt-get when it can (as root or with
# sudo); otherwise it stops at once and says what to install. Python packages (selenium,
# websockets) go into a virtual environment, .build-venv, never into the system's Python.
#
# Platforms: a node serves on Linux and macOS 14+; this test command runs on Linux (it drives
# apt-get, Chromium, nginx and HAProxy as the CI machine has them).
set -euo pipefail
cd "$(dirname "$0")/.."

all=(swift js browser proxy autobahn fuzz)
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=("${all[@]}")
for part in "${parts[@]}"; do
  [[ " ${all[*]} " == *" $part "* ]] || { echo "unknown part '$part'; choose from: ${all[*]}"; exit 2; }
done
wants() { [[ " ${parts[*]} " == *" $1 "* ]]; }

# --- what is needed, checked before anything long starts ---------------------------------------
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
packages=()   # Debian packages to install
problems=()   # what cannot be installed here
need_tool() {  # need_tool TOOL PACKAGE
  have "$1" || packages+=("$2")
}
have swift || problems+=("swift: install the Swift 6 toolchain from swift.org")
if wants swift; then need_tool redis-server redis-server; need_tool redis-cli redis-tools; need_tool nginx nginx; need_tool haproxy haproxy; fi
if wants browser; then need_tool redis-server redis-server; need_tool nginx nginx; need_tool chromium chromium; need_tool chromedriver chromium-driver; fi
if wants js || wants swift; then have node || problems+=("node: Node.js 20 (apt-get install nodejs, or nodejs.org)"); fi
if wants autobahn || wants fuzz; then need_tool gcc build-essential; need_tool curl curl; fi
if wants browser || wants proxy; then
  have python3 || problems+=("python3 with the venv module")
fi
if wants autobahn; then
  py27=""
  roots=("${PYENV_ROOT:-$HOME/.pyenv}" "$HOME/.pyenv")
  have pyenv && roots=("$(pyenv root)" "${roots[@]}")
  for p in "${AUTOBAHN_PYTHON:-}" $(for r in "${roots[@]}"; do ls -d "$r"/versions/2.7*/bin/python 2>/dev/null | sort -V -r; done) "$(command -v python2.7 || true)"; do
    [ -n "$p" ] && [ -x "$p" ] && { py27="$p"; break; }
  done
  [ -n "$py27" ] || problems+=("Python 2.7 for Autobahn|Testsuite: pyenv install 2.7.18 (or set AUTOBAHN_PYTHON), or leave out 'autobahn'")
fi
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u | sed '/^$/d')
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || { have sudo && sudo="sudo"; }
  if have apt-get && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
    echo "installing ${packages[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    problems+=("system packages: apt-get install ${packages[*]} (as root)")
  fi
fi
if [ ${#problems[@]} -gt 0 ]; then
  echo "scripts/test.sh cannot run ${parts[*]} yet; missing:"
  printf '  - %s\n' "${problems[@]}"
  exit 1
fi
# A package's own service is not what the tests use: they start their own on free ports.
(service nginx stop || true) >/dev/null 2>&1

# Python packages for the browser and proxy tests, in a virtual environment of the repository.
if wants browser || wants proxy; then
  venv="$PWD/.build-venv"
  [ -x "$venv/bin/python3" ] || python3 -m venv "$venv"
  "$venv/bin/python3" -c 'import selenium, websockets' 2>/dev/null \
    || "$venv/bin/python3" -m pip install -q selenium 'websockets>=14,<18'
  export PATH="$venv/bin:$PATH"
fi

echo "running: ${parts[*]} (all of it takes about 15 minutes on 2 cores)"
if wants swift || wants browser || wants autobahn; then
  swift build --build-tests
fi
if wants swift; then
  # The OpenAPI spec (docs/openapi.yaml) must list exactly the HTTP routes the code registers, and
  # the README must quote the embedding example as it is.
  python3 scripts/openapi-check.py
  python3 scripts/readme-check.py
  # Every test bounds its own time; these outer bounds make a hang fail the run instead of stalling it.
  # The idle-cost tests hold 10,000 connections: they run alone, after the others.
  timeout --kill-after=30 900 swift test --skip-build --skip IdleCostTests
  timeout --kill-after=30 600 swift test --skip-build --filter IdleCostTests
  # The embedding example, a package of its own, in the same build folder (its dependencies are
  # this package's: nothing is built twice).
  (cd Examples/Embed && swift build --build-tests --scratch-path ../../.build && timeout --kill-after=10 300 swift test --skip-build --scratch-path ../../.build)
fi
if wants js; then
  timeout --kill-after=10 300 node --test Clients/js/test/
fi
if wants browser; then
  # The chat example in real headless Chromium, on the switchboard-chat binary built above.
  timeout --kill-after=30 900 bash scripts/browser-test.sh
fi
if wants proxy; then
  # The reconnecting proxy between real processes (a backend SIGKILLed under a live client).
  wants swift || wants browser || wants autobahn || swift build --product switchboard
  timeout --kill-after=10 300 bash scripts/proxy-e2e.sh
fi
if wants autobahn; then
  # RFC 6455 conformance: the Autobahn fuzzing client against the echo endpoint (sections 1-7, 10),
  # then the same cases through the reconnecting proxy in front of that endpoint.
  timeout --kill-after=10 600 bash scripts/autobahn.sh
  AUTOBAHN_THROUGH_PROXY=1 timeout --kill-after=10 600 bash scripts/autobahn.sh
fi
if wants fuzz; then
  # A short libFuzzer run of each parser of untrusted input (frames, RESP replies, token claims).
  timeout --kill-after=10 1200 bash scripts/fuzz.sh
fi
echo "all passed: ${parts[*]}"
