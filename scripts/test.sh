#!/usr/bin/env bash
# Set up (first time) and run the default test suite (the slow tests are skipped; add
# `-m slow` to run only those). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy
exec .venv/bin/python -m pytest "$@"
