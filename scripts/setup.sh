#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs lstm_ext into it,
# compiled ahead of time against the torch in that environment.
#
# torch is installed only when the environment has none: an existing torch is
# never replaced (the package itself is installed with --no-deps).
#   VENV        the environment              (default: .venv)
#   TORCH_SPEC  torch to install when missing (default: torch==2.13.0, the CPU build)
#   PYTHON      interpreter for a new venv    (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
source scripts/lib.sh
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC into $VENV"
  quiet_pip "$VENV/bin/python" install "$TORCH_SPEC"
fi
# matplotlib only for benchmarks/plot.py, onnx, onnxscript and onnxruntime only for
# lstm_ext.onnx and its tests: the package itself never imports them.
quiet_pip "$VENV/bin/python" install ninja pytest numpy matplotlib onnx onnxscript onnxruntime "setuptools>=70.1" wheel
echo "setup: building lstm_ext against torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
quiet_pip "$VENV/bin/python" install --no-build-isolation --no-deps .
"$VENV/bin/python" -P -c "import lstm_ext, torch; print('setup: lstm_ext', lstm_ext.__version__, 'torch', torch.__version__, lstm_ext.backends(), 'CPU kernels', lstm_ext.cpu_capability())"
