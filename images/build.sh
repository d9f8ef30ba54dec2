#!/usr/bin/env bash
# Builds Ferry's two images here, with buildah, from scratch: no base image
# and no registry needed.
#
#   ferry-agent:VERSION   ferry-agent, kubectl (kustomize builds), ssh (Git over SSH)
#   ferry:VERSION         ferry (`ferry serve` and the CLI)
#
# Each is the binaries and what they need (images/rootfs.sh), run as user
# 65532, entrypoint the binary, no shell. Written as OCI archives to OUT and
# kept in buildah's storage as localhost/NAME:VERSION.
#
#   images/build.sh [--bin-dir target/release] [--out target/images]
#                   [--kubectl .venv/bin/kubectl] [--helm PATH] [--storage DIR]
#
# --helm adds a Helm binary to the agent image (for Helm sources; the
# Containerfile downloads one, checked against its sha256).
# --storage gives buildah its own storage (root and runroot) under DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=target/release out=target/images kubectl=.venv/bin/kubectl helm="" storage=""
while [ $# -gt 0 ]; do
  case $1 in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --kubectl) kubectl=$2; shift 2 ;;
    --helm) helm=$2; shift 2 ;;
    --storage) storage=$2; shift 2 ;;
    *) echo "build.sh: unknown option $1" >&2; exit 64 ;;
  esac
done
command -v buildah >/dev/null || { echo "build.sh: buildah is needed (Debian: apt-get install buildah)" >&2; exit 1; }
if [ "$bin_dir" = target/release ] && { [ ! -x target/release/ferry ] || [ ! -x target/release/ferry-agent ]; }; then
  cargo build --release --locked -p ferry-agent -p ferry-coordinator --bins
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
[ -z "$storage" ] || buildah+=(--root "$storage/root" --runroot "$storage/run")
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

image() {
  local what=$1 name=$2 entry=$3 port=$4
  local rootfs="$work/$what"
  images/rootfs.sh "$what" "$rootfs" "$bin_dir" "$kubectl" "$helm"
  tar -C "$rootfs" --numeric-owner -cf "$work/$what.tar" .
  local c
  c=$("${buildah[@]}" from scratch)
  "${buildah[@]}" add "$c" "$work/$what.tar" / >/dev/null
  "${buildah[@]}" config \
    --user 65532:65532 \
    --entrypoint "[\"/usr/local/bin/$entry\"]" --cmd '[]' \
    --env PATH=/usr/local/bin \
    --workingdir /home/nonroot \
    --port "$port/tcp" \
    --label org.opencontainers.image.title="$name" \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.source=https://github.com/ferry-gitops/ferry \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    "$c"
  "${buildah[@]}" commit --quiet --format oci "$c" "localhost/$name:$version" >/dev/null
  "${buildah[@]}" rm "$c" >/dev/null
  rm -f "$out/$name-$version.oci.tar"
  "${buildah[@]}" push --quiet "localhost/$name:$version" "oci-archive:$out/$name-$version.oci.tar:$name:$version"
  echo "$out/$name-$version.oci.tar ($(du -h "$out/$name-$version.oci.tar" | cut -f1))"
}

image agent ferry-agent ferry-agent 9090
image coordinator ferry ferry 7443
