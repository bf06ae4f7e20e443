#!/usr/bin/env bash
# On a machine with a GPU whose python3 already has a CUDA torch, nvcc, ninja
# and pytest (no network needed): builds the extension with its CUDA kernels,
# runs the tests that use the GPU, times lstm_ext against torch.nn (cuDNN) on
# the GPU, and writes benchmarks/results/<gpu>.json plus the logs and printed
# tables next to it (<gpu>-*.txt).
#
# Sized for a short lease (GPU_CHECK_DEADLINE_S, 500 s, after the machine
# starts): the tests are the ones that run on CUDA (-k cuda; in parallel where
# pytest-xdist is there), the benchmarks time lstm_ext and torch.nn only (no
# reference loops or torch.compile, whose compiles take minutes on a GPU), and
# each stage stops at its own limit or the deadline, whichever comes first, so
# what finished is kept when a stage overruns.
# Through a lease that returns only a few files, bring the results back as one
# archive: bash scripts/gpu_check.sh; tar czf "$OUT/results.tgz" benchmarks/results/<gpu>*
#   GPU_CHECK_FULL=1     the whole suite and every implementation, no limits
#   GPU_CHECK_DEADLINE_S all stages together   (default 500 s)
#   GPU_CHECK_BUILD_S    the build             (default 300 s)
#   GPU_CHECK_TESTS_S    the tests             (default 200 s)
#   GPU_CHECK_BENCH_S    each benchmark script and cell (default 90 s)
#   GPU_CHECK_BENCHES    which, as script:cell (default: sequence and cell for
#                        lstm and gru, sequence for lnlstm)
#   GPU_CHECK_BENCH_ARGS more arguments for each (e.g. "--dtype float32")
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD LSTM_EXT_BUILD_DIR=$PWD/build/gpu-check LSTM_EXT_CUDA=1 PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
full=${GPU_CHECK_FULL:-0}
deadline=$((SECONDS + ${GPU_CHECK_DEADLINE_S:-500}))
# limit SECONDS COMMAND...: runs COMMAND for at most SECONDS, and not past the deadline.
limit() {
  [ "$full" = 1 ] && { "${@:2}"; return; }
  local left=$((deadline - SECONDS))
  [ "$left" -gt 5 ] || { echo "gpu_check: no time left for: ${*:2}"; return 124; }
  timeout --kill-after=10 "$((left < $1 ? left : $1))" "${@:2}"
}
name=$("$PY" -c "import re, torch; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))") || exit 1
out=benchmarks/results
mkdir -p "$out"
status=0

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -2; nproc; } 2>&1 | tee "$out/$name-env.txt"

started=$SECONDS
limit "${GPU_CHECK_BUILD_S:-300}" "$PY" -c "import lstm_ext, torch
assert torch.cuda.is_available() and lstm_ext.backends()['cuda'], lstm_ext.backends()
print('gpu_check:', torch.cuda.get_device_name(), 'torch', torch.__version__, lstm_ext.backends())" \
  2>&1 | tee "$out/$name-build.txt" || { echo "gpu_check: the build failed"; exit 1; }
echo "gpu_check: built in $((SECONDS - started)) s" | tee -a "$out/$name-build.txt"

started=$SECONDS
tests=(-p no:cacheprovider -rfEs)
[ "$full" = 1 ] || tests+=(-k "cuda or device_mismatch")
"$PY" -c "import xdist" 2>/dev/null && tests+=(-n "${GPU_CHECK_WORKERS:-8}" -v)
limit "${GPU_CHECK_TESTS_S:-200}" "$PY" -m pytest "${tests[@]}" 2>&1 | tee "$out/$name-tests.txt" || status=1
echo "gpu_check: tests took $((SECONDS - started)) s" | tee -a "$out/$name-tests.txt"

# script:cell pairs; the LayerNorm LSTM against its reference loop of torch
# ops (what CUDA ran before its fused kernels) and lstm_ext.LSTM.
for entry in ${GPU_CHECK_BENCHES:-sequence:lstm sequence:gru cell:lstm cell:gru sequence:lnlstm}; do
  bench=benchmarks/bench_${entry%%:*}.py cell=${entry#*:}
  bench_args=(--device cuda)
  impls=lstm_ext,torch,lstm_ext_pyfunc,lstm_ext_padded,lstm_ext_lstm
  [ "$cell" = lnlstm ] && impls=lstm_ext,reference,lstm_ext_lstm,lstm_ext_zoneout,lstm_ext_lstm_zoneout && bench_args+=(--dtype float32)
  [ "$full" = 1 ] || bench_args+=(--min-run-time 0.1 --impls "$impls")
  # shellcheck disable=SC2206  # words on purpose: extra arguments, later ones win
  bench_args+=(${GPU_CHECK_BENCH_ARGS:-})
  log="$out/$name-$(basename "$bench" .py)$([ "$cell" = lstm ] || echo "-$cell").txt"
  limit "${GPU_CHECK_BENCH_S:-90}" "$PY" "$bench" "${bench_args[@]}" --cell "$cell" 2>&1 | tee "$log" || status=1
done
# Which layout and library run one step's recurrent product fastest.
limit "${GPU_CHECK_BENCH_S:-90}" "$PY" benchmarks/cuda_step_products.py 2>&1 | tee "$out/$name-step-products.txt" \
  || status=1
echo "gpu_check: results in $out/$name*.{json,txt}"
exit $status
