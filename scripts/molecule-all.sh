#!/usr/bin/env bash
# Run every Molecule scenario under molecule/ (one per role) with `molecule test`.
# Each scenario brings up its own throw-away PostgreSQL and tears it down.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
failed=()
for dir in molecule/*/; do
  name=$(basename "$dir")
  [[ -f "$dir/molecule.yml" ]] || continue
  echo "=== molecule test -s $name"
  start=$SECONDS
  if molecule test -s "$name"; then
    echo "=== $name passed in $((SECONDS - start)) s"
  else
    echo "=== $name FAILED in $((SECONDS - start)) s"
    failed+=("$name")
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "Molecule scenarios failed: ${failed[*]}"
  exit 1
fi
echo "All Molecule scenarios passed"
