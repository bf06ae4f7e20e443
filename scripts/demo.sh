#!/usr/bin/env bash
# All set-up, then the main job: the course's training demo and the benchmark tables.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${VENV:-.venv}/bin/python"
"$PY" examples/train.py
"$PY" benchmarks/bench_cell.py
"$PY" benchmarks/bench_sequence.py
