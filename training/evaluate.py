"""Quality figures of a dream against held-out real episodes.

- Teacher-forced rollouts: prime with real frames, generate with the real recorded
  actions, compare with the real frames at several horizons: PSNR on whole frames and on
  moving pixels (pixels where the real frame differs from the previous real frame).
- Paddle control (Pong): from the same start and noise seed, hold Up for 8 steps or Down
  for 8 steps; the green paddle must end clearly higher after Up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recorders.dataset import Episode
from worldmodel.bundle import ModelBundle
from worldmodel.simulator import Simulator


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


def moving_pixels(real: np.ndarray, prev: np.ndarray, threshold: int = 8) -> np.ndarray:
    """``(..., H, W)`` bool: pixels whose colour changed by more than ``threshold`` in any channel."""
    return (np.abs(real.astype(np.int16) - prev.astype(np.int16)).max(axis=-1) > threshold)


def sample_windows(episodes: list[Episode], length: int, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` random ``(frames (length, H, W, 3), actions (length-1,))`` windows, reproducible by seed."""
    rng = np.random.default_rng(seed)
    usable = [e for e in episodes if len(e.frames) >= length]
    if not usable:
        raise ValueError(f"no held-out episode has the {length} frames an evaluation window needs")
    out = []
    for _ in range(count):
        e = usable[rng.integers(len(usable))]
        s = int(rng.integers(len(e.frames) - length + 1))
        out.append((e.frames[s:s + length], e.actions[s:s + length - 1]))
    return out


def tokenizer_reconstruction(tokenizer, episodes: list[Episode], *, frames: int = 256, seed: int = 0) -> dict:
    """Reconstruction PSNR of the tokenizer on held-out frames: whole frames and moving pixels.

    Returns:
        ``{"psnr": dB, "psnr_moving": dB, "frames": n}`` (100 dB means lossless).
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
    return {"psnr": float(np.mean([psnr(r, f) for r, f in zip(real, rec)])),
            "psnr_moving": float(np.nanmean([psnr(r, f, m) for r, f, m in zip(real, rec, mask)])),
            "frames": len(real)}


def teacher_forced_rollout(model: ModelBundle, episodes: list[Episode], *, horizon: int, windows: int, seed: int,
                           sampling_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Prime with ``context_frames - 1`` real frames, then step ``horizon`` times with the recorded actions.

    Returns:
        ``(real, dream)`` uint8 arrays, aligned:
        ``dream[:, k]`` is the model's frame for ``real[:, k + 1]``; the real frames are
        ``real (W, horizon + 1, H, W, 3)``, starting with the last context frame.
    """
    ctx = model.dynamics_config.context_frames - 1
    data = sample_windows(episodes, ctx + horizon, windows, seed)
    frames = np.stack([f for f, _ in data])                                 # (W, ctx+H, h, w, 3)
    actions = np.stack([a for _, a in data])                                # (W, ctx+H-1)
    sim = Simulator(model, batch_size=len(data), seed=seed, sampling_steps=sampling_steps)
    sim.reset(frames[:, :ctx], actions[:, :ctx - 1])
    dream = np.stack([sim.step(actions[:, ctx - 1 + k])[0] for k in range(horizon)], axis=1)
    return frames[:, ctx - 1:], dream


def teacher_forced(model: ModelBundle, episodes: list[Episode], *, horizons=(1, 4, 16), windows: int = 32,
                   seed: int = 0, sampling_steps: int | None = None) -> dict:
    """Teacher-forced rollout figures.

    Each window is primed with ``context_frames - 1`` real frames, then stepped with the real
    recorded actions for ``max(horizons)`` steps.

    Returns:
        ``{"psnr": {h: dB}, "psnr_moving": {h: dB}, "copy_last_psnr": {h: dB},
        "copy_last_psnr_moving": {h: dB}, "windows": n}``; the ``copy_last`` figures are the
        baseline that repeats the last real context frame.
    """
    real_all, dream = teacher_forced_rollout(model, episodes, horizon=max(horizons), windows=windows, seed=seed,
                                             sampling_steps=sampling_steps)
    result = {"psnr": {}, "psnr_moving": {}, "copy_last_psnr": {}, "copy_last_psnr_moving": {},
              "windows": len(real_all)}
    copy = real_all[:, 0]                                                   # the last real context frame
    for h in horizons:
        real, prev, fake = real_all[:, h], real_all[:, h - 1], dream[:, h - 1]
        mask = moving_pixels(real, prev)
        result["psnr"][h] = float(np.mean([psnr(r, f) for r, f in zip(real, fake)]))
        result["copy_last_psnr"][h] = float(np.mean([psnr(r, c) for r, c in zip(real, copy)]))
        result["psnr_moving"][h] = float(np.nanmean([psnr(r, f, m) for r, f, m in zip(real, fake, mask)]))
        result["copy_last_psnr_moving"][h] = float(np.nanmean([psnr(r, c, m) for r, c, m in zip(real, copy, mask)]))
    return result


def paddle_control(model: ModelBundle, *, starts: int = 16, hold: int = 8, seed: int = 0, margin: float = 2.0,
                   up: int = 2, down: int = 3, sampling_steps: int | None = None) -> dict:
    """Pong: does holding Up leave the green paddle higher than holding Down?

    For each start window of the bundle (cycled up to ``starts``), two dreams with the same
    noise seed hold ``up`` or ``down`` for ``hold`` steps. A start passes when the paddle's
    row after Up is at least ``margin`` pixels above (smaller than) its row after Down.

    Returns:
        ``{"pass_rate": share of starts that pass, "mean_gap_px": mean (down - up) row gap,
        "starts": n}``; starts where the paddle is not visible count as failures.
    """
    from envs.readout import paddle_y

    k = len(model.start_frames)
    idx = np.arange(starts) % k
    frames = model.start_frames.numpy()[idx]
    actions = model.start_actions.numpy()[idx]
    results = {}
    for name, action in (("up", up), ("down", down)):
        sim = Simulator(model, batch_size=starts, seed=seed, sampling_steps=sampling_steps)
        sim.reset(frames, actions)
        for _ in range(hold):
            last, _, _ = sim.step(np.full(starts, action))
        results[name] = paddle_y(last)
    gap = results["down"] - results["up"]
    passed = np.nan_to_num(gap, nan=-np.inf) >= margin
    return {"pass_rate": float(passed.mean()), "mean_gap_px": float(np.nanmean(gap)), "starts": int(starts)}


def write_video(model: ModelBundle, episodes: list[Episode], path: str | Path, *, windows: int = 4, horizon: int = 32,
                seed: int = 0, scale: int = 4) -> Path:
    """A GIF of ``real | dream | |difference|`` rows, one row per window, teacher-forced."""
    import imageio.v3 as iio

    real_all, dream = teacher_forced_rollout(model, episodes, horizon=horizon, windows=windows, seed=seed + 1)
    video = []
    for k in range(horizon):
        real, fake = real_all[:, k + 1], dream[:, k]
        diff = np.abs(real.astype(np.int16) - fake.astype(np.int16)).astype(np.uint8)
        rows = [np.concatenate([r, f, d], axis=1) for r, f, d in zip(real, fake, diff)]
        video.append(np.concatenate(rows, axis=0).repeat(scale, 0).repeat(scale, 1))
    path = Path(path)
    iio.imwrite(path, np.stack(video), duration=1000 / model.fps, loop=0)
    return path
