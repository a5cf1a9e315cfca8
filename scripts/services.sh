#!/usr/bin/env bash
# Start/stop the embedded default's application process: the reference API on
# 127.0.0.1:58080, connected to the local cluster.  PIDs and logs live in .state/.
# (The blue-green deploy phase will run its colours under a supervisor behind nginx.)
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:-status}
port=${APP_PORT:-58080}
run=.state/run
mkdir -p "$run" .state/logs
pidfile=$run/app.pid

running() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case $action in
  start)
    if running; then echo "[services] API already running (pid $(cat $pidfile)) on http://127.0.0.1:$port"; exit 0; fi
    PGPASSWORD=$(cat .state/secrets/football.password)
    export PGPASSWORD PGHOST=127.0.0.1 PGPORT=${PG_PORT:-55433} PGUSER=football PGDATABASE=football_prediction
    nohup .venv/bin/python examples/football_prediction/app.py --host 127.0.0.1 --port "$port" \
      --app-version "${APP_VERSION:-1.0.0}" >> .state/logs/app.log 2>&1 &
    echo $! > "$pidfile"
    for _ in $(seq 50); do
      curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
      sleep 0.1
    done
    echo "[services] API started (pid $(cat $pidfile)) on http://127.0.0.1:$port, log .state/logs/app.log"
    ;;
  stop)
    if running; then kill "$(cat "$pidfile")"; echo "[services] API stopped"; fi
    rm -f "$pidfile"
    ;;
  status)
    if running; then echo "[services] API running (pid $(cat $pidfile))"; else echo "[services] API stopped"; exit 3; fi
    ;;
  *) echo "usage: $0 start|stop|status"; exit 2 ;;
esac
