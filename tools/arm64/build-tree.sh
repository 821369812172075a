#!/usr/bin/env bash
# Builds an arm64 install of keel into a directory tree, on an x86-64 host, without Docker.
#
#   tools/arm64/build-tree.sh --prod [DIR]   the production install, step for step as
#                                            Dockerfile.arm64 (default DIR: <cache>/prod)
#   tools/arm64/build-tree.sh --dev [DIR]    every dependency (dev too) plus a copy of the working
#                                            tree, to run the test suite (default: <cache>/dev)
#
# Steps: `npm ci` for linux/arm64 (--cpu/--os pick the arm64 optional packages such as
# @esbuild/linux-arm64) with no install scripts; then every package with a binding.gyp and no
# linux-arm64 prebuild is cross-compiled with aarch64-linux-gnu-g++ against the arm64 Node's
# own headers (node-gyp --arch=arm64 --nodedir), cached per package version and Node ABI; the
# host's x64 node_modules is never touched. --prod then removes the other platforms'
# onnxruntime libraries and copies the app files the Dockerfile copies.
set -euo pipefail
source "$(dirname "$0")/common.sh"

mode="${1:-}"
case "$mode" in
  --prod) out="${2:-$KEEL_ARM64_CACHE/prod}" ;;
  --dev) out="${2:-$KEEL_ARM64_CACHE/dev}" ;;
  *) echo "usage: $0 --prod|--dev [DIR]" >&2; exit 2 ;;
esac
[ -x "$KEEL_ARM64_NODE" ] || arm64_die "run tools/arm64/fetch.sh first"

abi="$("$(dirname "$0")/qemu-node.sh" -p process.versions.modules)"
native_cache="$KEEL_ARM64_CACHE/native"
node_gyp="$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js"
[ -f "$node_gyp" ] || node_gyp="$(npm prefix -g)/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js"

mkdir -p "$out"
out="$(cd "$out" && pwd)"

# npm ci from the lockfile, reusing node_modules when the lockfile has not changed.
# KEEL_ARM64_PACKAGE_DIR: take package.json and package-lock.json from there instead (to try a
# dependency change in the arm64 install before it lands in the repo).
pkg_dir="${KEEL_ARM64_PACKAGE_DIR:-$KEEL_REPO}"
lock_sum="$(cat "$pkg_dir/package.json" "$pkg_dir/package-lock.json" | sha256sum | cut -c1-16)-$mode-$KEEL_ARM64_NODE_VERSION"
if [ "$(cat "$out/.keel-arm64-lock" 2>/dev/null)" != "$lock_sum" ]; then
  cp "$pkg_dir/package.json" "$pkg_dir/package-lock.json" "$out/"
  omit=(); [ "$mode" = --prod ] && omit=(--omit=dev)
  arm64_log "npm ci ${omit[*]} for linux/arm64 in $out"
  (cd "$out" && npm ci "${omit[@]}" --ignore-scripts --cpu=arm64 --os=linux --libc=glibc \
      --no-audit --no-fund --prefer-offline --loglevel=error >/dev/null)

  # Native modules: a shipped linux-arm64 prebuild (node-gyp-build loads it), or a cross build.
  while IFS= read -r gyp; do
    dir="$(dirname "$gyp")"
    name="$(node -p "require('$dir/package.json').name")"
    version="$(node -p "require('$dir/package.json').version")"
    if compgen -G "$dir/prebuilds/linux-arm64/*.node" >/dev/null; then
      arm64_log "$name@$version: shipped linux-arm64 prebuild"
      continue
    fi
    key="$native_cache/${name//\//_}@$version-abi$abi-arm64"
    if [ ! -f "$key/.done" ]; then
      command -v aarch64-linux-gnu-g++ >/dev/null || arm64_die "$name needs a native build: apt-get install g++-aarch64-linux-gnu (tools/arm64/fetch.sh does)"
      arm64_log "$name@$version: cross-compiling for arm64 (Node ABI $abi)"
      log="$(mktemp)"
      if ! (cd "$dir" && env CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ LINK=aarch64-linux-gnu-g++ \
            AR=aarch64-linux-gnu-ar STRIP=aarch64-linux-gnu-strip npm_config_nodedir="$KEEL_ARM64_NODE_DIR" \
            node "$node_gyp" rebuild --release --arch=arm64 --nodedir="$KEEL_ARM64_NODE_DIR" -j "$(nproc)" >"$log" 2>&1); then
        tail -30 "$log" >&2
        arm64_die "cross-compiling $name failed (log above)"
      fi
      rm -f "$log"
      rm -rf "$key" && mkdir -p "$key"
      (cd "$dir/build/Release" && cp ./*.node "$key/")
      for f in "$key"/*.node; do
        file -b "$f" | grep -q 'ARM aarch64' || arm64_die "$f is not an aarch64 shared object: $(file -b "$f")"
        aarch64-linux-gnu-strip --strip-unneeded "$f"
      done
      touch "$key/.done"
    else
      arm64_log "$name@$version: cached arm64 build"
    fi
    rm -rf "$dir/build" && mkdir -p "$dir/build/Release"
    cp "$key"/*.node "$dir/build/Release/"
  done < <(find "$out/node_modules" -name binding.gyp -not -path '*/deps/*' -not -path '*/test/*' | sort)

  if [ "$mode" = --prod ]; then
    # As the Dockerfile: keep onnxruntime's linux/arm64 library only, drop build sources.
    find "$out/node_modules/onnxruntime-node/bin/napi-v6" -mindepth 2 -maxdepth 2 ! -path '*/linux/arm64' -exec rm -rf {} +
    rm -rf "$out/node_modules/better-sqlite3/deps" "$out/node_modules/better-sqlite3/src"
  fi
  echo "$lock_sum" > "$out/.keel-arm64-lock"
fi

copy_paths() {  # copy_paths PATH... : mirror these repo paths into $out (deleting stale files)
  local p
  for p in "$@"; do
    [ -e "$KEEL_REPO/$p" ] || { arm64_log "skipping $p (not in this checkout)"; continue; }
    rm -rf "${out:?}/$p"
    mkdir -p "$(dirname "$out/$p")"
    cp -a "$KEEL_REPO/$p" "$out/$p"
  done
}

if [ "$mode" = --prod ]; then
  # The app files: the COPY lines of Dockerfile.arm64 between the markers (sources only).
  mapfile -t paths < <(awk '/^# app files: begin/{on=1; next} /^# app files: end/{on=0} on && /^COPY /{
      n=0; for (i=2; i<NF; i++) if ($i !~ /^--/) print $i }' "$KEEL_REPO/Dockerfile.arm64")
  [ ${#paths[@]} -gt 0 ] || arm64_die "found no app files between the markers in Dockerfile.arm64"
  copy_paths "${paths[@]}"
  # What .dockerignore keeps out of the build context stays out of the tree too (its patterns,
  # applied with bash globstar; the installed node_modules is not context, so it stays).
  shopt -s globstar nullglob dotglob
  while IFS= read -r pat; do
    pat="${pat%%#*}"; pat="${pat%"${pat##*[![:space:]]}"}"
    [ -z "$pat" ] || [[ "$pat" == !* ]] && continue
    for m in "$out"/$pat; do
      case "$m" in "$out/node_modules"|"$out/node_modules/"*|"$out/package.json"|"$out/package-lock.json") continue ;; esac
      rm -rf "$m"
    done
  done < "$KEEL_REPO/.dockerignore"
  shopt -u globstar nullglob dotglob
else
  # The working tree as it is (tests other helpers add included), without the host's modules.
  mapfile -t paths < <(cd "$KEEL_REPO" && ls -A | grep -vxE 'node_modules|\.git|\.cache|\.tmp|package\.json|package-lock\.json')
  copy_paths "${paths[@]}"
fi
arm64_log "arm64 tree ready: $out"
