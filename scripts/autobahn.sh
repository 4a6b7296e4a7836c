#!/usr/bin/env bash
# Autobahn WebSocket conformance (RFC 6455): runs the Autobahn|Testsuite fuzzing client against
# the gateway's echo endpoint and fails on any case that is not OK, NON-STRICT or INFORMATIONAL.
#   bash scripts/autobahn.sh                      builds nothing: needs .build/debug/switchboard
#   SWITCHBOARD_BIN=path bash scripts/autobahn.sh another binary
#   AUTOBAHN_URL=ws://127.0.0.1:9001/echo bash scripts/autobahn.sh   an echo server already running
#   AUTOBAHN_CASES='["5.*"]' bash scripts/autobahn.sh               other cases (a JSON list)
#   AUTOBAHN_THROUGH_PROXY=1 bash scripts/autobahn.sh   through `switchboard proxy` in front of the echo
# autobahntestsuite 0.8.2 runs on Python 2.7 only (pyenv's 2.7.x); it is installed once into
# .build-autobahn/py27 from PyPI, with every dependency pinned. Reports: .build-autobahn/reports/.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/.build-autobahn"
mkdir -p "$root"

# --- Python 2.7 -------------------------------------------------------------------------------
find_python27() {
  if [ -n "${AUTOBAHN_PYTHON:-}" ]; then echo "$AUTOBAHN_PYTHON"; return; fi
  local dirs=() d p
  if command -v pyenv >/dev/null 2>&1; then dirs+=("$(pyenv root)"); fi
  dirs+=("${PYENV_ROOT:-$HOME/.pyenv}" "$HOME/.pyenv")
  for d in "${dirs[@]}"; do
    for p in $(ls -d "$d"/versions/2.7*/bin/python 2>/dev/null | sort -V -r); do
      [ -x "$p" ] && { echo "$p"; return; }
    done
  done
  p="$(command -v python2.7 || true)"
  [ -n "$p" ] && echo "$p"
}
py27="$(find_python27)"
if [ -z "$py27" ] || ! "$py27" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
  echo "autobahn: Python 2.7 not found (looked in \$(pyenv root)/versions/2.7*/bin/python," \
       "~/.pyenv/versions/2.7*/bin/python and python2.7 on PATH); set AUTOBAHN_PYTHON" >&2
  exit 1
fi

# --- autobahntestsuite, pinned -----------------------------------------------------------------
# The last releases that still run on Python 2.7. Installed with --no-deps, so this list is the
# whole set. Everything is a wheel except wsaccel and zope.interface (C, built with gcc and the
# pyenv Python's headers) and autobahn, txaio, PyHamcrest (pure Python).
pins='autobahntestsuite==0.8.2
autobahn==0.10.9
txaio==2.1.0
wsaccel==0.6.6
ujson==2.0.3
Twisted==20.3.0
zope.interface==5.5.2
Automat==22.10.0
attrs==21.4.0
constantly==15.1.0
hyperlink==21.0.0
idna==2.10
incremental==22.10.0
PyHamcrest==1.10.1
typing==3.10.0.0
six==1.17.0
setuptools==44.1.1
klein==20.6.0
Tubes==0.2.1
Werkzeug==1.0.1
Jinja2==2.11.3
MarkupSafe==1.1.1
pyOpenSSL==21.0.0
cryptography==3.3.2
cffi==1.15.1
pycparser==2.21
enum34==1.1.10
ipaddress==1.0.23
service-identity==21.1.0
pyasn1==0.5.1
pyasn1-modules==0.3.0
unittest2==1.1.0
argparse==1.4.0
traceback2==1.4.0
linecache2==1.0.0'
site="$root/py27"
stamp="$(printf '%s\n%s\n' "$py27" "$pins")"
if [ ! -f "$site/.installed" ] || [ "$(cat "$site/.installed")" != "$stamp" ]; then
  echo "autobahn: installing autobahntestsuite 0.8.2 for $py27 into $site"
  started=$SECONDS
  rm -rf "$site" "$site.tmp"
  printf '%s\n' "$pins" > "$root/requirements.txt"
  if ! PIP_NO_INPUT=1 timeout --kill-after=10 600 "$py27" -m pip install --disable-pip-version-check \
      --no-warn-script-location --no-deps --target "$site.tmp" -r "$root/requirements.txt" \
      > "$root/install.log" 2>&1; then
    tail -40 "$root/install.log"; echo "autobahn: install failed (log: $root/install.log)" >&2; exit 1
  fi
  printf '%s\n' "$stamp" > "$site.tmp/.installed"
  mv "$site.tmp" "$site"
  echo "autobahn: installed in $((SECONDS - started)) s"
fi
# --target leaves zope's namespace .pth file, which only site.addsitedir reads (not PYTHONPATH).
launcher='import site, sys; site.addsitedir(sys.argv.pop(1)); sys.argv[0] = "wstest"; from autobahntestsuite.wstest import run; run()'
export PYTHONWARNINGS=ignore   # cryptography's "Python 2 is no longer supported"
version="$("$py27" -c "$launcher" "$site" -a 2>&1)" ||
  { echo "$version"; echo "autobahn: wstest does not start; rm -rf $site to reinstall" >&2; exit 1; }

# --- the server under test ---------------------------------------------------------------------
server_pid=""
proxy_pid=""
stop() {
  if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
cleanup() {
  stop "$proxy_pid"
  stop "$server_pid"
}
trap cleanup EXIT

if [ -n "${AUTOBAHN_URL:-}" ]; then
  url="$AUTOBAHN_URL"
else
  bin="${SWITCHBOARD_BIN:-.build/debug/switchboard}"
  [ -x "$bin" ] || { echo "autobahn: no server binary at $bin (swift build first, or set SWITCHBOARD_BIN)" >&2; exit 1; }
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  # The default --max-message-size (64 KiB) is exactly the largest payload of cases 1-7 and 10
  # (65536 bytes in 1.1.7/1.1.8, 1.2.7/1.2.8, 10.1.1); a larger limit keeps these cases about
  # framing, not about the limit.
  # SWITCHBOARD_* variables (a config file, connection limits) would change the server under test.
  (for v in $(compgen -e | grep '^SWITCHBOARD_'); do unset "$v"; done
   exec "$bin" serve --allow-anonymous --host 127.0.0.1 --port "$port" --echo-path /echo \
     --max-message-size 16777216 --max-queue-bytes 33554432 --log-level warning) > "$root/server.log" 2>&1 &
  server_pid=$!
  ready=""
  for _ in $(seq 1 150); do   # 30 s
    if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/health/live" 2>/dev/null; then ready=1; break; fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.2
  done
  if [ -z "$ready" ]; then
    tail -40 "$root/server.log"; echo "autobahn: server on port $port not live within 30 s" >&2; exit 1
  fi
  url="ws://127.0.0.1:$port/echo"
  if [ -n "${AUTOBAHN_THROUGH_PROXY:-}" ]; then
    # The reconnecting proxy in front of the echo endpoint: every case then also tests how the
    # proxy frames, fragments, pings and closes on the client's side.
    pport="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    (for v in $(compgen -e | grep '^SWITCHBOARD_'); do unset "$v"; done
     exec "$bin" proxy --upstream "$url" --port "$pport" --max-message-size 16777216 --max-queue-bytes 33554432 \
       --log-level warning) > "$root/proxy.log" 2>&1 &
    proxy_pid=$!
    ready=""
    for _ in $(seq 1 150); do
      if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$pport/health/ready" 2>/dev/null; then ready=1; break; fi
      kill -0 "$proxy_pid" 2>/dev/null || break
      sleep 0.2
    done
    [ -n "$ready" ] || { tail -40 "$root/proxy.log"; echo "autobahn: proxy on port $pport not ready within 30 s" >&2; exit 1; }
    url="ws://127.0.0.1:$pport/"
  fi
fi

# --- the fuzzing client ------------------------------------------------------------------------
reports="$root/reports"
rm -rf "$reports"; mkdir -p "$reports"
cases='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]'
cat > "$root/spec.json" <<EOF
{
  "outdir": "$reports",
  "servers": [{"agent": "switchboard", "url": "$url"}],
  "cases": ${AUTOBAHN_CASES:-$cases},
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
echo "autobahn: $(echo "$version" | tr -s ' \n' ' ')against $url"
started=$SECONDS
rc=0
(cd "$root" && timeout --kill-after=10 "${AUTOBAHN_TIMEOUT:-200}" \
  "$py27" -c "$launcher" "$site" -m fuzzingclient -s "$root/spec.json") > "$root/wstest.log" 2>&1 || rc=$?
echo "autobahn: fuzzing client finished in $((SECONDS - started)) s (exit $rc)"
if [ "$rc" -ne 0 ]; then
  tail -30 "$root/wstest.log"; echo "autobahn: wstest failed (exit $rc; 124 is the time limit); log: $root/wstest.log" >&2; exit 1
fi
if [ -n "$server_pid" ] && ! kill -0 "$server_pid" 2>/dev/null; then
  tail -40 "$root/server.log"; echo "autobahn: the server exited during the run" >&2; exit 1
fi

# --- the verdict -------------------------------------------------------------------------------
expected="$(sed -n 's/^Ok, will run \([0-9]*\) test cases.*/\1/p' "$root/wstest.log" | head -1)"
python3 - "$reports/index.json" "${expected:-0}" <<'EOF'
import json, sys

path, expected = sys.argv[1], int(sys.argv[2])
try:
    with open(path) as f:
        index = json.load(f)
except (OSError, ValueError) as error:
    sys.exit("autobahn: no report (%s): %s" % (path, error))

def key(case_id):
    return [int(part) if part.isdigit() else part for part in case_id.split(".")]

ok_behavior = {"OK", "NON-STRICT", "INFORMATIONAL"}
ok_close = {"OK", "INFORMATIONAL"}
counts, failed, total = {}, [], 0
for agent, cases in index.items():
    for case_id in sorted(cases, key=key):
        result = cases[case_id]
        total += 1
        behavior, close = result.get("behavior"), result.get("behaviorClose")
        counts[behavior] = counts.get(behavior, 0) + 1
        if behavior not in ok_behavior or close not in ok_close:
            failed.append("  %s: behavior %s, behaviorClose %s, close code %s (%s)" % (
                case_id, behavior, close, result.get("remoteCloseCode"), result.get("reportfile")))

summary = ", ".join("%s %d" % (name, counts[name]) for name in sorted(counts, key=str))
print("autobahn: %d cases: %s" % (total, summary or "none"))
if failed:
    print("autobahn: %d failing cases:" % len(failed))
    print("\n".join(failed))
if total == 0:
    sys.exit("autobahn: no case ran")
if expected and total != expected:
    sys.exit("autobahn: %d of %d cases have a result (the client lost the server?)" % (total, expected))
print("autobahn: %d passed, %d failed" % (total - len(failed), len(failed)))
sys.exit(1 if failed else 0)
EOF
