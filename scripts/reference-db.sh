#!/usr/bin/env bash
# Bring the embedded default's database to the reference application's 1.0.0 state:
# Alembic baseline when the database has no revision yet, then seed data when empty.
# Never downgrades and never touches a database that already has data.
set -euo pipefail
cd "$(dirname "$0")/.."
port=$1 db=$2 owner=$3 predictions=$4
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=$owner PGDATABASE=$db
PGPASSWORD=$(cat .state/secrets/"$owner".password)
export PGPASSWORD
rev=$(psql -X -At -c "SELECT version_num FROM alembic_version" 2>/dev/null || true)
if [[ -z "$rev" ]]; then
  echo "[reference-db] $db has no Alembic revision: applying the 1.0.0 baseline (v1_0_0)"
  .venv/bin/alembic -c examples/football_prediction/alembic.ini upgrade v1_0_0
else
  echo "[reference-db] $db is at Alembic revision $rev"
fi
.venv/bin/python examples/football_prediction/seed.py --predictions "$predictions" --if-empty
