#!/usr/bin/env bash
# Create .venv (if missing) and install the project into it, with the test tools if asked:
#   bash scripts/setup.sh          # to play
#   bash scripts/setup.sh test     # to run the tests too
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
.venv/bin/python -m pip install --quiet -e ".${extra}"
