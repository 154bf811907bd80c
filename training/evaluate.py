"""Dream fidelity: where the dream departs from the game, measured on held-out real episodes.

Run it with Hydra (see ``training/conf/evaluate.yaml``)::

    python -m training.evaluate checkpoint=pong                      # the shipped Pong model
    python -m training.evaluate checkpoint=runs/pong-cpu/bundle long_run_steps=1000
    python -m training.evaluate checkpoint=runs/X/bundle 'parts=[long_run]' long_run_steps=1500 long_run_dreams=8 seed=1

It writes ``report.json``, ``drift.png``, ``long_run.png``, ``real_vs_dream.gif`` and, when
free play broke a frame beyond real play, ``breakdowns.png`` (the first breakdowns, each
with the frames that led to it) into ``out``. The figures:

- **Teacher-forced rollouts**: prime with real frames, generate with the real recorded
  actions, compare with the real frames at horizons 1, 4, 16, 64: PSNR and SSIM on whole
  frames, PSNR on moving pixels (pixels where the real frame differs from the previous real
  frame), and for Pong and Breakout the error of the ball's and the player paddle's positions
  read out by colour (:mod:`envs.readout`). A copy-the-last-real-frame baseline beside each.
- **One step ahead**: every held-out frame predicted from the real frames before it, and the
  share the screen checks of the long run (below) find broken where the real frame is not:
  what the model cannot draw even from the game's own past, apart from what builds up in
  free play.
- **Controllability**: Genie's ΔPSNR (Bruce et al. 2024, "Genie: Generative Interactive
  Environments", section 3.1): PSNR of the dream with the real actions minus PSNR of the
  dream with uniformly random actions, same windows and noise seed, at t = 1 and t = 4.
- **Paddle control** (Pong, Breakout): from the same start, hold Up or Down (Left or Right)
  for 8 steps; the paddle must end clearly higher (further left) after Up (Left).
- **Tokenizer**: reconstruction PSNR (whole, moving pixels) and, for games with a read-out,
  the ball read out of reconstructions.
- **Latent actions** (bundles with a LAM): codebook usage, code x action confusion, and the
  accuracy of a code -> action dictionary fitted on 200 labelled steps (Genie's recipe).
- **Reward and end model** on real transitions: precision and recall of non-zero rewards
  (sign included) and of game-over transitions
  (:func:`worldmodel.reward_model.game_over_targets`).
- **Long run**: free play with random held actions; per frame, the total-variation distance
  of its colour histogram to the held-out frames' mean histogram, the share of broken
  frames (blank, saturated, or for Pong and Breakout a part of the screen missing), the
  share broken beyond what real play shows (a check failed that real frames fail in under 1%
  of cases: Pong's opponent paddle, hidden over the top wall after each point, may be absent,
  but not drawn twice, and not absent for longer than in any held-out episode), each check's failures, and the share of frames with a ball, each beside the same
  figure on real held-out frames.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recorders.dataset import Episode, frames_since_reward
from worldmodel.bundle import ModelBundle
from worldmodel.simulator import Simulator

#: Error charged to a position read-out when the object is visible in only one of the two
#: frames (real, dream): the diagonal of a 64x64 frame, so a missing object counts as a miss.
MISSING_PX = float(np.hypot(64, 64))


# -- per-frame measures ------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB between uint8 images ``(..., H, W, 3)``, optionally over ``mask (..., H, W)`` pixels only.

    Returns NaN when the mask selects nothing; caps at 100 dB for identical images.
    """
    err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        mse = err[mask].mean()
    else:
        mse = err.mean()
    return float(100.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two ``(H, W, 3)`` uint8 images (Wang et al. 2004), by scikit-image."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def moving_pixels(real: np.ndarray, prev: np.ndarray, threshold: int = 8) -> np.ndarray:
    """``(..., H, W)`` bool: pixels whose colour changed by more than ``threshold`` in any channel."""
    return (np.abs(real.astype(np.int16) - prev.astype(np.int16)).max(axis=-1) > threshold)


def position_error(real: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """Distance in pixels between read-out positions ``(..., k)`` (NaN = not visible).

    Both visible: the Euclidean distance. Visible in one only: :data:`MISSING_PX`. Visible in
    neither: NaN (nothing to compare).
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim == 1:
        real, fake = real[:, None], fake[:, None]
    seen_r, seen_f = ~np.isnan(real).any(-1), ~np.isnan(fake).any(-1)
    dist = np.sqrt(np.nansum((real - fake) ** 2, axis=-1))
    return np.where(seen_r & seen_f, dist, np.where(seen_r ^ seen_f, MISSING_PX, np.nan))


def colour_histogram(frames: np.ndarray, bins: int = 8) -> np.ndarray:
    """``(..., H, W, 3)`` uint8 -> ``(..., bins**3)`` normalised joint RGB histograms."""
    q = (frames.astype(np.int64) * bins) // 256
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    flat = idx.reshape(-1, idx.shape[-2] * idx.shape[-1])
    hist = np.stack([np.bincount(row, minlength=bins ** 3) for row in flat]).astype(np.float64)
    return (hist / hist.sum(-1, keepdims=True)).reshape(*frames.shape[:-3], bins ** 3)


def saturated_share(frames: np.ndarray) -> np.ndarray:
    """``(..., H, W, 3)`` uint8 -> ``(...)`` share of pixels near black or white (luminance <= 5 or >= 250)."""
    lum = frames.mean(-1)
    return ((lum <= 5) | (lum >= 250)).mean(axis=(-2, -1))


def screen_checks(frames: np.ndarray, game: str, *, saturated_limit: float = 0.5) -> dict[str, np.ndarray]:
    """Which checks of a sane screen each frame fails.

    Args:
        frames: ``(..., H, W, 3)`` uint8.
        game: the game's name; a game with a read-out (Pong, Breakout) adds a check per screen part.
        saturated_limit: the share of near-black or near-white pixels a frame may have; a game
            on a black background (Breakout) needs the limit of its real frames
            (:func:`saturated_limit_of`).

    Returns:
        ``{"blank", "saturated", "no_<part>" ...}`` -> ``(...)`` bool, True where the frame fails:
        blank is a colour range under 16 levels, saturated more than ``saturated_limit`` of the
        pixels near black or white, ``no_<part>`` a check of the game's ``screen_parts``
        (:mod:`envs.readout`) failed: a part not shown, or (``no_<part>_shape``) shown but
        misdrawn, such as a paddle smeared along its column or drawn twice.
    """
    f = frames.astype(np.int16)
    checks = {"blank": (f.max(axis=(-3, -2)) - f.min(axis=(-3, -2))).max(-1) < 16,
              "saturated": saturated_share(frames) > saturated_limit}
    readout = _readout(game)
    if readout is not None:
        checks.update({f"no_{part}": ~ok for part, ok in readout.screen_parts(frames).items()})
    return checks


def broken_frames(frames: np.ndarray, game: str, *, saturated_limit: float = 0.5) -> np.ndarray:
    """``(..., H, W, 3)`` uint8 -> ``(...)`` bool: the frame fails any of :func:`screen_checks`
    (blank, saturated, or for a game with a read-out a part of the screen missing or misdrawn)."""
    return failed_any(screen_checks(frames, game, saturated_limit=saturated_limit))


def failed_any(checks: dict[str, np.ndarray], *, excused: tuple[str, ...] | list[str] = ()) -> np.ndarray:
    """``(...)`` bool: a frame failed one of :func:`screen_checks`' ``checks`` that is not ``excused``."""
    counted = [v for k, v in checks.items() if k not in excused]
    if not counted:
        return np.zeros(next(iter(checks.values())).shape, bool)
    return np.logical_or.reduce(counted)


def checks_real_play_fails(real_checks: dict[str, np.ndarray], *, share: float = 0.01) -> list[str]:
    """The checks that real frames themselves fail in ``share`` (1%) of the frames or more.

    Real play hides some parts of the screen for a while: Pong's opponent paddle leaves the
    field over the top wall after each point, in 10.8% of the held-out random play's frames.
    A dream frame without it is then no more broken than the game's own. ``real_checks`` is
    :func:`screen_checks` of real frames.
    """
    return sorted(k for k, v in real_checks.items() if float(np.mean(v)) >= share)


def saturated_limit_of(real: np.ndarray) -> float:
    """The saturation limit for a game's frames: half the pixels, or for a game whose real frames
    are mostly black or white, 5 points above the largest share in ``real (N, H, W, 3)``."""
    return max(0.5, float(saturated_share(real).max()) + 0.05)


def _readout(game: str):
    """The game's :class:`envs.readout.GameReadout`, or None."""
    from envs.readout import readout_for

    return readout_for(game)


def ball_visible(frames: np.ndarray, game: str) -> np.ndarray:
    """``(..., H, W, 3)`` -> ``(...)`` bool, a ball is read out of the frame (a game with a read-out).

    Raises:
        ValueError: ``game`` has no read-out.
    """
    readout = _readout(game)
    if readout is None:
        raise ValueError(f"there is no ball read-out for {game!r}")
    return ~np.isnan(readout.ball_xy(frames)[..., 0])


# -- windows and rollouts ---------------------------------------------------------------------
def window_starts(episodes: list[Episode], length: int, count: int, seed: int) -> list[tuple[Episode, int]]:
    """``count`` random ``(episode, first frame)`` windows of ``length`` frames, reproducible by seed.

    Raises:
        ValueError: no episode has ``length`` frames.
    """
    rng = np.random.default_rng(seed)
    usable = [e for e in episodes if len(e.frames) >= length]
    if not usable:
        raise ValueError(f"no held-out episode has the {length} frames an evaluation window needs")
    out = []
    for _ in range(count):
        e = usable[rng.integers(len(usable))]
        out.append((e, int(rng.integers(len(e.frames) - length + 1))))
    return out


def sample_windows(episodes: list[Episode], length: int, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` random ``(frames (length, H, W, 3), actions (length-1,))`` windows (:func:`window_starts`)."""
    return [(e.frames[s:s + length], e.actions[s:s + length - 1]) for e, s in window_starts(episodes, length, count, seed)]


def window_conditioning(model: ModelBundle, frames: np.ndarray, actions: np.ndarray, *,
                        keymap: bool = False) -> np.ndarray:
    """What a dream of real windows is conditioned on: the recorded actions, or for a
    ``"latent"`` bundle the LAM's codes of the frames (Genie's set-up), or with ``keymap`` the
    recorded actions through the bundle's key-to-code map (what a player's keys would give).

    Args:
        frames: ``(W, T, H, W, 3)`` uint8 windows.
        actions: ``(W, T-1)`` int64 recorded actions.

    Returns:
        ``(W, T-1)`` int64.

    Raises:
        ValueError: a latent bundle without a LAM (or, with ``keymap``, without a key-to-code map).
    """
    if model.conditioning != "latent":
        return actions
    if keymap:
        if model.action_codes is None:
            raise ValueError(f"the {model.game!r} bundle has no key-to-code map (action_codes)")
        return model.to_conditioning(actions)
    from worldmodel.latent_actions import infer_latent_actions

    return infer_latent_actions(model, frames)


def teacher_forced_rollout(model: ModelBundle, episodes: list[Episode], *, horizon: int, windows: int, seed: int,
                           sim_options: dict | None = None, prime: int | None = None,
                           random_actions: bool = False, keymap: bool = False,
                           starts: list[tuple[Episode, int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Prime with ``prime`` real frames (default ``context_frames``; the Simulator keeps the
    newest that fit its window), then step ``horizon`` times with the recorded actions (for
    a ``"latent"`` bundle, what :func:`window_conditioning` makes of them). The primed
    frames' rewards and reward clock are the episode's (read by a model with a reward clock;
    from then on the dream's reward model keeps it).

    Args:
        sim_options: keyword arguments of the :class:`~worldmodel.simulator.Simulator`
            (``sampling_steps``, ``precision``, ...); every function here that dreams takes them.
        random_actions: step with uniformly random actions (or codes) instead (same windows
            and noise seed), for Genie's ΔPSNR.
        keymap: a latent bundle steps with the recorded actions through its key-to-code map,
            not the LAM's codes of the frames.
        starts: the windows' ``(episode, first frame)`` pairs, each with ``prime + horizon``
            frames (default: ``windows`` random ones, :func:`window_starts`).

    Returns:
        ``(real, dream)`` uint8 arrays, aligned: ``dream[:, k]`` is the model's frame for
        ``real[:, k + 1]``; ``real (W, horizon + 1, H, W, 3)`` starts with the last primed frame.
    """
    ctx = model.dynamics_config.context_frames if prime is None else prime
    starts = window_starts(episodes, ctx + horizon, windows, seed) if starts is None else starts
    frames = np.stack([e.frames[s:s + ctx + horizon] for e, s in starts])   # (W, ctx+H, h, w, 3)
    actions = np.stack([e.actions[s:s + ctx + horizon - 1] for e, s in starts])
    actions = window_conditioning(model, frames, actions, keymap=keymap)     # (W, ctx+H-1)
    # The reward clock where the windows begin, and the rewards inside the primed frames.
    clocks = {id(e): frames_since_reward(e.rewards) for e, _ in starts}
    since = np.array([clocks[id(e)][s] for e, s in starts])
    rewards = np.stack([e.rewards[s:s + ctx - 1] for e, s in starts])
    if random_actions:
        rng = np.random.default_rng(seed + 1)
        actions = actions.copy()
        actions[:, ctx - 1:] = rng.integers(model.dynamics_config.num_actions, size=actions[:, ctx - 1:].shape)
    sim = Simulator(model, batch_size=len(starts), seed=seed, **(sim_options or {}))
    sim.reset(frames[:, :ctx], actions[:, :ctx - 1], rewards=rewards, since_reward=since)
    dream = np.stack([sim.step(actions[:, ctx - 1 + k])[0] for k in range(horizon)], axis=1)
    return frames[:, ctx - 1:], dream


def one_step_structure(model: ModelBundle, episodes: list[Episode], *, batch: int = 64, seed: int = 0,
                       sim_options: dict | None = None, max_examples: int = 8) -> dict:
    """Every held-out frame predicted one step ahead from the real frames before it
    (teacher-forced, horizon 1), checked by :func:`screen_checks` beside the real frame.

    Free play's broken frames mix two causes: frames the model cannot draw even from the
    game's own past, and errors that build up over a dream. This counts the first kind on
    every transition (a rare event such as Pong's serve, about one frame in 37, is in every
    one of its occurrences), a frame broken where the game's own frame is not.

    Args:
        batch: windows dreamed together.
        max_examples: at most this many ``(episode, frame, [check, ...])`` examples are kept.

    Returns:
        ``{"transitions": int, "broken_where_real_is_not": share, "failed_where_real_passes":
        {check: share}, "examples": [{"episode": i, "frame": t, "failed": [...]}, ...]}``:
        shares of the transitions, ``frame`` the index of the predicted frame in its episode.
    """
    ctx = model.dynamics_config.context_frames
    index = {id(e): i for i, e in enumerate(episodes)}
    starts = [(e, s) for e in episodes for s in range(len(e.frames) - ctx)]
    if not starts:
        raise ValueError(f"no held-out episode has the {ctx + 1} frames a one-step window needs")
    limit = saturated_limit_of(np.concatenate([e.frames for e in episodes]))
    failed: dict[str, int] = {}
    broken, examples = 0, []
    for i in range(0, len(starts), batch):
        chunk = starts[i:i + batch]
        real, dream = teacher_forced_rollout(model, episodes, horizon=1, windows=len(chunk), seed=seed,
                                             sim_options=sim_options, starts=chunk)
        real_checks = screen_checks(real[:, 1], model.game, saturated_limit=limit)
        dream_checks = screen_checks(dream[:, 0], model.game, saturated_limit=limit)
        new = {k: dream_checks[k] & ~real_checks[k] for k in dream_checks}      # (W,) each
        for k, v in new.items():
            failed[k] = failed.get(k, 0) + int(v.sum())
        hit = failed_any(new)
        broken += int(hit.sum())
        for j in np.nonzero(hit)[0][:max(0, max_examples - len(examples))]:
            e, s = chunk[j]
            examples.append({"episode": index[id(e)], "frame": s + ctx, "failed": [k for k, v in new.items() if v[j]]})
    n = len(starts)
    return {"transitions": n, "broken_where_real_is_not": broken / n,
            "failed_where_real_passes": {k: v / n for k, v in failed.items()}, "examples": examples}


def rollout_curves(real_all: np.ndarray, dream: np.ndarray, game: str, *, with_ssim: bool = True) -> dict:
    """Per-horizon figures of an aligned teacher-forced rollout (see :func:`teacher_forced_rollout`).

    Returns:
        ``{name: (horizon,) float array}``: ``psnr``, ``psnr_moving``, ``ssim`` and their
        ``copy_last_`` baselines; for a game with a read-out (Pong, Breakout) also
        ``ball_error_px`` and ``paddle_error_px`` (medians over windows, :func:`position_error`),
        ``ball_within_1px`` / ``ball_within_3px`` (of the windows with a ball in the real or the
        dreamt frame, the share whose ball is within 1 / 3 px; NaN where neither shows one)
        and ``ball_visible_dream`` / ``ball_visible_real`` (shares of windows). The ball's
        error is bimodal (a ball on its path, or on another path after a serve or a miss), so
        where about half the windows are on either side the median jumps between the modes
        from one draw of windows to the next; the shares within 1 and 3 px do not.
    """
    horizon = dream.shape[1]
    copy = real_all[:, 0]
    readout = _readout(game)
    out: dict[str, list[float]] = {}

    def add(name, value):
        out.setdefault(name, []).append(float(value))

    for k in range(horizon):
        real, prev, fake = real_all[:, k + 1], real_all[:, k], dream[:, k]
        mask = moving_pixels(real, prev)
        for tag, pred in (("", fake), ("copy_last_", copy)):
            add(tag + "psnr", np.mean([psnr(r, f) for r, f in zip(real, pred)]))
            with np.errstate(all="ignore"):
                add(tag + "psnr_moving", np.nanmean([psnr(r, f, m) for r, f, m in zip(real, pred, mask)]))
            if with_ssim:
                add(tag + "ssim", np.mean([ssim(r, f) for r, f in zip(real, pred)]))
        if readout is not None:
            ball_real, ball_fake = readout.ball_xy(real), readout.ball_xy(fake)
            ball_err = position_error(ball_real, ball_fake)                      # (W,), NaN: no ball in either
            compared = ~np.isnan(ball_err)
            with np.errstate(all="ignore"):
                add("ball_error_px", np.nanmedian(ball_err))
                for px in (1, 3):
                    add(f"ball_within_{px}px", (ball_err[compared] <= px).mean() if compared.any() else np.nan)
                add("paddle_error_px", np.nanmedian(position_error(readout.paddle(real), readout.paddle(fake))))
            add("ball_visible_real", np.isfinite(ball_real[..., 0]).mean())
            add("ball_visible_dream", np.isfinite(ball_fake[..., 0]).mean())
    return {k: np.asarray(v) for k, v in out.items()}


def teacher_forced(model: ModelBundle, episodes: list[Episode], *, horizons=(1, 4, 16), windows: int = 32,
                   seed: int = 0, sim_options: dict | None = None, with_ssim: bool = False,
                   curves: dict | None = None) -> dict:
    """Teacher-forced rollout figures at the given horizons.

    Args:
        curves: if given, filled with the full per-horizon curves (:func:`rollout_curves`).

    Returns:
        ``{figure: {h: value}, ..., "windows": n}`` with the figures of :func:`rollout_curves`.
    """
    real_all, dream = teacher_forced_rollout(model, episodes, horizon=max(horizons), windows=windows, seed=seed,
                                             sim_options=sim_options)
    all_curves = rollout_curves(real_all, dream, model.game, with_ssim=with_ssim)
    if curves is not None:
        curves.update(all_curves)
    result: dict = {name: {h: _finite(c[h - 1]) for h in horizons} for name, c in all_curves.items()}
    result["windows"] = len(real_all)
    return result


def controllability(model: ModelBundle, episodes: list[Episode], *, horizons=(1, 4), windows: int = 32,
                    seed: int = 0, sim_options: dict | None = None) -> dict:
    """Genie's ΔPSNR: PSNR(real, dream with real actions) - PSNR(real, dream with random actions).

    Both dreams start from the same windows with the same noise seed; positive values mean the
    actions steer the dream towards the real frames. For a ``"latent"`` bundle the real
    actions are the LAM's codes of the real frames (Genie's definition), and with a key-to-code
    map also the recorded actions through it (``delta_psnr_keymap``: control by the game's keys).

    Returns:
        ``{"delta_psnr": {t: dB}, "psnr_real_actions": {t: dB}, "psnr_random_actions": {t: dB}}``,
        plus ``"delta_psnr_keymap"`` and ``"psnr_keymap_actions"`` for a latent bundle with a map.
    """
    h = max(horizons)
    run = lambda **kw: teacher_forced_rollout(model, episodes, horizon=h, windows=windows, seed=seed,  # noqa: E731
                                              sim_options=sim_options, **kw)
    real, with_real = run()
    dreams = {"real": with_real, "random": run(random_actions=True)[1]}
    if model.conditioning == "latent" and model.action_codes is not None:
        dreams["keymap"] = run(keymap=True)[1]
    out: dict = {}
    for t in horizons:
        score = {k: float(np.mean([psnr(r, f) for r, f in zip(real[:, t], d[:, t - 1])])) for k, d in dreams.items()}
        for k, v in score.items():
            out.setdefault(f"psnr_{k}_actions", {})[t] = v
        out.setdefault("delta_psnr", {})[t] = score["real"] - score["random"]
        if "keymap" in score:
            out.setdefault("delta_psnr_keymap", {})[t] = score["keymap"] - score["random"]
    return out


PADDLE_STARTS = 16
"""Start windows of :func:`paddle_control` in the evaluation command."""


def paddle_control(model: ModelBundle, *, starts: int = PADDLE_STARTS, hold: int = 8, seed: int = 0, margin: float = 2.0,
                   sim_options: dict | None = None) -> dict:
    """Does holding the key that moves the paddle towards lower positions (Pong: Up, to a
    smaller row; Breakout: Left, to a smaller column) leave it lower than holding the other?

    For each start window of the bundle (cycled up to ``starts``), two dreams with the same
    noise seed hold one action or the other (:class:`envs.readout.GameReadout`'s
    ``towards_lower`` and ``towards_higher``) for ``hold`` steps. A start passes when the
    paddle's position after the first is at least ``margin`` pixels below its position after
    the second and the paddle is still drawn as a paddle in both (the read-out's
    ``paddle_is_bar``): a paddle smeared along its track also has a position, but it is no
    longer under control.

    Returns:
        ``{"pass_rate": share of starts that pass, "moved_rate": share whose gap alone
        passes, "intact_rate": share where the paddle is a paddle after both holds,
        "mean_gap_px": mean (higher - lower) position gap, "starts": n}``; starts where the
        paddle is not visible count as failures.

    Raises:
        ValueError: the bundle's game has no read-out (:func:`envs.readout.readout_for`).
    """
    readout = _readout(model.game)
    if readout is None:
        raise ValueError(f"paddle control needs a paddle read-out; there is none for {model.game!r}")
    k = len(model.start_frames)
    idx = np.arange(starts) % k
    frames = model.start_frames.numpy()[idx]
    actions = model.start_actions.numpy()[idx]
    where, intact = {}, np.ones(starts, bool)
    for name, action in (("lower", readout.towards_lower), ("higher", readout.towards_higher)):
        sim = Simulator(model, batch_size=starts, seed=seed, **(sim_options or {}))
        sim.reset(frames, actions)
        for _ in range(hold):
            last, _, _ = sim.step(model.to_conditioning(np.full(starts, action)))
        where[name] = readout.paddle(last)
        intact &= readout.paddle_is_bar(last)
    gap = where["higher"] - where["lower"]
    moved = np.nan_to_num(gap, nan=-np.inf) >= margin
    with np.errstate(all="ignore"):
        mean_gap = float(np.nanmean(gap))
    return {"pass_rate": float((moved & intact).mean()), "moved_rate": float(moved.mean()),
            "intact_rate": float(intact.mean()), "mean_gap_px": _finite(mean_gap), "starts": int(starts)}


def tokenizer_reconstruction(tokenizer, episodes: list[Episode], *, frames: int = 256, seed: int = 0,
                             game: str | None = None) -> dict:
    """Reconstruction figures of the tokenizer on held-out frames.

    Returns:
        ``{"psnr": dB, "psnr_moving": dB, "frames": n}`` (100 dB means lossless); for Pong
        also ``ball_error_px`` (median, :func:`position_error`) and ``ball_recall`` (share of
        real balls still read out of the reconstruction).
    """
    import torch

    from worldmodel.tokenizer import frames_to_tensor, tensor_to_frames

    pairs = sample_windows(episodes, 2, frames, seed)
    prev = np.stack([f[0] for f, _ in pairs])
    real = np.stack([f[1] for f, _ in pairs])
    device = next(iter(tokenizer.parameters()), torch.empty(0)).device
    with torch.inference_mode():
        x = frames_to_tensor(torch.as_tensor(real, device=device))[:, None]
        rec = tensor_to_frames(tokenizer.decode(tokenizer.encode(x)))[:, 0].cpu().numpy()
    mask = moving_pixels(real, prev)
    with np.errstate(all="ignore"):
        out = {"psnr": float(np.mean([psnr(r, f) for r, f in zip(real, rec)])),
               "psnr_moving": float(np.nanmean([psnr(r, f, m) for r, f, m in zip(real, rec, mask)])),
               "frames": len(real)}
    readout = _readout(game)
    if readout is not None:
        ball_real, ball_rec = readout.ball_xy(real), readout.ball_xy(rec)
        err = position_error(ball_real, ball_rec)
        seen = np.isfinite(ball_real[..., 0])
        out["ball_error_px"] = _finite(np.nanmedian(err)) if (~np.isnan(err)).any() else None
        out["ball_recall"] = _finite((np.isfinite(ball_rec[..., 0]) & seen).sum() / max(seen.sum(), 1))
    return out


def reward_model_quality(model: ModelBundle, episodes: list[Episode], *, batch: int = 256) -> dict | None:
    """Precision and recall of the reward and end model on every real held-out transition.

    Each transition ``(x_t, a_t, x_{t+1})`` is scored from the real frames. A reward counts
    as found when its sign is right. The end flag is scored against the transitions into a
    finished game (:func:`worldmodel.reward_model.game_over_targets`: the recorded end, spread
    back over a still screen that precedes it), the targets the pipeline trains the end
    model on; ``end.true`` counts those transitions, not games.

    Returns:
        ``{"reward": {"precision", "recall", "true", "predicted"}, "end": {...}}`` (precision
        is None when nothing was predicted), or None for a bundle without a reward model.
    """
    import torch

    from worldmodel.reward_model import game_over_targets

    if model.reward_model is None:
        return None
    device = next(model.reward_model.parameters()).device
    true_r, pred_r, true_e, pred_e = [], [], [], []
    for e in episodes:
        over = game_over_targets(e.frames, e.terminated)
        for i in range(0, len(e.actions), batch):
            j = min(i + batch, len(e.actions))
            with torch.inference_mode():
                r, end = model.reward_model.predict(torch.as_tensor(e.frames[i:j], device=device),
                                                    torch.as_tensor(e.frames[i + 1:j + 1], device=device),
                                                    torch.as_tensor(e.actions[i:j], device=device))
            pred_r.append(r.cpu().numpy())
            pred_e.append(end.cpu().numpy())
            true_r.append(np.sign(e.rewards[i:j]))
            true_e.append(over[i:j])
    tr, pr = np.concatenate(true_r), np.concatenate(pred_r)
    te, pe = np.concatenate(true_e).astype(bool), np.concatenate(pred_e).astype(bool)
    hit_r = (pr != 0) & (pr == tr)
    return {"reward": _precision_recall(hit_r.sum(), (pr != 0).sum(), (tr != 0).sum()),
            "end": _precision_recall((pe & te).sum(), pe.sum(), te.sum())}


def _precision_recall(hits: int, predicted: int, true: int) -> dict:
    return {"precision": float(hits / predicted) if predicted else None,
            "recall": float(hits / true) if true else None, "true": int(true), "predicted": int(predicted)}


def latent_action_quality(model: ModelBundle, episodes: list[Episode], *, labelled_steps: int = 200,
                          seed: int = 0) -> dict:
    """How well the latent-action model's codes name the game's real actions (Genie's recipe).

    The LAM labels every held-out transition without seeing actions. Scored against the
    game's effective actions (:meth:`envs.games.GameSpec.effective_action_groups`; Pong: stay,
    up, down): codebook usage, the code x action confusion matrix, and the accuracy of a
    code -> action dictionary (each code's most frequent action) fitted on ``labelled_steps``
    random labelled transitions and scored on all the others.

    Returns:
        ``{"codes", "perplexity", "unused_codes", "actions", "confusion" (codes x actions counts),
        "dictionary", "accuracy", "majority_baseline", "labelled_steps", "scored_steps"}``.

    Raises:
        ValueError: the bundle has no LAM.
    """
    from worldmodel.latent_actions import infer_latent_actions

    if model.lam is None:
        raise ValueError(f"the {model.game!r} bundle has no latent-action model")
    names, group_of = model.game_spec.effective_action_groups()
    codes = np.concatenate([infer_latent_actions(model, e.frames) for e in episodes])
    truth = group_of[np.concatenate([e.actions for e in episodes])]
    return score_latent_actions(codes, truth, names, num_codes=model.lam_config.num_codes,
                                labelled_steps=labelled_steps, seed=seed)


def score_latent_actions(codes: np.ndarray, truth: np.ndarray, names: list[str], *, num_codes: int,
                         labelled_steps: int = 200, seed: int = 0) -> dict:
    """The scores of :func:`latent_action_quality` from ``codes (N,)`` and the true effective
    actions ``truth (N,)`` (int64 indices into ``names``) of the same transitions."""
    k = num_codes
    usage = np.bincount(codes, minlength=k) / len(codes)
    nz = usage[usage > 0]
    confusion = np.zeros((k, len(names)), np.int64)
    np.add.at(confusion, (codes, truth), 1)
    rng = np.random.default_rng(seed)
    fit = rng.choice(len(codes), size=min(labelled_steps, len(codes) // 2), replace=False)
    rest = np.setdiff1d(np.arange(len(codes)), fit)
    fit_conf = np.zeros_like(confusion)
    np.add.at(fit_conf, (codes[fit], truth[fit]), 1)
    majority = int(np.bincount(truth[fit], minlength=len(names)).argmax())
    dictionary = np.where(fit_conf.sum(1) > 0, fit_conf.argmax(1), majority)
    return {"codes": k, "perplexity": float(np.exp(-(nz * np.log(nz)).sum())), "unused_codes": int((usage == 0).sum()),
            "actions": names, "confusion": confusion.tolist(),
            "dictionary": {str(c): names[a] for c, a in enumerate(dictionary)},
            "accuracy": float((dictionary[codes[rest]] == truth[rest]).mean()),
            "majority_baseline": float((truth[rest] == majority).mean()),
            "labelled_steps": len(fit), "scored_steps": len(rest)}


def long_run(model: ModelBundle, episodes: list[Episode], *, steps: int = 10_000, dreams: int = 1, seed: int = 0,
             max_repeat: int = 8, progress: bool = True, sim_options: dict | None = None,
             examples: list | None = None, max_examples: int = 6, lead: int = 4) -> tuple[dict, dict]:
    """Free play for ``steps`` steps with random held actions, from the bundle's first start windows.

    Returns:
        ``(summary, series)``: the summary holds means over the run and over its last tenth
        beside the real held-out frames' figures, and the dream's rates of non-zero rewards
        and of game ends (:func:`count_onsets` of the end flags) per 1,000 steps beside the
        held-out episodes' rates (``rates``);
        ``series`` holds per-step ``(steps,)`` arrays, averaged over dreams: ``hist_distance``,
        ``broken`` (any of :func:`screen_checks` failed), ``broken_beyond_real`` (a check
        failed that real held-out frames fail in under 1% of cases, or one of the others, listed
        in the summary's ``checks_real_play_fails``, failed for more consecutive frames than it
        ever does in a held-out episode: Pong may hide the opponent's paddle after a point, not
        for the rest of the game), ``fails_<check>`` per check and, for a game with a read-out,
        ``ball_visible``. The summary's ``longest_run`` gives, per check real play fails, the
        longest run of failing frames in the dream and in the held-out episodes, and
        ``broken_beyond_real_per_dream`` the frames broken beyond real play in each dream (one
        dream can decide the mean: a dream that freezes into a broken screen breaks hundreds).

    Args:
        examples: if given, a list that receives up to ``max_examples`` breakdowns of the
            first dream, one per run of frames broken beyond real play: ``{"step": int,
            "failed": [check, ...], "frames": (min(lead, step + 1), H, W, 3) uint8}``, the
            broken frame last and the frames before it first (see
            :func:`training.plots.plot_breakdowns`).
        max_examples: at most this many breakdowns are kept.
        lead: frames kept per breakdown, the broken one included.

    Raises:
        ValueError: ``lead < 1`` or ``max_examples < 0``.
    """
    if lead < 1 or max_examples < 0:
        raise ValueError(f"need lead >= 1 and max_examples >= 0, got lead={lead!r}, max_examples={max_examples!r}")
    from collections import deque

    from tqdm import tqdm

    real = np.concatenate([e.frames for e in episodes])
    ref = colour_histogram(real).mean(0)
    limit = saturated_limit_of(real)

    with_ball = _readout(model.game) is not None
    every = max(1, len(real) // 2000)
    real_sample = real[::every]
    per_episode = [screen_checks(e.frames, model.game, saturated_limit=limit) for e in episodes]
    real_checks = {k: np.concatenate([c[k] for c in per_episode])[::every] for k in per_episode[0]}
    hidden_in_real = checks_real_play_fails(real_checks)
    longest_real = {k: max(longest_run(c[k]) for c in per_episode) for k in hidden_in_real}
    longest_dream = dict.fromkeys(hidden_in_real, 0)
    run_length = {k: np.zeros(dreams, np.int64) for k in hidden_in_real}     # the current run, per dream

    def measures(frames, checks, overlong=False):
        d = 0.5 * np.abs(colour_histogram(frames) - ref).sum(-1)
        beyond = failed_any(checks, excused=hidden_in_real) | overlong
        m = {"hist_distance": d, "broken": failed_any(checks).astype(np.float64),
             "broken_beyond_real": beyond.astype(np.float64)}
        m.update({f"fails_{k}": v.astype(np.float64) for k, v in checks.items()})
        if with_ball:
            m["ball_visible"] = ball_visible(frames, model.game).astype(np.float64)
        return m

    sim, policy = free_play(model, dreams=dreams, seed=seed, max_repeat=max_repeat, sim_options=sim_options)
    series: dict[str, list] = {}
    rewards, ends = 0, []
    beyond_per_dream = np.zeros(dreams, np.int64)
    recent: deque = deque(maxlen=lead)                     # the first dream's last frames
    was_broken = False
    for t in tqdm(range(steps), desc="long run", unit="step", disable=not progress, mininterval=2):
        frames, r, end = sim.step(policy(None))
        rewards = rewards + int((r != 0).sum())
        ends.append(end)
        checks = screen_checks(frames, model.game, saturated_limit=limit)
        for k in hidden_in_real:
            run_length[k] = np.where(checks[k], run_length[k] + 1, 0)
            longest_dream[k] = max(longest_dream[k], int(run_length[k].max()))
        overlong = {k: run_length[k] > longest_real[k] for k in hidden_in_real}     # (dreams,) each
        m = measures(frames, checks, failed_any(overlong) if overlong else False)
        beyond_per_dream += m["broken_beyond_real"].astype(np.int64)
        for k, v in m.items():
            series.setdefault(k, []).append(float(v.mean()))
        if examples is not None and len(examples) < max_examples:
            recent.append(frames[0])
            broken = bool(m["broken_beyond_real"][0])
            if broken and not was_broken:
                failed = [k for k, v in checks.items() if v[0] and (k not in overlong or overlong[k][0])]
                examples.append({"step": t, "failed": failed, "frames": np.stack(recent)})
            was_broken = broken
    real_steps = sum(len(e.actions) for e in episodes)
    per_k = lambda n, total: 1000.0 * n / total  # noqa: E731
    arrays = {k: np.asarray(v) for k, v in series.items()}
    real_m = {k: float(v.mean()) for k, v in measures(real_sample, real_checks).items()}
    tail = max(1, steps // 10)
    summary = {"steps": steps, "dreams": dreams,
               "dream_mean": {k: float(v.mean()) for k, v in arrays.items()},
               "dream_last_tenth": {k: float(v[-tail:].mean()) for k, v in arrays.items()},
               "real_mean": real_m,
               "dream_broken_frames": int(round(arrays["broken"].sum() * dreams)),
               "broken_beyond_real_per_dream": beyond_per_dream.tolist(),
               "checks_real_play_fails": hidden_in_real,
               "longest_run": {k: {"dream": longest_dream[k], "real": longest_real[k]} for k in hidden_in_real},
               "rates": {"dream_rewards_per_1000": per_k(rewards, steps * dreams),
                         "real_rewards_per_1000": per_k(sum(int((e.rewards != 0).sum()) for e in episodes), real_steps),
                         "dream_ends_per_1000": per_k(count_onsets(np.asarray(ends)), steps * dreams),
                         "real_ends_per_1000": per_k(sum(int(e.terminated.sum()) for e in episodes), real_steps)}}
    return summary, arrays


def true_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(T,)`` bool -> ``(first index, length)`` of each run of consecutive True, in order."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(flags, bool).astype(np.int8), [0]])))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def longest_run(flags: np.ndarray) -> int:
    """``(T,)`` bool -> the length of its longest run of consecutive True (0 if none)."""
    return max((length for _, length in true_runs(flags)), default=0)


def free_play(model: ModelBundle, *, dreams: int = 1, seed: int = 0, max_repeat: int = 8,
              sim_options: dict | None = None):
    """The long run's dreams: a ``Simulator`` of ``dreams`` dreams reset on the bundle's start
    windows (cycled), and its policy of random actions held up to ``max_repeat`` steps
    (:class:`recorders.policies.RandomRepeatPolicy`, called with ``None``).

    Returns:
        ``(simulator, policy)``.
    """
    from recorders.policies import RandomRepeatPolicy

    idx = np.arange(dreams) % len(model.start_frames)
    sim = Simulator(model, batch_size=dreams, seed=seed, **(sim_options or {}))
    sim.reset(model.start_frames.numpy()[idx], model.start_actions.numpy()[idx])
    return sim, RandomRepeatPolicy(dreams, model.dynamics_config.num_actions, max_repeat=max_repeat, seed=seed)


def onset_mask(flags: np.ndarray) -> np.ndarray:
    """``(steps, ...)`` bool flags -> the same shape, True where a run of consecutive True starts."""
    flags = np.asarray(flags, bool)
    return flags & ~np.concatenate([np.zeros_like(flags[:1]), flags[:-1]])


def count_onsets(flags: np.ndarray) -> int:
    """``(steps, dreams)`` bool flags -> how many runs of consecutive True there are, per dream
    summed: a game over flagged on each step of its still screen is one game end."""
    return int(onset_mask(flags).sum())


def write_video(model: ModelBundle, episodes: list[Episode], path: str | Path, *, windows: int = 4, horizon: int = 32,
                seed: int = 0, scale: int = 4, sim_options: dict | None = None) -> Path:
    """A GIF of ``real | dream | |difference|`` rows, one row per window, teacher-forced."""
    import imageio.v3 as iio

    real_all, dream = teacher_forced_rollout(model, episodes, horizon=horizon, windows=windows, seed=seed + 1,
                                             sim_options=sim_options)
    video = []
    for k in range(horizon):
        real, fake = real_all[:, k + 1], dream[:, k]
        diff = np.abs(real.astype(np.int16) - fake.astype(np.int16)).astype(np.uint8)
        rows = [np.concatenate([r, f, d], axis=1) for r, f, d in zip(real, fake, diff)]
        video.append(np.concatenate(rows, axis=0).repeat(scale, 0).repeat(scale, 1))
    path = Path(path)
    iio.imwrite(path, np.stack(video), duration=1000 / model.fps, loop=0)
    return path


def _finite(x) -> float | None:
    """A float for JSON, None for NaN."""
    x = float(x)
    return None if np.isnan(x) else x


# -- the command ------------------------------------------------------------------------------
PARTS = ("tokenizer", "teacher_forced", "one_step", "controllability", "latent_actions", "reward_model",
         "long_run", "video")
"""The evaluation's measurements, in the order it runs them (:attr:`EvalConfig.parts`)."""


@dataclass
class EvalConfig:
    """What ``python -m training.evaluate`` measures (the Hydra config maps onto it).

    Attributes:
        checkpoint: a shipped name (``pong``) or a bundle directory.
        heldout: held-out dataset; recorded if missing (default: the set shipped for the game
            in ``training/heldout/<game>``, Pong and Breakout, else ``data/<game>-eval``).
        record_episodes: episodes recorded when ``heldout`` is missing: random play with
            actions held up to 16 steps and seeds from 200,000, a policy and seeds the
            training sets do not use.
        out: report directory (default ``runs/eval-<game>``).
        windows: teacher-forced windows (also the ΔPSNR windows). 128 by default: a ball
            seen in only one of the two frames counts as a 90.5 px miss, and with 32 windows
            a few such misses moved the ball's median error by many pixels.
        horizons: horizons reported in the table (the curves go up to the largest).
        control_horizons: ΔPSNR horizons.
        long_run_steps: free-play steps (0 skips the long run).
        long_run_dreams: dreams stepped together in the long run, each ``long_run_steps`` long.
            4 by default: one dream's share of broken frames is noisy (Pong's shipped model,
            session 27: 10.0% and 11.1% in one dream on two machines, 8.4% with another seed,
            11.5% over 4 dreams), and two models 2x apart over 4 dreams came out 10.0% and 10.8%
            in one.
        video_windows: rows of the real | dream | difference video.
        sampling_steps: denoising steps (default: the bundle's).
        temperature: colour sampling temperature (default: the bundle's; see
            :attr:`worldmodel.config.SamplerConfig.temperature`).
        event_temperature: with a model with event codes, the temperature each frame's code is
            drawn from the prior at (default: the bundle's; see
            :attr:`worldmodel.config.SamplerConfig.event_temperature`).
        precision: the Simulator's ``precision`` (``auto``, ``float32``, ``bfloat16``).
        backend: the Simulator's ``backend``. ``torch`` by default, so that figures do not
            depend on whether an ONNX graph happens to be exported (``auto`` picks per batch
            size; onnx and torch frames differ by rounding, which free play amplifies).
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds window choice, sampling noise and the random actions.
        parts: the measurements to run, a subset of :data:`PARTS` (all by default); e.g.
            ``parts=[long_run] long_run_steps=1500 long_run_dreams=8 seed=1`` checks a
            candidate's free play alone on dreams the full evaluation does not play, in minutes.
            ``controllability`` includes paddle control; ``teacher_forced`` writes the drift plot.
        progress: progress bars.
    """

    checkpoint: str = "pong"
    heldout: str | None = None
    record_episodes: int = 6
    out: str | None = None
    windows: int = 128
    horizons: tuple[int, ...] = (1, 4, 16, 64)
    control_horizons: tuple[int, ...] = (1, 4)
    long_run_steps: int = 10_000
    long_run_dreams: int = 4
    video_windows: int = 4
    sampling_steps: int | None = None
    temperature: float | None = None
    event_temperature: float | None = None
    precision: str = "auto"
    backend: str = "torch"
    device: str = "auto"
    seed: int = 0
    parts: tuple[str, ...] = PARTS
    progress: bool = True

    def __post_init__(self):
        from worldmodel.simulator import BACKENDS

        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; available: {BACKENDS}")
        self.horizons, self.control_horizons = tuple(self.horizons), tuple(self.control_horizons)
        self.parts = tuple(self.parts)
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown or not self.parts:
            raise ValueError(f"unknown parts {unknown!r}; available: {PARTS}" if unknown
                             else f"parts must name at least one of {PARTS}")
        for name in ("windows", "record_episodes", "long_run_dreams", "video_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.long_run_steps < 0:
            raise ValueError(f"long_run_steps must be >= 0, got {self.long_run_steps!r}")
        for name in ("horizons", "control_horizons"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be non-empty positive integers, got {getattr(self, name)!r}")


def _simulator_choice(model: ModelBundle, sim_options: dict, batch_sizes: tuple[int, ...]) -> dict:
    """The backend and precision the evaluation's Simulators run with, by batch size
    (``backend="auto"`` may pick differently for one dream and for many)."""
    from worldmodel.simulator import resolve_backend, resolve_event_temperature, resolve_precision, resolve_temperature

    device = next(model.dynamics.parameters()).device
    temperature = resolve_temperature(model, sim_options.get("temperature"))
    backends = {b: resolve_backend(model, b, sim_options["backend"], sim_options["precision"], temperature=temperature)
                for b in sorted(set(batch_sizes))}
    events = ({"event_temperature": resolve_event_temperature(model, sim_options.get("event_temperature"))}
              if model.dynamics_config.event_codes else {})
    return {"backend": backends, "temperature": temperature, **events,
            "precision": {b: resolve_precision(sim_options["precision"], device, k) for b, k in backends.items()}}


SHIPPED_HELDOUT = Path(__file__).parent / "heldout"
"""Held-out sets shipped with the package, one directory per game: the shipped checkpoints'
figures are measured on them, so they do not depend on the versions of ale-py, Gymnasium or
NumPy that would record the set again (``training/heldout/README.md``)."""


def heldout_path(cfg: EvalConfig, game: str) -> Path:
    """Where the evaluation's held-out episodes are: ``cfg.heldout``, else the set shipped for
    ``game`` (:data:`SHIPPED_HELDOUT`), else ``data/<game>-eval``."""
    if cfg.heldout:
        return Path(cfg.heldout)
    shipped = SHIPPED_HELDOUT / game
    return shipped if (shipped / "metadata.json").exists() else Path(f"data/{game}-eval")


def _shown_path(path: Path) -> str:
    """A shipped held-out set as ``training/heldout/<game>``; any other path as given."""
    if path.is_relative_to(SHIPPED_HELDOUT):
        return str(Path("training/heldout") / path.relative_to(SHIPPED_HELDOUT))
    return str(path)


def ensure_heldout(cfg: EvalConfig, game: str) -> list[Episode]:
    """Load the evaluation's held-out episodes, recording them first if the directory is missing."""
    from recorders.collect import RecordConfig, record
    from recorders.dataset import EpisodeDataset

    path = heldout_path(cfg, game)
    if not (path / "metadata.json").exists():
        print(f"recording {cfg.record_episodes} held-out {game} episodes into {path}")
        record(RecordConfig(game=game, out=str(path), episodes=cfg.record_episodes, max_steps=3000, policy="random",
                            max_repeat=16, seed=200_000), progress=cfg.progress)
    ds = EpisodeDataset(path)
    return [ds[i] for i in range(len(ds))]


def evaluate(cfg: EvalConfig) -> dict:
    """Run the measurements of the module docstring that ``cfg.parts`` names and write the report files.

    Returns:
        The report (also written to ``<out>/report.json``).

    Raises:
        ValueError: bad config; :class:`~worldmodel.bundle.CheckpointError`: unreadable bundle.
    """
    import time

    from worldmodel.bundle import load
    from worldmodel.device import resolve_device

    t0 = time.time()
    model = load(cfg.checkpoint, device=resolve_device(cfg.device))
    model.eval()
    episodes = ensure_heldout(cfg, model.game)
    out = Path(cfg.out or f"runs/eval-{model.game}")
    out.mkdir(parents=True, exist_ok=True)
    sim_options = {"sampling_steps": cfg.sampling_steps, "temperature": cfg.temperature, "precision": cfg.precision,
                   "backend": cfg.backend, "event_temperature": cfg.event_temperature}
    report: dict = {"checkpoint": str(cfg.checkpoint), "game": model.game, "config": asdict(cfg),
                    "simulator": _simulator_choice(model, sim_options, (cfg.long_run_dreams, cfg.video_windows,
                                                                        PADDLE_STARTS, cfg.windows)),
                    "heldout": {"path": _shown_path(heldout_path(cfg, model.game)), "episodes": len(episodes),
                                "transitions": int(sum(len(e.actions) for e in episodes))}}

    def stage(name: str) -> None:
        print(f"[{time.time() - t0:6.0f} s] {name} ...", flush=True)

    curves: dict = {}
    if "tokenizer" in cfg.parts:
        stage("tokenizer reconstruction")
        report["tokenizer"] = tokenizer_reconstruction(model.tokenizer, episodes, seed=cfg.seed, game=model.game)
    if "teacher_forced" in cfg.parts:
        stage("teacher-forced rollouts")
        report["teacher_forced"] = teacher_forced(model, episodes, horizons=cfg.horizons, windows=cfg.windows,
                                                  seed=cfg.seed, sim_options=sim_options, with_ssim=True,
                                                  curves=curves)
    if "one_step" in cfg.parts:
        stage("one step ahead on every held-out frame")
        report["one_step"] = one_step_structure(model, episodes, seed=cfg.seed, sim_options=sim_options)
    if "controllability" in cfg.parts:
        stage("controllability")
        report["controllability"] = controllability(model, episodes, horizons=cfg.control_horizons,
                                                    windows=cfg.windows, seed=cfg.seed, sim_options=sim_options)
        if _readout(model.game) is not None:
            report["paddle_control"] = paddle_control(model, seed=cfg.seed, sim_options=sim_options)
    if model.lam is not None and "latent_actions" in cfg.parts:
        stage("latent actions")
        report["latent_actions"] = latent_action_quality(model, episodes, seed=cfg.seed)
    if "reward_model" in cfg.parts:
        stage("reward and end model")
        report["reward_model"] = reward_model_quality(model, episodes)
    series, breakdowns = None, []
    if cfg.long_run_steps and "long_run" in cfg.parts:
        stage(f"long run ({cfg.long_run_steps} steps)")
        report["long_run"], series = long_run(model, episodes, steps=cfg.long_run_steps, dreams=cfg.long_run_dreams,
                                              seed=cfg.seed, progress=cfg.progress, sim_options=sim_options,
                                              examples=breakdowns)
        report["long_run"]["breakdowns"] = [{k: e[k] for k in ("step", "failed")} for e in breakdowns]
    stage("plots and video")
    from training.plots import plot_breakdowns, plot_drift, plot_long_run

    report["files"] = {}
    if curves:
        report["files"]["drift_plot"] = str(plot_drift(curves, out / "drift.png",
                                                       title=f"{model.game}: {cfg.checkpoint}"))
    if series is not None:
        report["files"]["long_run_plot"] = str(plot_long_run(series, report["long_run"]["real_mean"],
                                                             out / "long_run.png"))
    if breakdowns:
        report["files"]["breakdowns"] = str(plot_breakdowns(breakdowns, out / "breakdowns.png"))
    horizon = min(32, min(len(e.frames) for e in episodes) - model.dynamics_config.context_frames)
    if "video" in cfg.parts and horizon >= 1:
        report["files"]["video"] = str(write_video(model, episodes, out / "real_vs_dream.gif", horizon=horizon,
                                                   windows=cfg.video_windows, seed=cfg.seed,
                                                   sim_options=sim_options))
    if curves:
        np.savez(out / "curves.npz", **curves)
    report["wall_seconds"] = time.time() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    shown = ("teacher_forced", "one_step", "controllability", "paddle_control", "reward_model", "long_run")
    print(json.dumps({k: report[k] for k in shown if k in report}, indent=2, default=str))
    if "latent_actions" in report:
        la = report["latent_actions"]
        print(f"latent actions: accuracy {la['accuracy']:.3f} (majority {la['majority_baseline']:.3f}), "
              f"perplexity {la['perplexity']:.2f} of {la['codes']} codes, {la['unused_codes']} unused")
    print(f"report written to {out / 'report.json'}")
    return report


def main() -> None:
    """Hydra entry point (see the module docstring)."""
    from recorders.dataset import DatasetError
    from worldmodel.bundle import CheckpointError
    from worldmodel.cli import hydra_command

    hydra_command(__file__, "evaluate", lambda cfg: evaluate(EvalConfig(**cfg)),
                  (ValueError, TypeError, DatasetError, CheckpointError))


if __name__ == "__main__":
    main()
