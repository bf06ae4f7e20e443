#!/usr/bin/env bash
# Compiles the CUDA build on a machine without a GPU, so a CUDA compile error
# fails CI, then runs the test suite on the CPU against that build.
# Needs nvcc (CUDA 13) and installs torch==2.14.1 (a CUDA 13.0 build; the CPU
# build of torch cannot compile CUDA sources) into its own environment.
set -euo pipefail
cd "$(dirname "$0")/.."
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
export LSTM_EXT_CUDA=1  # fail, rather than quietly build CPU-only, when CUDA cannot be built
VENV=.venv-cuda TORCH_SPEC=torch==2.14.1 bash scripts/setup.sh
.venv-cuda/bin/python -P -c "import lstm_ext; assert lstm_ext.backends()['cuda'], 'CUDA kernels missing'"
exec .venv-cuda/bin/pytest "$@"
