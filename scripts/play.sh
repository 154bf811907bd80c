#!/usr/bin/env bash
# Set up (first time) and open the shipped Pong dream in a pygame window. Extra arguments
# are Hydra overrides for `python -m play`, e.g.  bash scripts/play.sh scale=6 sampling_steps=2
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m play "$@"
