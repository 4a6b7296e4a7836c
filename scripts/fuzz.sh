#!/usr/bin/env bash
# Fuzz the parsers of untrusted input (frames, RESP replies, token claims) with libFuzzer.
#   bash scripts/fuzz.sh            short smoke run (30 s per target), part of scripts/test.sh
#   FUZZ_SECONDS=3600 bash scripts/fuzz.sh   the long run
# Crashes are written to .build-fuzz/artifacts/ and fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
export SWITCHBOARD_FUZZ=1
# swiftc keeps only the last `-sanitize=` it is given, and SwiftPM passes `--sanitize` values
# in no fixed order, so `--sanitize=fuzzer --sanitize=address` sometimes builds without
# coverage. One combined swiftc flag instruments for both, whatever comes before it.
flags=(--scratch-path .build-fuzz --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address)
swift build "${flags[@]}" --product FuzzFrameParser
swift build "${flags[@]}" --product FuzzRESPParser
swift build "${flags[@]}" --product FuzzClaims
bin="$(swift build "${flags[@]}" --show-bin-path)"
mkdir -p .build-fuzz/artifacts .build-fuzz/corpus
for target in FuzzFrameParser:frame FuzzRESPParser:resp FuzzClaims:claims; do
  name="${target%%:*}"; seeds="Fuzz/Corpus/${target##*:}"
  # The working corpus grows in .build-fuzz; the committed seeds stay small.
  mkdir -p ".build-fuzz/corpus/$name"
  echo "fuzzing $name for ${seconds}s"
  rc=0
  "$bin/$name" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix=".build-fuzz/artifacts/$name-" \
    ".build-fuzz/corpus/$name" "$seeds" > ".build-fuzz/$name.log" 2>&1 || rc=$?
  grep -E "DONE|stat::number_of_executed_units|ERROR|SUMMARY|Fatal error|Precondition" ".build-fuzz/$name.log" || true
  # A run that sees no coverage exercised nothing (an uninstrumented build): that is a failure too.
  if [ "$rc" -eq 0 ] && ! grep -q "DONE.*cov: [1-9]" ".build-fuzz/$name.log"; then
    echo "$name ran without coverage; rebuild with: rm -rf .build-fuzz"; exit 1
  fi
  if [ "$rc" -ne 0 ]; then
    tail -40 ".build-fuzz/$name.log"
    echo "$name failed (exit $rc); crash inputs: $(ls .build-fuzz/artifacts/ 2>/dev/null)"; exit 1
  fi
done
