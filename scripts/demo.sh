#!/usr/bin/env bash
# All set-up, then the main job: the course's training demo and a quick
# benchmark (about a minute after set-up). With --full, then the full
# benchmark grids (about 10 minutes here) and the plots in docs/images/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${VENV:-.venv}/bin/python"
echo "== the course's training demo (examples/train.py)"
"$PY" examples/train.py
echo "== quick benchmark (benchmarks/quick.py)"
"$PY" benchmarks/quick.py
if [ "${1:-}" = "--full" ]; then
  echo "== full grids (benchmarks/bench_cell.py, benchmarks/bench_sequence.py)"
  "$PY" benchmarks/bench_cell.py
  "$PY" benchmarks/bench_sequence.py
  "$PY" benchmarks/plot.py
else
  echo "The full benchmark grids and plots (about 10 minutes): bash scripts/demo.sh --full"
fi
