#!/usr/bin/env bash
# Assembles an image's root filesystem: the binaries and exactly what they
# need (their shared libraries as the loader finds them, CA certificates for
# HTTPS to Git, a passwd entry for the non-root user 65532 that ssh asks for,
# writable /tmp and data dirs). No shell, no package manager.
#
#   rootfs.sh agent DEST BIN_DIR KUBECTL [HELM]
#                                          ferry-agent, kubectl (kustomize), ssh (Git over
#                                          SSH), helm (Helm sources) when given
#   rootfs.sh coordinator DEST BIN_DIR      ferry (serve and the CLI)
#
# Used by build.sh (buildah, here) and by the Containerfile (users' builds).
set -euo pipefail

what=$1 dest=$2 bin_dir=$3 kubectl=${4:-} helm=${5:-}
die() { echo "rootfs.sh: $*" >&2; exit 1; }

case $what in
  agent)
    [ -n "$kubectl" ] || die "the agent image needs kubectl (it builds kustomizations): give its path"
    bins=("$bin_dir/ferry-agent" "$kubectl" "$(command -v ssh || die 'no ssh client: install openssh-client')")
    # Without helm the agent still runs; a Helm source then fails by name
    # ("helm not found").
    [ -z "$helm" ] || bins+=("$helm")
    ;;
  coordinator)
    bins=("$bin_dir/ferry")
    ;;
  *) die "unknown image $what (agent or coordinator)" ;;
esac

mkdir -p "$dest"/{usr/local/bin,etc/ssl/certs,tmp,home/nonroot}
for b in "${bins[@]}"; do
  [ -x "$b" ] || die "$b is not an executable (build it first)"
  install -m 0755 "$b" "$dest/usr/local/bin/$(basename "$b")"
  # Every library the loader would map, at the path it maps it from.
  if ldd "$b" >/dev/null 2>&1; then
    ldd "$b" | awk '/=> \// {print $3} /^\t\// {print $1}' | while read -r lib; do
      mkdir -p "$dest$(dirname "$lib")"
      cp -L "$lib" "$dest$lib"
    done
  fi
done

ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || die "no $ca: install ca-certificates"
cp -L "$ca" "$dest/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dest/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$dest/etc/group"
chmod 1777 "$dest/tmp"
case $what in
  agent) mkdir -p "$dest/var/cache/ferry" && chown 65532:65532 "$dest/var/cache/ferry" ;;
  coordinator) mkdir -p "$dest/var/lib/ferry" && chown 65532:65532 "$dest/var/lib/ferry" ;;
esac
chown 65532:65532 "$dest/home/nonroot"
