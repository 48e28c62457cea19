#!/usr/bin/env bash
# On the GPU machine (after bench/gpu-session.sh has unpacked node): runs one test-gpu file, filtered by a
# test name pattern, at every commit scripts/bisect-dists.sh built into .device/bisect/, each against this
# checkout's fixtures and node_modules; prints each commit's "# …" figure lines and pass/fail counts.
#   bash scripts/bisect-run.sh e2e 'float32 engines of each' 'SmoothQuant per channel'
set -uo pipefail
file=$1 pattern=$2 grep_for=${3:-.}
root="$(cd "$(dirname "$0")/.." && pwd)"
export PATH=/tmp/bin:$PATH
for dir in "$root"/.device/bisect/*/; do
  c=$(basename "$dir")
  mkdir -p "$dir/test" && ln -sfn "$root/test/fixtures" "$dir/test/fixtures"
  ln -sfn "$root/node_modules" "$dir/node_modules"
  out=$(timeout "${BISECT_TIMEOUT:-200}" node --test --test-reporter=tap --test-concurrency=1 \
    --test-name-pattern="$pattern" "$dir/dist/test-gpu/$file.test.js" 2>&1)
  echo "$c: $(echo "$out" | grep -E '^# (pass|fail) ' | tr '\n' ' ')"
  # TAP writes a test's console lines as "# # …" (escaped "# \# …").
  echo "$out" | grep -E '^# \\?# ' | grep -E -- "$grep_for" | sed "s/^/  /"
done
