#!/usr/bin/env bash
# The tests under a CPU hog: two busy processes per core for as long as pytest runs, so a test that assumes
# how fast the scheduler or the CPU is fails here rather than on a user's loaded machine.
#
#   bash scripts/stress-test.sh                       # the whole suite (as scripts/test.sh runs it)
#   bash scripts/stress-test.sh tests/core -k shadow  # any pytest arguments
#   STRESS_RUNS=3 bash scripts/stress-test.sh         # that many runs in a row; stops at the first failure
#   STRESS_HOGS=4 bash scripts/stress-test.sh ...     # another number of busy processes
#
# The environments must exist (scripts/setup.sh). The hog is stopped however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
cores="$(nproc)"
hogs="${STRESS_HOGS:-$((2 * cores))}"
runs="${STRESS_RUNS:-1}"
pids=()
tests=""

stop_hog() {
  if [[ -n "$tests" ]]; then kill "$tests" 2>/dev/null || true; fi
  if ((${#pids[@]})); then
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop_hog EXIT
trap 'exit 130' INT TERM

for _ in $(seq "$hogs"); do
  # A shell loop: busy on one core, no allocation, nothing to install.
  bash -c 'while :; do :; done' &
  pids+=("$!")
done
echo "stress-test: $hogs busy processes on $cores cores; $runs run(s) of pytest ${*:-(the whole suite)}" >&2

for run in $(seq "$runs"); do
  echo "stress-test: run $run of $runs" >&2
  # pytest runs in the background and the script waits for it, so that a TERM to the script stops it and the
  # hog at once (bash would only run the trap after a foreground command ended).
  if (($#)); then
    # A selection: no coverage floor (scripts/test.sh applies it to the whole suite only).
    .venv/bin/python -m pytest -p no:cacheprovider "$@" &
  else
    .venv/bin/python -m pytest -p no:cacheprovider --cov-fail-under=85 &
  fi
  tests="$!"
  wait "$tests"
  tests=""
done
echo "stress-test: $runs run(s) passed under $hogs busy processes" >&2
