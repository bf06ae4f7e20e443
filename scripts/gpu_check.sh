#!/usr/bin/env bash
# On a machine with a GPU whose python3 already has a CUDA torch, nvcc, ninja
# and pytest (no network needed): builds the extension with its CUDA kernels,
# runs the whole test suite on the GPU, runs the benchmarks on the GPU, and
# writes benchmarks/results/<gpu>.json plus the printed tables next to it.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD LSTM_EXT_BUILD_DIR=$PWD/build/gpu-check LSTM_EXT_CUDA=1 PYTHONUNBUFFERED=1
"$PY" -c "import lstm_ext, torch; assert torch.cuda.is_available() and lstm_ext.backends()['cuda']; print('gpu_check:', torch.cuda.get_device_name(), 'torch', torch.__version__, lstm_ext.backends())" || exit 1
name=$("$PY" -c "import re, torch; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
out=benchmarks/results
mkdir -p "$out"
status=0
"$PY" -m pytest -q -rs 2>&1 | tee "$out/$name-tests.txt" || status=1
for bench in benchmarks/bench_*.py; do
  "$PY" "$bench" --device cuda 2>&1 | tee "$out/$name-$(basename "$bench" .py).txt" || status=1
  case "$bench" in *bench_cell.py|*bench_sequence.py)  # the GRU too
    "$PY" "$bench" --device cuda --cell gru 2>&1 | tee "$out/$name-$(basename "$bench" .py)-gru.txt" || status=1;;
  esac
done
echo "gpu_check: results in $out/$name*.{json,txt}"
exit $status
