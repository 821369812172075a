#!/bin/sh
# Container entry point (Dockerfile.arm64): checks what a container setup most often gets wrong,
# each with a message that says what to do, then execs keel (exec: keel gets tini's SIGTERM).
#
#   run [keel run options]   keel run "$KEEL_CONFIG" (the default command)
#   <anything else>          passed to keel as is: keygen, id, check, log verify, version ...
#
# Environment:
#   KEEL_CONFIG       the configuration file (default /etc/keel/keel.yaml, mount it read-only)
#   KEEL_STATE_DIR    the state volume for keys and the ledger (default /var/lib/keel)
#   KEEL_LOG_LEVEL    overrides log.level (trace, debug, info, warn, error, fatal, silent)
#   KEEL_ALLOW_ROOT   1 to run as root anyway (not recommended; see below)
# Exit codes follow keel's: 3 for a setup problem found before anything started.
set -eu

KEEL="${KEEL_BIN:-/app/bin/keel.js}"  # another path: tests run this script outside the image
config="${KEEL_CONFIG:-/etc/keel/keel.yaml}"
state="${KEEL_STATE_DIR:-/var/lib/keel}"

fail() {
  echo "keel: $*" >&2
  exit 3
}

cmd="${1:-run}"
[ $# -gt 0 ] && shift

if [ "$cmd" != run ]; then
  exec node "$KEEL" "$cmd" "$@"
fi

# Root in the container is root on the board for every device mapped in: keel needs only the
# dialout and gpio groups. `docker run --user 0` or `user: root` in compose lands here.
if [ "$(id -u)" = 0 ] && [ "${KEEL_ALLOW_ROOT:-0}" != 1 ]; then
  fail "refusing to run as root: the image's user is keel (uid $(id -u keel 2>/dev/null || echo 10001)); drop --user 0 (compose: user: root), and grant device access with --device and --group-add instead; KEEL_ALLOW_ROOT=1 overrides"
fi

if [ ! -e "$config" ]; then
  fail "no configuration at $config: mount one (docker run -v \$PWD/keel.yaml:$config:ro) or set KEEL_CONFIG"
fi
if [ ! -r "$config" ]; then
  fail "configuration $config is not readable by uid $(id -u): make it world-readable (chmod 644) or owned by that uid"
fi

# The state volume must be writable: the ledger appends there and the device key lives there.
if [ ! -d "$state" ]; then
  fail "state directory $state does not exist: mount a volume there (docker run -v keel-state:$state)"
fi
probe="$state/.keel-write-probe.$$"
if ! ( : > "$probe" ) 2>/dev/null; then
  if grep -qs " $state [^ ]* ro[, ]" /proc/mounts; then
    fail "state volume $state is mounted read-only: keel appends its ledger there; mount it read-write (drop :ro / read_only: true for that volume)"
  fi
  fail "state volume $state is not writable by uid $(id -u) (owner: $(stat -c %u:%g "$state")): use a named volume, or chown $(id -u) the host directory"
fi
rm -f "$probe"
# A full volume does not stop keel (records wait in memory, gap records say what was lost),
# but starting on one is almost always a mistake worth a loud line.
avail_kb="$(df -Pk "$state" 2>/dev/null | awk 'NR==2 {print $4}')"
if [ -n "$avail_kb" ] && [ "$avail_kb" -lt 1024 ]; then
  echo "keel: warning: state volume $state has ${avail_kb} KiB free; the ledger cannot append until space returns (records are held in memory, then dropped with a gap record)" >&2
fi

if [ -n "${KEEL_LOG_LEVEL:-}" ]; then
  exec node "$KEEL" run "$config" --log-level "$KEEL_LOG_LEVEL" "$@"
fi
exec node "$KEEL" run "$config" "$@"
