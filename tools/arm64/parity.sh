#!/usr/bin/env bash
# `npm run parity`: x64/arm64 numerical parity of every shipped model and Silero VAD
# (tools/arm64/parity.ts), with the arm64 side under qemu in the arm64 test tree.
#   tools/arm64/parity.sh [--write-cards] [--json]
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/arm64/fetch.sh >&2
bash tools/arm64/build-tree.sh --dev >&2
exec node --import tsx tools/arm64/parity.ts "$@"
