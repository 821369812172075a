#!/usr/bin/env bash
# Runs the official arm64 Node under qemu user-mode emulation: `tools/arm64/qemu-node.sh
# [node args...]`, in the current directory, with the current environment. The PID it is started
# as becomes qemu's (every step execs), so signals sent to it reach the emulated node.
#
# Three things make that work on an x86-64 host:
#  - qemu-aarch64-static is called explicitly, with Debian's arm64 libraries as its sysroot
#    (QEMU_LD_PREFIX) and a Raspberry Pi 4's CPU model (QEMU_CPU, default cortex-a72).
#  - onnxruntime probes the CPU by parsing /proc/cpuinfo and crashes (SIGSEGV) on the host's x86
#    text, so a private mount namespace bind-mounts an ARM cpuinfo file over /proc/cpuinfo.
#  - Processes the emulated node starts (node:test runs every test file as a child; tests spawn
#    keel as a process) are arm64 binaries the kernel cannot exec by itself. Inside a private user
#    namespace (Linux >= 6.7) binfmt_misc can be mounted and qemu registered for aarch64 ELF
#    there only: nothing changes on the host, and the registration dies with the namespace.
#    The mounts need root inside the namespace; node itself then runs in a nested namespace
#    under the caller's own uid and gid, so it sees who it really is (root or not).
#    Where that is refused, children that exec arm64 binaries fail with ENOEXEC; KEEL_ARM64_BINFMT
#    (1 or 0) tells the emulated processes which case they are in.
# Needs: util-linux unshare, qemu-user-static, and tools/arm64/fetch.sh run once.
set -euo pipefail
source "$(dirname "$0")/common.sh"

if [ "${1:-}" != "--inside-namespace" ] && [ "${1:-}" != "--await-idmap" ]; then
  [ -x "$KEEL_ARM64_NODE" ] || arm64_die "no arm64 node at $KEEL_ARM64_NODE: run tools/arm64/fetch.sh first"
  [ -e "$KEEL_ARM64_SYSROOT/lib/ld-linux-aarch64.so.1" ] || arm64_die "no arm64 sysroot at $KEEL_ARM64_SYSROOT: run tools/arm64/fetch.sh first"
  command -v qemu-aarch64-static >/dev/null || arm64_die "qemu-aarch64-static not found: apt-get install qemu-user-static"
  # A user namespace with a mount namespace (allows binfmt_misc; works unprivileged too); where
  # user namespaces are refused, as root, a mount namespace alone (no binfmt_misc then).
  # As root: map uids and gids 0-65535 onto themselves, so that files and processes of other
  # users (a test's uid 10001, a daemon dropping privileges to its own user) behave as on the
  # host. unshare's own --map-users needs newuidmap (package uidmap); instead a helper, double
  # forked so that nobody has to reap it, writes the maps once this PID is in the namespace.
  if [ "$(id -u)" -eq 0 ] && unshare --user --mount true 2>/dev/null; then
    me=$$
    ( (
      outer="$(readlink /proc/self/ns/user)"
      for _ in $(seq 1 1000); do
        if [ "$(readlink "/proc/$me/ns/user" 2>/dev/null)" != "$outer" ]; then
          echo '0 0 65536' > "/proc/$me/uid_map" && echo '0 0 65536' > "/proc/$me/gid_map"
          exit 0
        fi
        sleep 0.01
      done
    ) & )
    exec unshare --user --mount "$0" --await-idmap "$@"
  fi
  # Anyone else: root in the namespace for the mounts, then back to the caller's uid (below).
  if unshare --user --map-root-user --mount true 2>/dev/null; then
    export KEEL_ARM64_OUTER_UID="$(id -u)" KEEL_ARM64_OUTER_GID="$(id -g)"
    exec unshare --user --map-root-user --mount "$0" --inside-namespace "$@"
  fi
  if [ "$(id -u)" -eq 0 ] && unshare --mount true 2>/dev/null; then
    exec unshare --mount "$0" --inside-namespace "$@"
  fi
  arm64_die "cannot create a mount namespace (unshare --user --mount: $(unshare --user --map-root-user --mount true 2>&1 || true)); run as root or enable user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
fi
if [ "${1:-}" = "--await-idmap" ]; then
  # Capabilities in the new namespace need uid 0 there at exec time: wait for the map, re-exec.
  shift
  for _ in $(seq 1 1000); do
    [ "$(id -u)" = 0 ] && exec "$0" --inside-namespace "$@"
    sleep 0.01
  done
  arm64_die "the uid map of the user namespace was not written within 10 s"
fi
shift

export KEEL_ARM64_BINFMT=0
if [ -n "${KEEL_ARM64_NO_BINFMT:-}" ]; then
  :  # asked to run without (to check what fails without it)
elif mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null; then
  # Magic and mask of an aarch64 ELF executable (e_ident class 64, little endian; e_machine 183),
  # as Debian's qemu-user-static registers it. F: qemu is opened now, so it works in any mount ns.
  if printf '%s' ':keel-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$(command -v qemu-aarch64-static)"':F' \
      > /proc/sys/fs/binfmt_misc/register 2>/dev/null; then
    KEEL_ARM64_BINFMT=1
  fi
elif [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  KEEL_ARM64_BINFMT=1  # the host registered qemu for aarch64 already
fi

[ -r "$KEEL_ARM64_CPUINFO" ] || arm64_die "no cpuinfo file at $KEEL_ARM64_CPUINFO"
mount --bind "$KEEL_ARM64_CPUINFO" /proc/cpuinfo || arm64_die "cannot bind-mount $KEEL_ARM64_CPUINFO over /proc/cpuinfo (onnxruntime would crash on the host's x86 cpuinfo)"

export QEMU_LD_PREFIX="$KEEL_ARM64_SYSROOT" QEMU_CPU="$KEEL_ARM64_CPU"
if [ -n "${KEEL_ARM64_OUTER_UID:-}" ]; then
  # The mounts needed root in the namespace; node runs as the caller's own uid and gid again
  # (a nested user namespace; it still sees the binfmt_misc registration of its parent).
  uid="$KEEL_ARM64_OUTER_UID" gid="$KEEL_ARM64_OUTER_GID"
  unset KEEL_ARM64_OUTER_UID KEEL_ARM64_OUTER_GID
  exec unshare --user --map-user="$uid" --map-group="$gid" qemu-aarch64-static "$KEEL_ARM64_NODE" "$@"
fi
exec qemu-aarch64-static "$KEEL_ARM64_NODE" "$@"
