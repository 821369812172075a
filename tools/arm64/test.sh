#!/usr/bin/env bash
# `npm run test:arm64`: the test suite on arm64, under qemu user-mode emulation, with the official
# arm64 Node and arm64 native modules (tools/arm64/build-tree.sh --dev builds the tree: every
# dependency for linux/arm64 plus a copy of the working tree). Runs every test/*/*.test.ts as
# `npm test` does, minus what tools/arm64/unrunnable.txt lists (with its reasons).
#   tools/arm64/test.sh [--no-build] [test files...]     (default: all)
# --no-build runs the tree as it is (to iterate on a change made in the tree itself).
# Takes long: qemu runs arm64 code 10 to 50 times slower than native.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$KEEL_REPO"
if [ "${1:-}" = --no-build ]; then
  shift
else
  bash tools/arm64/fetch.sh
  bash tools/arm64/build-tree.sh --dev
fi
tree="$KEEL_ARM64_CACHE/dev"

declare -A skip_file=()
skip_names=()
while IFS= read -r line; do
  line="${line%%#*}"; line="$(echo "$line" | sed 's/[[:space:]]*$//')"
  [ -z "$line" ] && continue
  if [[ "$line" == *" :: "* ]]; then skip_names+=("${line#* :: }")
  else skip_file["$line"]=1; fi
done < tools/arm64/unrunnable.txt

cd "$tree"
if [ $# -gt 0 ]; then files=("$@"); else files=(test/*/*.test.ts); fi
run=()
for f in "${files[@]}"; do
  if [ -n "${skip_file[$f]:-}" ]; then
    arm64_log "not run on arm64: $f ($(grep -F "$f" "$KEEL_REPO/tools/arm64/unrunnable.txt" | head -1 | sed 's/.*# *//'))"
  else run+=("$f"); fi
done
# Wall-clock limits in the tests (child processes, waitFor) are sized for native speed; qemu
# runs keel about 10 times slower than a Pi and 30 times slower than this host: scale them.
export KEEL_TEST_TIME_SCALE="${KEEL_TEST_TIME_SCALE:-10}"
args=(--import tsx --test --test-concurrency=1)
for n in "${skip_names[@]}"; do
  arm64_log "skipped on arm64: $n"
  args+=("--test-skip-pattern=$(printf '%s' "$n" | sed 's/[][\.*^$()+?{}|/]/\\&/g')")
done
arm64_log "running ${#run[@]} test files on arm64 ($(date +%T))"
start=$(date +%s)
set +e
"$KEEL_REPO/tools/arm64/qemu-node.sh" "${args[@]}" "${run[@]}"
rc=$?
set -e
arm64_log "arm64 suite: exit $rc after $(( $(date +%s) - start )) s"
exit $rc
