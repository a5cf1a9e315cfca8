#!/usr/bin/env bash
# Build the reference API's release wheel with VERSION stamped:
#   scripts/build-release.sh VERSION [OUTDIR]   (OUTDIR default .state/releases/)
# -> OUTDIR/football_prediction_api-VERSION-py3-none-any.whl, reproducible and immutable.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$root/.venv/bin/python
[[ -x $py ]] || py=python3
exec "$py" "$root/tools/build_release.py" "$@"
