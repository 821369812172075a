#!/usr/bin/env bash
# The arm64 smoke test for CI: fetch the arm64 node and sysroot, build the production install as
# Dockerfile.arm64 does (tools/arm64/build-tree.sh --prod), then run tools/arm64/smoke.ts against
# it under qemu. From a cold cache on a 2-core machine this takes about 3 to 4 minutes (the
# better-sqlite3 cross build is about 75 s of it); warm, about 2.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/arm64/fetch.sh
bash tools/arm64/build-tree.sh --prod
exec node --import tsx tools/arm64/smoke.ts "$@"
