#!/usr/bin/env bash
# Builds the three OCI images from the release binaries already in target/release, without a
# Docker daemon (podman, installed from Debian packages if missing):
#
#   ballast/operator:<version>  ballast-operator                 + CA bundle (talks to the API)
#   ballast/sidecar:<version>   ballast-sidecar
#   ballast/fleet:<version>     ballast-fleet, CMD ["gateway"]   (the sample gateway, under the
#                                                                 name examples/ and e2e/ use)
#
# Owns: target/images/*.oci.tar, the images in its own podman storage, and its caches (Debian
# packages, their extracted files, podman storage) under $BALLAST_CACHE (default
# ~/.cache/ballast). Never builds the binaries (`cargo build --release` does), never pushes.
#
# Distroless, FROM scratch: each image holds its binary, the shared libraries `ldd` says it
# needs, the dynamic loader at the path its PT_INTERP names, /etc/passwd and /etc/group with
# user nonroot (65532) — nothing else: no shell, no package manager, no /tmp. Runs as
# 65532:65532.
#
# Why dynamic binaries plus Debian's libraries rather than one static musl binary: the musl
# target (x86_64-unknown-linux-musl) is not installed here and rustup cannot download it (only
# package registries are reachable), and a musl build would also swap glibc's allocator for
# musl's, slower under the sidecar's many-thread load — a change to measure, not to slip in with
# packaging. So the images ship the glibc binaries that `cargo build --release` makes and that
# every test runs, with libc6 and libgcc-s1 taken from Debian's own packages (`apt-get download`
# + `dpkg -x`), not from this host's /lib: what is inside is exactly what Debian ships.
#
# Environment:
#   BALLAST_IMAGE_REGISTRY   prefix for the image names, e.g. <registry>/team (default: none)
#   BALLAST_IMAGE_SOURCE     org.opencontainers.image.source label (default: the project URL)
#   BALLAST_CACHE            cache directory (default: ${XDG_CACHE_HOME:-~/.cache}/ballast)
#   BALLAST_STORAGE_DRIVER   podman storage driver (default: overlay if it works here, else vfs)
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
BALLAST_SCRIPT=images
# shellcheck source=scripts/lib.sh
source scripts/lib.sh # $WORK: a scratch directory, removed on exit

CACHE=${BALLAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ballast}
DEB_DIR=$CACHE/images/debs        # the downloaded .deb files, reused across runs
DEB_ROOT=$CACHE/images/debian-root # their files, extracted with dpkg -x
STORE=$CACHE/containers            # podman's storage: images stay here, not in the repo
OUT=target/images
DEBIAN_PACKAGES=(libc6 libgcc-s1 ca-certificates)
NONROOT=65532

log() { echo "[images] $*" >&2; }
die() {
  echo "[images] error: $*" >&2
  exit 1
}

# quietly LOG CMD…: runs CMD with its output in $WORK/LOG, shown only if it fails.
quietly() {
  local log=$WORK/$1
  shift
  "$@" >"$log" 2>&1 || {
    cat "$log" >&2
    die "failed: $*"
  }
}

# cargo_field KEY: KEY's value in Cargo.toml's [workspace.package] section.
cargo_field() {
  sed -n '/^\[workspace\.package\]/,/^\[/s/^'"$1"' *= *"\(.*\)".*/\1/p' Cargo.toml | head -n1
}

# ---- inputs ----------------------------------------------------------------------------------

check_binaries() {
  local b
  for b in ballast-operator ballast-sidecar ballast-fleet; do
    [ -x "target/release/$b" ] ||
      die "target/release/$b is missing: build it first (cargo build --workspace --release)"
  done
}

# apt_get ARGS…: apt-get as root (sudo otherwise), quiet, with `apt-get update` and one retry
# if the first attempt fails (an empty or stale package list).
apt_get() {
  local sudo=() opts=(-qq)
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  # As root, apt would hand downloads to user _apt, who cannot write into a home directory.
  [ "$(id -u)" = 0 ] && opts+=(-o APT::Sandbox::User=root)
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get "${opts[@]}" "$@" >/dev/null 2>&1 && return
  log "apt-get $1 failed; running apt-get update and trying again"
  "${sudo[@]}" apt-get -qq update >/dev/null
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get "${opts[@]}" "$@" >/dev/null
}

ensure_podman() {
  command -v podman >/dev/null && return
  log "installing podman from Debian packages"
  apt_get install -y podman || die "could not install podman (apt-get install podman)"
}

# podman with this script's own storage. The driver is chosen once per storage: overlay if the
# kernel lets us mount it here, vfs (plain copies; these images are a few MB) otherwise.
pm() {
  podman --root "$STORE/storage" --runroot "$STORE/run" --storage-driver "$DRIVER" "$@"
}
choose_storage_driver() {
  mkdir -p "$STORE"
  if [ -n "${BALLAST_STORAGE_DRIVER:-}" ]; then
    DRIVER=$BALLAST_STORAGE_DRIVER
  elif [ -s "$STORE/driver" ]; then
    DRIVER=$(cat "$STORE/driver")
  else
    DRIVER=overlay
    pm images >/dev/null 2>&1 || {
      rm -rf "$STORE/storage" "$STORE/run"
      DRIVER=vfs
    }
  fi
  pm images >/dev/null 2>"$WORK/podman.err" || {
    cat "$WORK/podman.err" >&2
    die "podman cannot use storage driver $DRIVER under $STORE (set BALLAST_STORAGE_DRIVER)"
  }
  echo "$DRIVER" >"$STORE/driver"
  log "podman $(podman --version | awk '{print $NF}'), storage driver $DRIVER"
}

# cached_deb PACKAGE: the newest .deb of PACKAGE in $DEB_DIR (empty if none).
cached_deb() {
  find "$DEB_DIR" -maxdepth 1 \( -name "${1}_*_$(dpkg --print-architecture).deb" \
    -o -name "${1}_*_all.deb" \) | sort -V | tail -n1
}

# Downloads each Debian package once (the .deb files are kept and reused) and extracts them all
# into $DEB_ROOT, again only when the set of .deb files changed.
fetch_debian_packages() {
  local pkg debs=()
  mkdir -p "$DEB_DIR"
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    if [ -z "$(cached_deb "$pkg")" ]; then
      log "downloading Debian package $pkg"
      (cd "$DEB_DIR" && apt_get download "$pkg") || die "apt-get download $pkg failed"
    fi
    debs+=("$(cached_deb "$pkg")")
  done
  if [ "$(cat "$DEB_ROOT/.debs" 2>/dev/null)" != "$(basename -a "${debs[@]}")" ]; then
    log "extracting ${debs[*]##*/}"
    rm -rf "$DEB_ROOT.new"
    mkdir -p "$DEB_ROOT.new"
    for pkg in "${debs[@]}"; do dpkg -x "$pkg" "$DEB_ROOT.new"; done
    write_ca_bundle "$DEB_ROOT.new"
    basename -a "${debs[@]}" >"$DEB_ROOT.new/.debs"
    rm -rf "$DEB_ROOT"
    mv "$DEB_ROOT.new" "$DEB_ROOT"
  fi
  log "Debian packages: $(paste -sd' ' "$DEB_ROOT/.debs")"
}

# write_ca_bundle ROOT: ROOT/etc/ssl/certs/ca-certificates.crt as the package's postinst
# (update-ca-certificates) writes it: every certificate the package ships, in sorted order,
# each ending in a newline. The .deb ships the certificates but not the bundle.
# shellcheck disable=SC1003 # sed '$a\': append a newline if the last line lacks one
write_ca_bundle() {
  local root=$1 crt
  mkdir -p "$root/etc/ssl/certs"
  (
    cd "$root/usr/share/ca-certificates"
    find . -type f -name '*.crt' -printf '%P\n' | LC_ALL=C sort |
      while read -r crt; do sed -e '$a\' "$crt"; done
  ) >"$root/etc/ssl/certs/ca-certificates.crt"
  [ -s "$root/etc/ssl/certs/ca-certificates.crt" ] || die "empty CA bundle from ca-certificates"
}

# ---- one image's root filesystem -----------------------------------------------------------

# copy_from_debian PATH DEST: Debian's file at absolute PATH (a symlink stays a symlink, and
# its target comes too) into root filesystem DEST, at the same path.
copy_from_debian() {
  local rel=${1#/} dest=$2 target
  [ -e "$DEB_ROOT/$rel" ] || [ -L "$DEB_ROOT/$rel" ] || return 1
  mkdir -p "$dest/$(dirname "$rel")"
  cp -a "$DEB_ROOT/$rel" "$dest/$rel"
  if [ -L "$DEB_ROOT/$rel" ]; then
    target=$(readlink "$DEB_ROOT/$rel")
    case $target in
    /*) copy_from_debian "$target" "$dest" ;;
    *) copy_from_debian "/$(dirname "$rel")/$target" "$dest" ;;
    esac
  fi
}

# copy_library PATH DEST: the library ldd resolved to PATH on this host, from Debian's packages
# (the same path, or the other side of the /usr merge).
copy_library() {
  local p=$1 dest=$2
  copy_from_debian "$p" "$dest" ||
    copy_from_debian "/usr$p" "$dest" ||
    copy_from_debian "${p#/usr}" "$dest" ||
    die "$p (needed by the binary) is in none of the Debian packages ${DEBIAN_PACKAGES[*]}"
}

# add_shared_libraries BINARY DEST: every library ldd lists and the loader (PT_INTERP).
add_shared_libraries() {
  local bin=$1 dest=$2 ldd_out lib
  ldd_out=$(ldd "$bin" 2>&1) || die "ldd $bin: $ldd_out"
  if grep -q 'not found' <<<"$ldd_out"; then die "ldd $bin: $(grep 'not found' <<<"$ldd_out")"; fi
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)"; the loader line has no "=>".
  while read -r lib; do
    copy_library "$lib" "$dest"
  done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$ldd_out")
  lib=$(awk '$1 ~ /^\// {print $1}' <<<"$ldd_out")
  [ -n "$lib" ] || die "ldd $bin names no dynamic loader"
  copy_library "$lib" "$dest"
}

add_users() {
  local dest=$1
  mkdir -p "$dest/etc"
  cat >"$dest/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$NONROOT:$NONROOT:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$dest/etc/group" <<EOF
root:x:0:
nogroup:x:65534:
nonroot:x:$NONROOT:
EOF
  chmod 0644 "$dest/etc/passwd" "$dest/etc/group"
}

# stage_rootfs BINARY DEST [ca]: the image's whole filesystem in DEST.
stage_rootfs() {
  local bin=$1 dest=$2
  mkdir -p "$dest/usr/local/bin"
  install -m 0755 "target/release/$bin" "$dest/usr/local/bin/$bin"
  add_shared_libraries "target/release/$bin" "$dest"
  add_users "$dest"
  if [ "${3:-}" = ca ]; then
    copy_from_debian /etc/ssl/certs/ca-certificates.crt "$dest"
  fi
}

# ---- build -----------------------------------------------------------------------------------

# build_image NAME BINARY DESCRIPTION ENTRYPOINT_JSON CMD_JSON [ca]
build_image() {
  local name=$1 bin=$2 description=$3 entrypoint=$4 cmd=$5 ca=${6:-}
  local ctx=$WORK/$name ref archive
  ref=$PREFIX/ballast/$name:$VERSION
  ref=${ref#/}
  archive=$OUT/ballast-$name-$VERSION.oci.tar

  log "$ref: staging $bin, its libraries${ca:+, the CA bundle} and /etc/passwd"
  stage_rootfs "$bin" "$ctx/rootfs" "$ca"
  {
    echo "FROM scratch"
    echo "COPY rootfs/ /"
    echo "USER $NONROOT:$NONROOT"
    echo "ENTRYPOINT $entrypoint"
    [ -z "$cmd" ] || echo "CMD $cmd"
  } >"$ctx/Containerfile"

  log "$ref: podman build"
  quietly "build-$name.log" pm build "${TIMESTAMP[@]}" --pull=never --format oci \
    --label "org.opencontainers.image.title=ballast-$name" \
    --label "org.opencontainers.image.description=$description" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.licenses=$LICENSE" \
    --label "org.opencontainers.image.source=$SOURCE" \
    --label "org.opencontainers.image.revision=$REVISION" \
    -t "$ref" -f "$ctx/Containerfile" "$ctx"

  log "$ref: writing $archive"
  rm -f "$archive"
  quietly "push-$name.log" pm push --compression-format gzip "$ref" "oci-archive:$archive:$ref"

  ROWS+=("$ref|$(stat -c %s "$archive")|$(find "$ctx/rootfs" -type f -printf '%s\n' |
    awk '{s += $1} END {print s}')|$(find "$ctx/rootfs" ! -type d | wc -l)")
}

mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }

print_table() {
  local row ref archive rootfs files w=5
  for row in "${ROWS[@]}"; do
    ref=${row%%|*}
    [ "${#ref}" -le "$w" ] || w=${#ref}
  done
  printf '\n%-*s %14s %12s %6s\n' "$w" image "archive (gz)" rootfs files
  for row in "${ROWS[@]}"; do
    IFS='|' read -r ref archive rootfs files <<<"$row"
    printf '%-*s %14s %12s %6s\n' "$w" "$ref" "$(mib "$archive")" "$(mib "$rootfs")" "$files"
  done
  echo
  echo "Archives in $OUT/. The images are also in podman storage; list them with:"
  echo "  podman --root \"$STORE/storage\" --runroot \"$STORE/run\" --storage-driver $DRIVER images"
}

main() {
  check_binaries
  VERSION=$(cargo_field version)
  LICENSE=$(cargo_field license)
  [ -n "$VERSION" ] || die "no version in Cargo.toml's [workspace.package]"
  [ -n "$LICENSE" ] || die "no license in Cargo.toml's [workspace.package]"
  SOURCE=${BALLAST_IMAGE_SOURCE:-https://github.com/ballast-dev/ballast}
  PREFIX=${BALLAST_IMAGE_REGISTRY:-}
  PREFIX=${PREFIX%/}
  REVISION=$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)
  if [ "$REVISION" != unknown ] && ! git diff --quiet HEAD -- 2>/dev/null; then
    log "note: uncommitted changes; the revision label says $REVISION all the same"
  fi
  log "version $VERSION, revision $REVISION${PREFIX:+, registry prefix $PREFIX}"

  ensure_podman
  choose_storage_driver
  TIMESTAMP=()
  if pm build --help 2>/dev/null | grep -q -- '--timestamp'; then TIMESTAMP=(--timestamp 0); fi
  fetch_debian_packages
  mkdir -p "$OUT"

  ROWS=()
  build_image operator ballast-operator \
    "Ballast operator: reconciles PresenceClusters (certificate rotations, drains, restarts)" \
    '["/usr/local/bin/ballast-operator"]' "" ca
  build_image sidecar ballast-sidecar \
    "Ballast presence sidecar: TLS termination, hot certificate reload, paced drains" \
    '["/usr/local/bin/ballast-sidecar"]' ""
  build_image fleet ballast-fleet \
    "Ballast sample presence gateway and agent fleet (ballast-fleet gateway)" \
    '["/usr/local/bin/ballast-fleet"]' '["gateway"]'
  pm image prune -f >/dev/null 2>&1 || true # earlier builds' untagged images, in our storage only

  print_table
}

main "$@"
