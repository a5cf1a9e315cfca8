#!/usr/bin/env bash
# Run Debian's dockerd (docker.io) by hand for the docker runtime of blue_green: no systemd,
# nothing system-wide. Everything lives under one directory (default .state/docker, or
# PGMIGRATE_DOCKER_DIR, or --dir DIR):
#   DIR/docker.sock  the API socket (unix only: no TCP listener at all)
#   DIR/data         data-root (images, containers)      DIR/exec  exec-root (containerd state)
#   DIR/dockerd.pid  the daemon's PID                    DIR/dockerd.log  its log
#   DIR/daemon.json  its (empty) config, so /etc/docker/daemon.json is not read
# The daemon makes no bridge, iptables rule or NAT: containers use host networking on
# loopback (see roles/blue_green/README.md), so several daemons can run side by side.
#
#   scripts/dockerd.sh [--dir DIR] start|stop|status|env
#   eval "$(scripts/dockerd.sh env)"   # DOCKER_HOST for the docker CLI and community.docker
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${PGMIGRATE_DOCKER_DIR:-.state/docker}
if [[ ${1:-} == --dir ]]; then dir=${2:?--dir needs a directory}; shift 2; fi
action=${1:-status}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock=$dir/docker.sock pidfile=$dir/dockerd.pid log=$dir/dockerd.log
start_timeout=${PGMIGRATE_DOCKERD_TIMEOUT:-60}

say() { printf 'dockerd: %s\n' "$*"; }
unmount_leftovers() {  # e.g. exec-root/netns/default, which dockerd leaves mounted
  local mnt
  awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r mnt; do
    umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
  done
}
pid_alive() { [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
api_up() { curl -fsS --max-time 2 --unix-socket "$sock" http://localhost/_ping >/dev/null 2>&1; }

case $action in
  start)
    if pid_alive && api_up; then say "running (pid $(cat "$pidfile"), DOCKER_HOST=unix://$sock)"; exit 0; fi
    command -v dockerd >/dev/null || { say "dockerd is missing: run scripts/bootstrap.sh --services (Debian's docker.io)"; exit 1; }
    [[ $(id -u) -eq 0 ]] || { say "dockerd needs root here (rootless docker is not set up): run as root"; exit 1; }
    if (( ${#sock} > 100 )); then say "socket path $sock is too long for a unix socket: use a shorter --dir"; exit 1; fi
    rm -f "$sock" "$pidfile"
    [[ -s $dir/daemon.json ]] || echo '{}' >"$dir/daemon.json"
    setsid dockerd --config-file "$dir/daemon.json" -H "unix://$sock" \
      --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$pidfile" \
      --bridge=none --iptables=false --ip-masq=false --ip-forward=false --userland-proxy=false \
      --exec-opt native.cgroupdriver=cgroupfs >>"$log" 2>&1 </dev/null &
    launched=$!
    for _ in $(seq $((start_timeout * 5))); do
      if api_up; then say "started (pid $(cat "$pidfile"), DOCKER_HOST=unix://$sock)"; exit 0; fi
      if ! kill -0 "$launched" 2>/dev/null; then break; fi
      sleep 0.2
    done
    kill "$launched" 2>/dev/null || true
    say "did not start within ${start_timeout}s; the end of $log:"
    tail -n 15 "$log" | sed 's/^/  /'
    exit 1
    ;;
  stop)
    if ! pid_alive; then say "not running"; rm -f "$pidfile"; unmount_leftovers; exit 0; fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    # dockerd stops its containers (their stop timeouts) and its containerd before it exits.
    for _ in $(seq 300); do
      if ! kill -0 "$pid" 2>/dev/null; then unmount_leftovers; say "stopped (pid $pid)"; exit 0; fi
      sleep 0.2
    done
    say "pid $pid did not stop within 60s after SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    exit 1
    ;;
  status)
    if pid_alive && api_up; then say "running (pid $(cat "$pidfile"), DOCKER_HOST=unix://$sock)"; exit 0; fi
    if pid_alive; then say "pid $(cat "$pidfile") alive but the API on $sock does not answer"; exit 1; fi
    say "not running"; exit 3
    ;;
  env)
    echo "export DOCKER_HOST=unix://$sock"
    ;;
  *)
    echo "usage: scripts/dockerd.sh [--dir DIR] start|stop|status|env" >&2; exit 2
    ;;
esac
