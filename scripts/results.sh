#!/usr/bin/env bash
# Regenerate the README's Results figures: evaluate each shipped checkpoint on its shipped
# held-out set (training/heldout/<game>) and copy the plots and the video into docs/.
#   bash scripts/results.sh               # pong and breakout (about 5 + 7 minutes on 2 CPU cores)
#   bash scripts/results.sh pong          # one game; extra key=value arguments go to training.evaluate
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python
games=()
while [ $# -gt 0 ] && [[ "$1" != *=* ]]; do games+=("$1"); shift; done
[ ${#games[@]} -gt 0 ] || games=(pong breakout)
for game in "${games[@]}"; do
  out="runs/eval-$game"
  rm -f "$out/breakdowns.png"
  "$python" -m training.evaluate checkpoint="$game" out="$out" progress=false "$@"
  cp "$out/drift.png" "docs/drift_$game.png"
  cp "$out/long_run.png" "docs/long_run_$game.png"
  cp "$out/real_vs_dream.gif" "docs/real_vs_dream_$game.gif"
  if [ -f "$out/breakdowns.png" ]; then cp "$out/breakdowns.png" "docs/breakdowns_$game.png"; fi
  echo "figures of $game: $out/report.json, plots copied into docs/"
done
