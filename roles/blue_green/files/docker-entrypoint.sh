#!/bin/sh
# The container's main process (under docker's init, tini): the database password comes from
# the read-only mounted secret file into this process's own environment, never into argv or
# the container's configuration (docker inspect shows only the file's path).
set -eu
if [ -n "${PGMIGRATE_SECRET_FILE:-}" ]; then
  if [ ! -r "$PGMIGRATE_SECRET_FILE" ]; then
    echo "football-prediction-api: cannot read the secret file $PGMIGRATE_SECRET_FILE" >&2
    exit 1
  fi
  PGPASSWORD=$(cat "$PGMIGRATE_SECRET_FILE")
  export PGPASSWORD
fi
exec /opt/football-prediction-api/bin/python -m football_prediction_api "$@"
