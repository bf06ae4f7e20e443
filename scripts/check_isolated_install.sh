#!/usr/bin/env bash
# A plain `pip install .` (isolated build, no torch in the build environment)
# ships the C++ sources, and the library compiles at first import against the
# environment's torch. pip must not touch that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
before=$("$PY" -c "import torch; print(torch.__version__)")
quiet_pip "$PY" install --dry-run --report "$work/report.json" .
"$PY" -P - "$work/report.json" <<'PYEOF'
import json, sys
names = [item["metadata"]["name"].lower() for item in json.load(open(sys.argv[1]))["install"]]
assert "torch" not in names, f"pip install . would (re)install torch: {names}"
print("isolated install: pip would install", names, "and leave torch alone")
PYEOF
quiet_pip "$PY" install --no-deps --target "$work/site" .
test -f "$work/site/lstm_ext/_csrc/registration.cpp"
if ls "$work/site/lstm_ext/"_C*.so >/dev/null 2>&1; then echo "isolated build unexpectedly compiled"; exit 1; fi
PYTHONPATH="$work/site" LSTM_EXT_BUILD_DIR="$work/cache" "$PY" -P - "$work" <<'PYEOF'
import sys, torch
import lstm_ext
assert lstm_ext.__file__.startswith(sys.argv[1]), lstm_ext.__file__
ref = lstm_ext.reference.LSTMCell(4, 3).double()
cell = lstm_ext.LSTMCell(4, 3, dtype=torch.float64)
cell.load_state_dict(ref.state_dict())
x, h, c = torch.randn(5, 4).double(), torch.randn(5, 3).double(), torch.randn(5, 3).double()
for a, b in zip(cell(x, (h, c)), ref(x, (h, c))):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
print("isolated install: compiled at first import from", lstm_ext._C.__file__, "and matches the reference")
PYEOF
after=$("$PY" -c "import torch; print(torch.__version__)")
[ "$before" = "$after" ] || { echo "torch changed: $before -> $after"; exit 1; }
