#!/usr/bin/env bash
# Start/stop the embedded default's application: nginx on 127.0.0.1:${APP_PROXY_PORT:-18080}
# in front of the blue/green colours under supervisord, all run from .state/deploy/ (no
# system-wide configuration, no systemd: started and stopped by PID).
#   start: build releases 1.0.0 and 2.0.0 into .state/releases/, make 1.0.0 live (when
#          nothing is live yet) with playbooks/app_release.yml
#   stop:  stop supervisord (and the colours) and nginx by their pid files
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:-status}
deploy=.state/deploy
proxy_port=${APP_PROXY_PORT:-18080}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {  # pidfile signal
  local pid
  alive "$1" || return 0
  pid=$(cat "$1")
  kill "-$2" "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

case $action in
  start)
    for v in 1.0.0 2.0.0; do
      # A release is immutable: a demo state whose wheels were built from an older checkout is refused.
      bash scripts/build-release.sh "$v" .state/releases >/dev/null || {
        echo "[services] the demo's release $v in .state/releases was built from other sources (the checkout" \
             "changed since): run 'make clean' for a fresh demo state (it drops the demo database too), or" \
             "remove .state/releases/football_prediction_api-$v-py3-none-any.whl to rebuild only the release" >&2
        exit 1
      }
    done
    .venv/bin/ansible-playbook playbooks/app_release.yml -e blue_green_release_version=1.0.0 \
      -e "pgmigrate_app_url=http://127.0.0.1:$proxy_port" -e blue_green_expect_revision= >/dev/null \
      || { echo "[services] deploying release 1.0.0 failed: rerun .venv/bin/ansible-playbook playbooks/app_release.yml -e blue_green_release_version=1.0.0 for the details"; exit 1; }
    echo "[services] nginx on http://127.0.0.1:$proxy_port serves $(curl -fsS "http://127.0.0.1:$proxy_port/health")"
    ;;
  stop)
    stop_pid $deploy/supervisor/supervisord.pid TERM && echo "[services] supervisord and the colours stopped"
    stop_pid $deploy/nginx/nginx.pid QUIT && echo "[services] nginx stopped"
    ;;
  status)
    alive $deploy/nginx/nginx.pid && alive $deploy/supervisor/supervisord.pid || { echo "[services] stopped"; exit 3; }
    /usr/bin/supervisorctl -c $deploy/supervisor/supervisord.conf status || true
    ;;
  *) echo "usage: $0 start|stop|status"; exit 2 ;;
esac
