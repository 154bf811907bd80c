"""Where a free-play dream's end flag fires, and what the dream showed before it.

One dream of the evaluation's long run (:func:`training.evaluate.free_play`: the bundle's
first start window, random actions held up to 8 steps), prints each onset of the end flag
(:func:`training.evaluate.onset_mask`: a run of consecutive flagged steps counts once, as the
evaluation's ``dream_ends_per_1000`` counts them) with the share of the 16 frames
before it that show a ball, how many steps the flag stays up, and how often the last
16 actions were the game's action 1 (FIRE in Breakout). With ``--png`` it saves the frames 6,
3 and 1 steps before the first four onsets and the onset itself, one row per onset, scaled 3x.

A game over in real play is a still screen with no lives left; an end flag on a single frame,
with the ball in play just before it, is the end model misreading the dream.

    python scripts/end_flags.py breakout --steps 2000
    python scripts/end_flags.py runs/breakout-mw5/bundle --steps 2000 --png /tmp/ends.png
"""

from __future__ import annotations

import argparse

import numpy as np

from training.evaluate import ball_visible, free_play, onset_mask
from worldmodel.bundle import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a shipped bundle's name or a bundle directory")
    ap.add_argument("--steps", type=int, default=2000, help="free-play steps (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="noise and policy seed (default 0)")
    ap.add_argument("--png", help="save the frames before the first four onsets here")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")

    model = load(args.checkpoint)
    sim, policy = free_play(model, seed=args.seed)
    frames, ends, actions = [], [], []
    for _ in range(args.steps):
        a = policy(None)
        f, _, end = sim.step(a)
        frames.append(f[0])
        ends.append(bool(end[0]))
        actions.append(int(a[0]))
    frames, ends, actions = np.stack(frames), np.asarray(ends), np.asarray(actions)
    onsets = np.flatnonzero(onset_mask(ends))
    try:
        seen = ball_visible(frames, model.game)
    except ValueError:                                     # a game without a ball read-out
        seen = None
    print(f"{args.checkpoint}: {len(onsets)} end-flag onsets in {args.steps} steps "
          f"({1000 * len(onsets) / args.steps:.1f} per 1,000), flag up on {ends.sum()} steps"
          + (f", ball seen in {seen.mean():.1%} of frames" if seen is not None else ""))
    for t in onsets:
        before = slice(max(0, t - 16), t)
        up = np.argmin(ends[t:]) if not ends[t:].all() else args.steps - t
        ball = f"ball seen in {seen[before].mean():.0%} of the 16 before, " if seen is not None and t > 0 else ""
        print(f"  step {t}: {ball}flag up {up} step(s), action 1 in {(actions[before] == 1).sum()} of the 16 before")
    if args.png and len(onsets):
        from PIL import Image
        rows = [np.concatenate([frames[max(0, t - k)] for k in (6, 3, 1, 0)], 1) for t in onsets[:4]]
        grid = np.concatenate(rows, 0)
        Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(args.png)
        print(f"frames before the first {len(rows)} onsets saved to {args.png}")


if __name__ == "__main__":
    main()
