#!/usr/bin/env bash
# Run every Molecule scenario under molecule/ (one per role) with `molecule test`.
# Each scenario brings up its own throw-away PostgreSQL (its own ports) and tears it down, so
# MOLECULE_JOBS scenarios (default: the number of cores) run side by side; each one's output
# is printed whole when it ends, and kept in .state/logs/molecule-<scenario>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
jobs=${MOLECULE_JOBS:-$(nproc)}
logs=.state/logs
mkdir -p "$logs"

run_one() {  # scenario -> exit status; output in its log
  local name=$1 start=$SECONDS rc=0
  molecule test -s "$name" > "$logs/molecule-$name.log" 2>&1 || rc=$?
  if [[ $rc -eq 0 ]]; then
    echo "=== $name passed in $((SECONDS - start)) s" >> "$logs/molecule-$name.log"
  else
    echo "=== $name FAILED in $((SECONDS - start)) s" >> "$logs/molecule-$name.log"
  fi
  return $rc
}

scenarios=()
for dir in molecule/*/; do
  [[ -f "$dir/molecule.yml" ]] && scenarios+=("$(basename "$dir")")
done

declare -A pids=()
failed=()
finish() {  # pid name (the verdict is the log's last line: the pid may have been reaped by wait -n)
  wait "$1" 2>/dev/null || true
  echo "=== molecule test -s $2"
  cat "$logs/molecule-$2.log"
  grep -q "^=== $2 passed in" "$logs/molecule-$2.log" || failed+=("$2")
}
for name in "${scenarios[@]}"; do
  while [[ ${#pids[@]} -ge $jobs ]]; do
    wait -n || true
    for n in "${!pids[@]}"; do
      if ! kill -0 "${pids[$n]}" 2>/dev/null; then finish "${pids[$n]}" "$n"; unset "pids[$n]"; fi
    done
  done
  run_one "$name" & pids[$name]=$!
done
for n in "${!pids[@]}"; do finish "${pids[$n]}" "$n"; done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "Molecule scenarios failed: ${failed[*]}"
  exit 1
fi
echo "All ${#scenarios[@]} Molecule scenarios passed"
