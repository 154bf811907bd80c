#!/usr/bin/env bash
# Regenerate the README's Results figures: evaluate each shipped checkpoint on its shipped
# held-out set (training/heldout/<game>) and copy the plots and the video into docs/.
#   bash scripts/results.sh                   # pong and breakout (about 4-5 minutes each on 2 CPU cores)
#   bash scripts/results.sh pong seed=1       # games and key=value overrides of training.evaluate, in any order
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python
games=() overrides=()
for arg in "$@"; do
  case "$arg" in
    out=*|checkpoint=*) echo "results.sh: $arg is fixed here (checkpoint=<game>, out=runs/eval-<game>)" >&2; exit 2 ;;
    *=*) overrides+=("$arg") ;;
    *) games+=("$arg") ;;
  esac
done
[ ${#games[@]} -gt 0 ] || games=(pong breakout)
outputs=(drift.png long_run.png breakdowns.png real_vs_dream.gif)   # each copied as docs/<name>_<game>.<ext>
for game in "${games[@]}"; do
  out="runs/eval-$game"
  mkdir -p "$out"
  for file in "${outputs[@]}"; do rm -f "$out/$file"; done
  "$python" -m training.evaluate checkpoint="$game" out="$out" progress=false ${overrides[@]+"${overrides[@]}"}
  for file in "${outputs[@]}"; do
    if [ -f "$out/$file" ]; then cp "$out/$file" "docs/${file%.*}_$game.${file##*.}"; fi
  done
  echo "figures of $game: $out/report.json, plots copied into docs/"
done
