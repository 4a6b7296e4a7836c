#!/usr/bin/env bash
# Runs the tests, after installing what they need on a fresh Debian or Ubuntu machine.
#
#   bash scripts/test.sh                      everything: about 15 minutes on 2 cores (the first
#                                             Swift build alone takes 5-6)
#   bash scripts/test.sh swift js             only some parts, any of:
#       swift     unit and integration tests against real redis-server, Redis Cluster, nginx,
#                 HAProxy and switchboard node processes, the embedding example (Examples/Embed),
#                 and the OpenAPI and README checks (python3)                 ~8 min
#       js        the JavaScript client's unit tests (Node.js)                seconds
#       browser   the chat example in headless Chromium                       ~1 min
#       proxy     the reconnecting proxy between real processes               ~1 min
#       autobahn  RFC 6455 conformance, direct and through the proxy          ~3 min
#       fuzz      a short libFuzzer run of each parser of untrusted input     ~4 min
#
# Everything the chosen parts need is checked first. Missing system packages (redis-server,
# redis-tools, nginx, haproxy, openssl, chromium, chromium-driver, build-essential, curl, python3,
# python3-venv) are installed with apt-get when it can (as root or with sudo); what it cannot
# install (the Swift toolchain; Node.js 20, for 'js' only; Python 2.7, for 'autobahn') or fix
# (too low an open-files limit for 'swift', whose idle-cost tests hold 10,000 connections: it
# raises the soft limit to the hard one itself) makes it stop at once and say what to do. Python
# packages (selenium, websockets) go into a virtual environment, .build-venv, never into the
# system's Python; a .build-venv whose pip does not run is made anew.
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
if wants swift; then
  need_tool redis-server redis-server; need_tool redis-cli redis-tools; need_tool nginx nginx; need_tool haproxy haproxy
  # The TLS tests of the Redis client make their certificate with this very binary.
  [ -x /usr/bin/openssl ] || packages+=(openssl)
fi
if wants browser; then need_tool redis-server redis-server; need_tool nginx nginx; need_tool chromium chromium; need_tool chromedriver chromium-driver; fi
# The JavaScript client's tests run Node.js, and so do the backend-bridge tests of 'swift' and
# 'browser' (an Express application: Debian's node-express, found through NODE_PATH).
if wants js || wants swift || wants browser; then
  have node || problems+=("node: Node.js 20 (apt-get install nodejs, or nodejs.org)")
  [ -f /usr/share/nodejs/express/package.json ] || packages+=(node-express)
fi
if wants autobahn || wants fuzz; then need_tool gcc build-essential; need_tool curl curl; fi
# python3 runs the OpenAPI and README checks of 'swift' (after its long build) and, in .build-venv,
# the browser and proxy tests; a venv needs ensurepip, which Debian ships apart, in python3-venv.
if wants swift || wants browser || wants proxy; then
  command -v python3 >/dev/null 2>&1 || packages+=(python3)
fi
if wants browser || wants proxy; then
  { command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' >/dev/null 2>&1; } || packages+=(python3-venv)
fi
# The idle-cost tests of 'swift' hold 10,000 connections across 3 node processes and 4 load
# processes, each of them with this shell's open-files limit: raise the soft limit to the hard one
# (and, as root, past it where that is too low).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if wants swift; then
  nofile=$(ulimit -n)
  if [ "$nofile" != unlimited ] && [ "$nofile" -lt 16384 ]; then
    ulimit -n 16384 2>/dev/null || true
    nofile=$(ulimit -n)
  fi
  if [ "$nofile" != unlimited ] && [ "$nofile" -lt 16384 ]; then
    problems+=("open files: 'ulimit -n' is $nofile and cannot go higher here (hard limit $(ulimit -Hn)); 'swift' needs 16384. Raise the hard limit: as root 'ulimit -n 65536' in the shell that runs this, a 'nofile' line in /etc/security/limits.conf (then log in again), LimitNOFILE= for a systemd service, or 'docker run --ulimit nofile=65536:65536'; or leave out 'swift'")
  fi
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
    # Through env: sudo's env_reset would drop an exported DEBIAN_FRONTEND.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    problems+=("system packages: apt-get install ${packages[*]} (as root)")
  fi
fi
# A python3 that is not Debian's (pyenv's, a hand-built one) gains nothing from python3-venv.
if [ ${#problems[@]} -eq 0 ] && { wants browser || wants proxy; } && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  problems+=("python3 ($(command -v python3)) has no ensurepip/venv module: install them for this Python, or put one that has them first on PATH")
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
  # One left by an earlier run is used only if its pip runs (not after its Python went away, or a
  # venv made without ensurepip); otherwise it is made anew.
  "$venv/bin/python3" -m pip --version >/dev/null 2>&1 || python3 -m venv --clear "$venv"
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
  python3 scripts/imports-check.py
  # One style (.swift-format); the same command with `format -i` instead of `lint --strict` applies it.
  swift format lint --strict -r Sources Tests Examples/Embed Examples/Chat/Sources Fuzz/Sources Package.swift
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
