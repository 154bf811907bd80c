"""Pong's serves: what the frames tell of a serve's direction, and how a model's serves part its ball from the game's.

The ball's error at horizon 64 of the evaluation's teacher-forced rollouts is bimodal (README,
Results): nearly every 64-step window holds a point and a serve, and the dream's ball is on the
game's path after it or tens of pixels away. This script says why, in three parts.

1. On a dataset's recorded play (no model): each serve (the ball seen again after at least
   6 frames without one) with its vertical direction (over its first 3 frames), and how well
   that direction is named by (a) the direction the ball had when it left the screen before,
   (b) the computer's paddle's row on the frame before the serve (2-pixel bins), (c) the
   player's paddle's row, each by the best look-up table fitted on the same serves (in-sample),
   and how many frames without a ball come before the serve; and the serves' directions when
   the computer's paddle is hidden (over the top wall, where the game takes it after a point)
   on the frame before the serve, and when it is shown.

2. With ``--checkpoint``: the evaluation's teacher-forced rollouts (:func:`training.evaluate.
   teacher_forced_rollout`, 8 primed frames, the recorded actions, ``--windows`` windows drawn
   by ``--seed`` on the evaluation's held-out episodes, ``training/heldout/pong`` unless
   ``--heldout`` names others; horizon 64), and each window with a ball in the real
   or the dreamt frame at horizon 64 classed: within 3 px or not; whether the game and the dream
   served within the 64 steps; for a miss where both served, the difference of the first serves'
   frames (dream minus game) and whether their vertical directions agree, and where they do
   not, whether the two balls had left the screen in one direction (within the rollout; "left
   before the rollout" where both left in the primed real frames) and whether the computer's
   paddle was hidden or shown on the frame before each serve. And each of the
   held-out set's serves predicted from the game's own frames: primed with the 8 real frames
   up to the one before the serve, then 6 steps with the recorded actions; whether the dream
   serves on the game's frame, and in the game's direction, and on how many serve frames the
   dream misdraws the computer's paddle (which the game moves back to its serve position then).

3. With ``--checkpoint``, the wait between a point and its serve, the computer's paddle hidden:
   each frame of each held-out run of frames with that paddle hidden (the first excepted)
   predicted one step from the game's own frames before it (the model's context and its reward
   clock as in the evaluation), and the share of those frames on which the dream shows the
   paddle, by the frame's place in the run. Part 1 adds, on the dataset, how often the game
   shows it again after ``context_frames - 1`` frames without a ball or that paddle, by the
   reward clock: what a model can only learn from the clock, its context showing nothing else.

    python scripts/pong_serves.py data/pong
    python scripts/pong_serves.py training/heldout/pong --checkpoint pong --seed 0
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

from envs.readout import ball_xy, paddle_y
from recorders.dataset import EpisodeDataset, frames_since_reward

ABSENT = 6          # frames without a ball before a reappearance that counts as a serve
DIRECTION_FRAMES = 3
CONTEXT = 8         # the shipped models' context_frames (part 1 has no model to ask)
CLOCK = 32          # and their reward_clock: part 1's clocks are capped there ("32": none seen for 32 frames)


def serve_frames(ball: np.ndarray) -> list[int]:
    """Frames ``t`` of a ``(T, 2)`` ball track where a ball is seen after ``ABSENT`` frames without
    one (or, near the track's start, after every earlier frame was without one)."""
    seen = ~np.isnan(ball[:, 0])
    return [t for t in range(1, len(seen)) if seen[t] and not seen[max(0, t - ABSENT):t].any()]


def direction(ball: np.ndarray, t: int) -> int:
    """Sign of the ball's vertical motion over ``DIRECTION_FRAMES`` frames from ``t`` (+1: down;
    0 where the track ends or the ball is not seen)."""
    end = min(t + DIRECTION_FRAMES, len(ball) - 1)
    dy = ball[end, 1] - ball[t, 1]
    return 0 if np.isnan(dy) else int(np.sign(dy))


def exit_direction(ball: np.ndarray, t: int) -> int:
    """Sign of the ball's vertical motion over its last two frames seen before frame ``t`` (0: not
    seen twice in the track before ``t``)."""
    seen = np.flatnonzero(~np.isnan(ball[:t, 0]))
    return 0 if len(seen) < 2 else int(np.sign(ball[seen[-1], 1] - ball[seen[-2], 1]))


def serve_timing(dt: int) -> str:
    """Words for the dream's first serve ``dt`` frames after the game's (negative: before)."""
    if dt == 0:
        return "serve on the game's frame"
    if abs(dt) <= 5:
        return f"serve {abs(dt)} frames {'early' if dt < 0 else 'late'}"
    return "serves over 5 frames apart"


def lookup_accuracy(keys: list, labels: np.ndarray) -> float:
    """Share of ``labels`` named by the best in-sample table from ``keys`` (each key's majority)."""
    groups: dict = collections.defaultdict(list)
    for k, y in zip(keys, labels):
        groups[k].append(y)
    return sum(collections.Counter(g).most_common(1)[0][1] for g in groups.values()) / len(labels)


def serve_predictability(dataset: EpisodeDataset) -> dict:
    """Part 1 of the module docstring, over every episode of ``dataset``."""
    rows = []
    waits, shown_again = collections.Counter(), collections.Counter()
    blind = CONTEXT - 1     # the frames a model's context holds before the frame it makes
    for i in range(len(dataset)):
        frames, rewards = dataset[i].frames, dataset[i].rewards
        ball = ball_xy(frames)
        computer, player = paddle_y(frames, player=False), paddle_y(frames, player=True)
        seen = np.flatnonzero(~np.isnan(ball[:, 0]))
        for t in serve_frames(ball):
            before = seen[seen < t]
            dy = direction(ball, t)
            if len(before) < 2 or dy == 0:
                continue
            rows.append(dict(dy=dy, exit=exit_direction(ball, t), gap=t - before[-1] - 1,
                             computer=-1 if np.isnan(computer[t - 1]) else int(computer[t - 1] // 2),
                             player=-1 if np.isnan(player[t - 1]) else int(player[t - 1] // 2)))
        nothing = np.isnan(computer) & np.isnan(ball[:, 0])
        clock = np.minimum(frames_since_reward(rewards), CLOCK)
        for t in range(blind, len(frames)):
            if nothing[t - blind:t].all():
                waits[int(clock[t - 1])] += 1
                shown_again[int(clock[t - 1])] += not np.isnan(computer[t])
    if not rows:
        raise ValueError(f"no serves found in {dataset.root}")
    dy = np.array([r["dy"] for r in rows])
    gaps = np.array([r["gap"] for r in rows])
    hidden = np.array([r["computer"] == -1 for r in rows])
    return {
        "serves": len(rows),
        "down_share": float((dy > 0).mean()),
        "named_by_exit_direction": lookup_accuracy([r["exit"] for r in rows], dy),
        "named_by_computer_paddle_row": lookup_accuracy([r["computer"] for r in rows], dy),
        "named_by_player_paddle_row": lookup_accuracy([r["player"] for r in rows], dy),
        "frames_without_ball_before_serve_median": float(np.median(gaps)),
        "share_gap_over_8_frames": float((gaps > 8).mean()),
        "computer_paddle_hidden_serves_up_down": (int((dy[hidden] < 0).sum()), int((dy[hidden] > 0).sum())),
        "computer_paddle_shown_serves_up_down": (int((dy[~hidden] < 0).sum()), int((dy[~hidden] > 0).sum())),
        f"computer_paddle_shown_again_after_{blind}_frames_without_it_or_a_ball_by_clock":
            {c: f"{shown_again[c]}/{waits[c]}" for c in sorted(waits)},
    }


def horizon_64_misses(model, episodes: list, *, windows: int, seed: int) -> dict:
    """Part 2 of the module docstring: a :class:`~worldmodel.bundle.ModelBundle` on held-out episodes."""
    from training.evaluate import position_error, teacher_forced_rollout

    real, dream = teacher_forced_rollout(model, episodes, horizon=64, windows=windows, seed=seed)
    ball_real, ball_dream = ball_xy(real[:, 1:]), ball_xy(dream)          # (W, 64, 2), aligned
    err = position_error(ball_real[:, -1], ball_dream[:, -1])
    classes: collections.Counter = collections.Counter()
    for w in np.flatnonzero(~np.isnan(err)):
        sr, sd = serve_frames(ball_real[w]), serve_frames(ball_dream[w])
        key = ["within 3 px" if err[w] <= 3 else "miss", "game serves" if sr else "game does not serve",
               "dream serves" if sd else "dream does not serve"]
        if err[w] > 3 and sr and sd:
            same = direction(ball_real[w], sr[0]) == direction(ball_dream[w], sd[0])
            key += [serve_timing(sd[0] - sr[0]), "same direction" if same else "other direction"]
            if not same:
                exits = exit_direction(ball_real[w], sr[0]), exit_direction(ball_dream[w], sd[0])
                key.append("left before the rollout" if exits == (0, 0) else
                           "left in the game's direction" if exits[0] == exits[1] else "left in another direction")
                before_game, before_dream = real[w, sr[0]], dream[w, sd[0] - 1]    # the frames before the serves
                game, dreamt = ("hidden" if np.isnan(paddle_y(f, player=False)) else "shown"
                                for f in (before_game, before_dream))
                key.append(f"computer's paddle {game} in the game, {dreamt} in the dream")
        classes[", ".join(key)] += 1
    compared = int((~np.isnan(err)).sum())
    return {"windows": windows, "seed": seed, "with_a_ball_at_h64": compared,
            "within_3px": int((err <= 3).sum()), "median_px": float(np.nanmedian(err)),
            "classes": dict(classes.most_common())}


def serves_from_the_game(model, episodes: list, *, seed: int, horizon: int = 6, max_serves: int | None = None) -> dict:
    """Part 2's last paragraph: the model's serve from the game's frames, at each held-out serve
    (the first ``max_serves`` of them)."""
    from training.evaluate import screen_checks, teacher_forced_rollout

    ctx = model.dynamics_config.context_frames
    starts = [(e, t - ctx) for e in episodes for t in serve_frames(ball_xy(e.frames))
              if t >= ctx and t + horizon <= len(e.frames)][:max_serves]
    if not starts:
        raise ValueError("no serve in the held-out episodes has the frames around it that a rollout needs")
    real, dream = teacher_forced_rollout(model, episodes, horizon=horizon, windows=len(starts), seed=seed, starts=starts)
    ball_real, ball_dream = ball_xy(real[:, 1:]), ball_xy(dream)          # the game serves at index 0
    on_time = same = 0
    for w in range(len(starts)):
        if np.isnan(ball_dream[w, 0, 0]):
            continue
        on_time += 1
        same += direction(ball_dream[w], 0) == direction(ball_real[w], 0)
    misdrawn = (screen_checks(dream[:, 0], "pong")["no_opponent_paddle_shape"]
                & ~screen_checks(real[:, 1], "pong")["no_opponent_paddle_shape"])
    return {"serves": len(starts), "dream_serves_on_time": on_time, "of_which_in_the_games_direction": int(same),
            "computer_paddle_misdrawn_on_the_serve_frame": int(misdrawn.sum())}


def hidden_paddle_one_step(model, episodes: list, *, seed: int, max_frames: int | None = None) -> dict:
    """Part 3 of the module docstring (the first ``max_frames`` hidden frames): ``{place in the run:
    "shown/frames"}``, and all places together."""
    from training.evaluate import teacher_forced_rollout, true_runs

    ctx = model.dynamics_config.context_frames
    starts, places = [], []
    for e in episodes:
        for first, length in true_runs(np.isnan(paddle_y(e.frames, player=False))):
            for k in range(1, length):
                if first + k >= ctx:
                    starts.append((e, first + k - ctx))
                    places.append(k)
    if not starts:
        raise ValueError("the computer's paddle is never hidden for two frames in the held-out episodes")
    starts, places = starts[:max_frames], places[:max_frames]
    _, dream = teacher_forced_rollout(model, episodes, horizon=1, windows=len(starts), seed=seed, starts=starts)
    shown = ~np.isnan(paddle_y(dream[:, 0], player=False))
    places = np.array(places)
    by_place = {int(k): f"{int(shown[places == k].sum())}/{int((places == k).sum())}" for k in np.unique(places)}
    return {"frames": len(starts), "shown": int(shown.sum()), "by_place_in_the_run": by_place}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="a Pong dataset directory, for part 1")
    ap.add_argument("--checkpoint", help="also class a bundle's horizon-64 ball errors (part 2)")
    ap.add_argument("--heldout", help="part 2's episodes (default: the evaluation's, training/heldout/pong)")
    ap.add_argument("--windows", type=int, default=128, help="teacher-forced windows (default 128, as the evaluation)")
    ap.add_argument("--seed", type=int, default=0, help="window and noise seed (default 0, as the evaluation)")
    ap.add_argument("--max-serves", type=int, help="serves predicted from the game's frames (default: all)")
    ap.add_argument("--max-hidden", type=int, help="hidden-paddle frames predicted in part 3 (default: all)")
    args = ap.parse_args()
    for name in ("windows", "max_serves", "max_hidden"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    dataset = EpisodeDataset(args.dataset)
    if dataset.metadata["game"] != "pong":
        ap.error(f"{args.dataset} holds {dataset.metadata['game']!r} episodes, not pong")
    for key, value in serve_predictability(dataset).items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    if args.checkpoint:
        from training.evaluate import EvalConfig, ensure_heldout
        from worldmodel.bundle import load

        model = load(args.checkpoint)
        model.eval()
        episodes = ensure_heldout(EvalConfig(checkpoint=args.checkpoint, heldout=args.heldout), model.game)
        result = horizon_64_misses(model, episodes, windows=args.windows, seed=args.seed)
        classes = result.pop("classes")
        print(", ".join(f"{k} {v}" for k, v in result.items()))
        for name, count in classes.items():
            print(f"{count:4d}  {name}")
        serves = serves_from_the_game(model, episodes, seed=args.seed, max_serves=args.max_serves)
        print(", ".join(f"{k} {v}" for k, v in serves.items()))
        hidden = hidden_paddle_one_step(model, episodes, seed=args.seed, max_frames=args.max_hidden)
        print(f"computer's paddle hidden in the game, one step from its frames: shown by the dream on "
              f"{hidden['shown']} of {hidden['frames']} frames; by place in the run: {hidden['by_place_in_the_run']}")


if __name__ == "__main__":
    main()
