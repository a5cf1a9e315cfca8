#!/usr/bin/env bash
# Build (once per machine) the base image recipe of the docker runtime: a minimal Debian
# bookworm root filesystem from debootstrap with python3, python3-venv, python3-pip and
# python3-psycopg2,
# and a Dockerfile that turns it into an image (FROM scratch + ADD of the tarball: what
# `docker import` does, through the Docker build API). No image registry is used.
#
#   docker-base-rootfs.sh CACHE_DIR HASH     -> CACHE_DIR/docker-base/HASH/{rootfs.tar,Dockerfile}
#
# HASH names the recipe (the caller passes the sha256 of this file): a changed recipe is a
# new directory, an unchanged one is never rebuilt. Concurrent callers wait on one lock.
# Prints "cached DIR" or "built DIR". Needs root (debootstrap) and deb.debian.org.
set -euo pipefail
SUITE=bookworm
MIRROR=${PGMIGRATE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python3-pip,python3-psycopg2

cache_dir=${1:?usage: docker-base-rootfs.sh CACHE_DIR HASH}
recipe=${2:?usage: docker-base-rootfs.sh CACHE_DIR HASH}
[[ $recipe =~ ^[0-9a-f]{8,64}$ ]] || { echo "HASH must be hex digits, got '$recipe'" >&2; exit 2; }
out="$cache_dir/docker-base/$recipe"
mkdir -p "$cache_dir/docker-base"

exec 9>"$cache_dir/docker-base/.lock"
flock 9
if [[ -s $out/rootfs.tar && -s $out/Dockerfile ]]; then
  echo "cached $out"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: run scripts/bootstrap.sh --services" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "debootstrap needs root: run this once as root (the result is cached in $out)" >&2; exit 1; }

work=$(mktemp -d "$cache_dir/docker-base/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/root" "$MIRROR" \
      >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  echo "debootstrap $SUITE from $MIRROR failed (log above); set PGMIGRATE_DEBIAN_MIRROR to a reachable mirror" >&2
  exit 1
fi
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"* "$work/root/tmp/"*
tar --numeric-owner --xattrs -C "$work/root" -cf "$work/rootfs.tar" .
cat >"$work/Dockerfile" <<DOCKERFILE
# Debian $SUITE minbase ($PACKAGES) from debootstrap, recipe $recipe.
FROM scratch
ADD rootfs.tar /
LABEL org.pgmigrate.base.recipe="$recipe" org.pgmigrate.base.suite="$SUITE"
ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["/usr/bin/python3", "--version"]
DOCKERFILE
rm -rf "$work/root" "$work/debootstrap.log"
chmod 755 "$work"
mv "$work" "$out"
trap - EXIT
echo "built $out"
