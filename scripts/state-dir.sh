#!/usr/bin/env bash
# Make sure the embedded default has its state directory (.state: the PostgreSQL cluster,
# its password file, backups, logs) and print where it really is.
#
# PostgreSQL runs as the unprivileged postgres user (it refuses root), so that user must be
# able to reach the cluster's directory.  A checkout in root's home (0700) or in a 0700
# temporary directory is not reachable, and loosening the permissions of the user's home is
# not an answer.  Then .state is a symlink to a directory outside the checkout, keyed by the
# checkout's real path:  ${PGMIGRATE_DEMO_STATE_ROOT:-/var/lib/pgmigrate-demo}/<name>-<hash>/
# (0711: traversable, not listable; the secrets inside stay 0700).
set -euo pipefail
cd "$(dirname "$0")/.."
root=${PGMIGRATE_DEMO_STATE_ROOT:-/var/lib/pgmigrate-demo}

reachable() {  # can the postgres user traverse every directory down to $1?
  [[ $(id -u) -ne 0 ]] && return 0
  runuser -u postgres -- test -x "$1" 2>/dev/null
}

link_outside() {
  local checkout key
  checkout=$(pwd -P)
  key="$(basename "$checkout")-$(printf '%s' "$checkout" | sha256sum | cut -c1-12)"
  mkdir -p "$root/$key"
  # bootstrap.sh may already have written a marker into a plain .state: carry it over.
  if [[ -d .state ]]; then cp -a .state/. "$root/$key"/ && rm -rf .state; fi
  chmod 0711 "$root" "$root/$key"
  ln -s "$root/$key" .state
  echo "[state] $checkout is not reachable by the postgres user: the demo's state lives in $root/$key (.state links there)" >&2
}

if [[ -L .state ]]; then
  mkdir -p "$(readlink -f .state)"
elif reachable "$PWD"; then
  mkdir -p .state
elif [[ ! -e .state/pg ]]; then
  link_outside
fi
readlink -f .state
