#!/usr/bin/env bash
# Checks the OCI archives scripts/images.sh wrote to target/images, without a container
# runtime: reads each archive's index, manifest and config (python3), flattens its layers into
# a scratch root filesystem, and runs the binary from inside that root as uid/gid 65532.
#
# Owns: the verdict on target/images/ballast-{operator,sidecar,fleet}-<version>.oci.tar —
# non-root user, entrypoint, OCI labels, exactly the expected files (no shell, no busybox),
# owned by root, the binary identical to target/release's, and `--version`/`--help` exiting 0
# under the image's own libraries. Writes nothing outside a scratch directory; builds nothing.
#
# The run: util-linux `unshare --root=ROOTFS --setgid=65532 --setuid=65532` chroots into the
# flattened image, drops supplementary groups, then becomes 65532 — all before exec, so nothing
# from the host's filesystem is visible and no extra binary has to live in the image (`setpriv`
# would: dropping to 65532 before chroot loses the right to chroot). New mount, network, IPC,
# UTS and PID namespaces; no /proc, no network, an empty environment. Needs root.
#
# Prints one line per check and ends with "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
BALLAST_SCRIPT=check-images
# shellcheck source=scripts/lib.sh
source scripts/lib.sh # $WORK: a scratch directory, removed on exit

NONROOT=65532
SIDECAR_LIMIT=15000000 # bytes: the sidecar image's uncompressed size goal (15 MB)
VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\(.*\)".*/\1/p' Cargo.toml)
PREFIX=${BALLAST_IMAGE_REGISTRY:-}
PREFIX=${PREFIX%/}

PASSED=0
FAILED=()

# check NAME CMD…: runs CMD in a subshell; it passes if CMD exits 0, otherwise CMD's output
# says why.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    PASSED=$((PASSED + 1))
    echo "  ok    $name"
  else
    FAILED+=("$name")
    echo "  FAIL  $name"
    [ -z "$out" ] || head -n 20 <<<"$out" | sed 's/^/          /'
  fi
}

# fail MESSAGE: ends the check being run (each runs in its own subshell) as failed.
fail() {
  echo "$*"
  exit 1
}

# ---- reading an archive ----------------------------------------------------------------------

# oci_summary DIR: the extracted OCI layout in DIR as "key<TAB>value" lines (ref, os, arch,
# user, entrypoint, cmd, label.*, layer), after checking every blob against its digest.
oci_summary() {
  python3 - "$1" <<'PY'
import hashlib, json, os, sys

root = sys.argv[1]

def blob(digest):
    algo, hexd = digest.split(":", 1)
    data = open(os.path.join(root, "blobs", algo, hexd), "rb").read()
    if hashlib.new(algo, data).hexdigest() != hexd:
        sys.exit(f"blob {digest} does not match its digest")
    return data

if json.load(open(os.path.join(root, "oci-layout")))["imageLayoutVersion"] != "1.0.0":
    sys.exit("oci-layout: not imageLayoutVersion 1.0.0")
index = json.load(open(os.path.join(root, "index.json")))
if len(index["manifests"]) != 1:
    sys.exit(f"index.json lists {len(index['manifests'])} manifests, expected 1")
desc = index["manifests"][0]
manifest = json.loads(blob(desc["digest"]))
config = json.loads(blob(manifest["config"]["digest"]))
c = config.get("config", {})
print("ref", desc.get("annotations", {}).get("org.opencontainers.image.ref.name", ""), sep="\t")
print("os", config.get("os"), sep="\t")
print("arch", config.get("architecture"), sep="\t")
print("user", c.get("User", ""), sep="\t")
print("entrypoint", json.dumps(c.get("Entrypoint")), sep="\t")
print("cmd", json.dumps(c.get("Cmd")), sep="\t")
for k, v in sorted((c.get("Labels") or {}).items()):
    print("label." + k, v, sep="\t")
for layer in manifest["layers"]:
    blob(layer["digest"])
    print("layer", os.path.join("blobs", *layer["digest"].split(":", 1)), sep="\t")
PY
}

# field KEY: KEY's value in the current image's summary (first match).
field() { awk -F'\t' -v k="$1" '$1 == k {print $2; exit}' "$IMG/summary"; }

# flatten: the layers, in order, into $IMG/rootfs. A layer's whiteouts remove what the layers
# below it left (.wh.NAME: NAME; .wh..wh..opq: the directory's contents) before it is applied.
flatten() {
  local layer entry dir base
  mkdir -p "$IMG/rootfs"
  while IFS= read -r layer; do
    while IFS= read -r entry; do
      dir=$IMG/rootfs/$(dirname "$entry") base=$(basename "$entry")
      case $base in
      .wh..wh..opq) [ ! -d "$dir" ] || find "$dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} + ;;
      .wh.*) rm -rf "${dir:?}/${base#.wh.}" ;;
      esac
    done < <(tar -tf "$IMG/oci/$layer" | grep '\.wh\.' || true)
    tar --numeric-owner -xpf "$IMG/oci/$layer" -C "$IMG/rootfs" --exclude='.wh.*'
  done < <(awk -F'\t' '$1 == "layer" {print $2}' "$IMG/summary")
}

# ---- the checks (each reads $IMG, $NAME, $BIN) -------------------------------------------------

layout_ok() {
  local want=$PREFIX/ballast/$NAME:$VERSION
  want=${want#/}
  [ "$(field ref)" = "$want" ] || fail "ref.name is '$(field ref)', expected '$want'"
  [ "$(field os)/$(field arch)" = "linux/amd64" ] || fail "platform $(field os)/$(field arch)"
}

user_ok() {
  case $(field user) in
  "$NONROOT:$NONROOT" | "$NONROOT") ;;
  *) fail "User is '$(field user)', expected $NONROOT:$NONROOT" ;;
  esac
}

entrypoint_ok() {
  local cmd=null
  [ "$NAME" != fleet ] || cmd='["gateway"]'
  [ "$(field entrypoint)" = "[\"/usr/local/bin/$BIN\"]" ] || fail "Entrypoint $(field entrypoint)"
  [ "$(field cmd)" = "$cmd" ] || fail "Cmd is $(field cmd), expected $cmd"
}

labels_ok() {
  local l
  for l in source version licenses title revision; do
    [ -n "$(field "label.org.opencontainers.image.$l")" ] || fail "label .$l missing"
  done
  [ "$(field label.org.opencontainers.image.version)" = "$VERSION" ] ||
    fail "version label $(field label.org.opencontainers.image.version), expected $VERSION"
  [ "$(field label.org.opencontainers.image.licenses)" = "Apache-2.0" ] ||
    fail "licenses label $(field label.org.opencontainers.image.licenses)"
}

no_shell() {
  local found
  found=$(cd "$IMG/rootfs" && find . \( -name sh -o -name bash -o -name dash -o -name ash \
    -o -name busybox -o -path './bin/*sh' -o -path './usr/bin/*sh' \) -printf '%P\n')
  [ -z "$found" ] || fail "shell-like files: $found"
}

only_expected_files() {
  local want
  want=$(
    printf '%s\n' etc/group etc/passwd "usr/local/bin/$BIN" lib64/ld-linux-x86-64.so.2 \
      lib/x86_64-linux-gnu/{ld-linux-x86-64.so.2,libc.so.6,libm.so.6,libgcc_s.so.1}
    [ "$NAME" != operator ] || echo etc/ssl/certs/ca-certificates.crt
  )
  diff <(LC_ALL=C sort <<<"$want") \
    <(cd "$IMG/rootfs" && find . ! -type d -printf '%P\n' | LC_ALL=C sort) ||
    fail "files differ from the expected set (< expected, > in the image)"
}

owned_by_root() {
  local bad
  bad=$(cd "$IMG/rootfs" && find . \( ! -uid 0 -o ! -gid 0 -o -perm /6000 \
    -o \( ! -type l -perm -0002 \) \) -printf '%P %U:%G %m\n')
  [ -z "$bad" ] || fail "not root-owned, setuid/setgid or world-writable: $bad"
}

binary_is_current() {
  cmp -s "$IMG/rootfs/usr/local/bin/$BIN" "target/release/$BIN" ||
    fail "usr/local/bin/$BIN differs from target/release/$BIN: the image is stale (make images)"
}

# in_image ARGS…: the image's entrypoint (+ ARGS) inside its root filesystem, as 65532.
in_image() {
  local entry
  mapfile -t entry < <(python3 -c 'import json,sys; print(*json.loads(sys.argv[1]), sep="\n")' \
    "$(field entrypoint)")
  env -i timeout 30 unshare --mount --net --ipc --uts --pid --fork --kill-child \
    --root="$IMG/rootfs" --setgid="$NONROOT" --setuid="$NONROOT" -- "${entry[@]}" "$@"
}

runs_version() {
  local out
  out=$(in_image --version 2>&1) || fail "exit $?: $out"
  grep -qw -- "$VERSION" <<<"$out" || fail "--version printed '$out', not $VERSION"
}

runs_help() {
  local out
  out=$(in_image "$@" --help 2>&1) || fail "exit $?: $out"
  grep -q 'Usage' <<<"$out" || fail "--help printed no usage: $out"
}

sidecar_small() {
  local size
  size=$(find "$IMG/rootfs" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
  [ "$size" -lt "$SIDECAR_LIMIT" ] || fail "rootfs is $size bytes, goal < $SIDECAR_LIMIT"
}

# The runner itself, on the host's root: uid, gid and the only group are 65532.
runner_drops_to_nonroot() {
  local ids
  # shellcheck disable=SC2016 # expanded by that sh, as 65532
  ids=$(env -i PATH=/usr/bin:/bin unshare --fork --root=/ --setgid="$NONROOT" \
    --setuid="$NONROOT" -- sh -c 'echo "$(id -u) $(id -g) $(id -G)"')
  [ "$ids" = "$NONROOT $NONROOT $NONROOT" ] || fail "uid gid groups: $ids"
}

# ---- per image -------------------------------------------------------------------------------

check_image() {
  NAME=$1 BIN=$2
  local archive=target/images/ballast-$NAME-$VERSION.oci.tar
  IMG=$WORK/$NAME
  echo "ballast/$NAME ($archive)"
  if [ ! -f "$archive" ]; then
    check "$NAME: archive exists" fail "missing: run scripts/images.sh first"
    return
  fi
  mkdir -p "$IMG/oci"
  tar -xf "$archive" -C "$IMG/oci"
  if ! oci_summary "$IMG/oci" >"$IMG/summary" 2>"$IMG/summary.err"; then
    check "$NAME: OCI index, manifest and config readable" fail "$(cat "$IMG/summary.err")"
    return
  fi
  flatten
  check "$NAME: OCI layout, blob digests, ref name, linux/amd64" layout_ok
  check "$NAME: runs as $NONROOT:$NONROOT" user_ok
  check "$NAME: entrypoint /usr/local/bin/$BIN" entrypoint_ok
  check "$NAME: OCI labels (source, version, licenses, title, revision)" labels_ok
  check "$NAME: no shell, no busybox" no_shell
  check "$NAME: only the expected files" only_expected_files
  check "$NAME: files owned by root, none setuid or world-writable" owned_by_root
  check "$NAME: binary identical to target/release/$BIN" binary_is_current
  check "$NAME: --version as $NONROOT inside the image prints $VERSION" runs_version
  if [ "$NAME" = fleet ]; then
    check "$NAME: gateway --help as $NONROOT inside the image" runs_help gateway
  else
    check "$NAME: --help as $NONROOT inside the image" runs_help
  fi
  [ "$NAME" != sidecar ] || check "$NAME: under 15 MB uncompressed" sidecar_small
}

main() {
  [ "$(id -u)" = 0 ] || { echo "check-images: needs root (chroot into the images)" >&2; exit 1; }
  [ -n "$VERSION" ] || { echo "check-images: no version in Cargo.toml" >&2; exit 1; }
  echo "runner"
  check "unshare --root --setuid/--setgid runs as $NONROOT:$NONROOT, no other groups" \
    runner_drops_to_nonroot
  check_image operator ballast-operator
  check_image sidecar ballast-sidecar
  check_image fleet ballast-fleet
  echo
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo "failed:"
    printf '  %s\n' "${FAILED[@]}"
  fi
  echo "$PASSED passed, ${#FAILED[@]} failed"
  [ ${#FAILED[@]} -eq 0 ]
}

main "$@"
