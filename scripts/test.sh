#!/usr/bin/env bash
# All set-up, then the test suite (arguments go to pytest).
# pytest runs from its console script, so `import lstm_ext` finds the installed
# package, not the checkout's sources.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/pytest" "$@"
