#!/usr/bin/env bash
# Install what the control node needs, idempotently:
#   - a Python >= 3.12 virtualenv in .venv with requirements.txt (Ansible 14 needs 3.12+)
#   - the PostgreSQL server binaries (Debian's postgresql-15) when missing
#   - with --services: nginx and supervisor for the blue-green demo/tests, docker.io and
#     debootstrap for its container runtime (scripts/dockerd.sh starts the daemon by hand)
# Prints what it installs; never asks questions.
set -euo pipefail
cd "$(dirname "$0")/.."
want_services=0
[[ "${1:-}" == "--services" ]] && want_services=1

say() { printf '[bootstrap] %s\n' "$*"; }

usable() {  # a Python that really runs (pyenv shims may exist and fail) and is >= 3.12
  "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

find_python() {
  local c v
  if [[ -n "${PGMIGRATE_PYTHON:-}" ]] && usable "$PGMIGRATE_PYTHON"; then echo "$PGMIGRATE_PYTHON"; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[2-9]' | sort -V -r); do
      c="$(pyenv prefix "$v" 2>/dev/null)/bin/python3"
      usable "$c" && { echo "$c"; return; }
    done
  fi
  for c in python3.13 python3.12 python3 /usr/bin/python3; do
    c=$(command -v "$c" 2>/dev/null) || continue
    usable "$c" && { echo "$c"; return; }
  done
  return 1
}

apt_install() {
  say "installing Debian packages: $*"
  if [[ $(id -u) -ne 0 ]]; then say "need root to install $* (or install them yourself)"; exit 1; fi
  # Keep package scripts from starting services: we start our own, on loopback.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  fi
  if [[ ! -e .state/.apt-updated ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    mkdir -p .state && touch .state/.apt-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. PostgreSQL server binaries
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  say "PostgreSQL server binaries are missing"
  apt_install postgresql-15 postgresql-client-15
fi

# 2. With --services: what the demo's monitoring and the tests run for real
#    (Prometheus with promtool, node_exporter's textfile collector, the Pushgateway, Alertmanager,
#    nginx, supervisor).
if [[ $want_services -eq 1 ]]; then
  missing=()
  [[ -x /usr/bin/prometheus && -x /usr/bin/promtool ]] || missing+=(prometheus)
  [[ -x /usr/bin/prometheus-node-exporter ]] || missing+=(prometheus-node-exporter)
  [[ -x /usr/bin/prometheus-pushgateway ]] || missing+=(prometheus-pushgateway)
  [[ -x /usr/bin/prometheus-alertmanager ]] || missing+=(prometheus-alertmanager)
  # nginx and supervisord of the blue/green deploy (run from .state/deploy, never system-wide).
  [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  [[ -x /usr/bin/supervisord && -x /usr/bin/supervisorctl ]] || missing+=(supervisor)
  # The docker runtime of blue_green: Debian's dockerd and the base image's root filesystem.
  [[ -x /usr/sbin/dockerd ]] || missing+=(docker.io)
  [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
  if [[ ${#missing[@]} -gt 0 ]]; then apt_install "${missing[@]}"; fi
fi

# 3. The control node's virtualenv
stamp=.venv/.requirements.sha256
sum=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ -x .venv/bin/python ]] && [[ -f $stamp ]] && [[ "$(cat $stamp)" == "$sum" ]]; then
  exit 0
fi
if ! py=$(find_python); then
  say "no Python >= 3.12 found. Ansible 14 needs it on the control node."
  say "install one (pyenv install 3.12, or apt-get install python3.12 on newer Debian), or set PGMIGRATE_PYTHON=/path/to/python3.12"
  exit 1
fi
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
  say "creating .venv with $py ($("$py" --version))"
  rm -rf .venv
  "$py" -m venv .venv
fi
say "installing requirements.txt into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
echo "$sum" > "$stamp"
say "ready: $(.venv/bin/ansible --version 2>/dev/null | sed -n 1p)"
