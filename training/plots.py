"""Figures of the evaluation (matplotlib, written as PNG without a display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_drift(curves: dict[str, np.ndarray], path: str | Path, *, title: str = "") -> Path:
    """The drift curves: each teacher-forced figure against the horizon, dream vs copy-last baseline.

    Args:
        curves: ``{name: (horizon,) array}`` from :func:`training.evaluate.rollout_curves`.
        path: PNG to write.
    """
    plt = _pyplot()
    # Each panel: its title, its curves ((name in ``curves``, legend label), drawn if the first is
    # there) and its y range (None: matplotlib's).
    panels = [(label, series, ylim) for label, series, ylim in (
        ("PSNR, whole frame (dB)", [("psnr", "dream")], None),
        ("PSNR, moving pixels (dB)", [("psnr_moving", "dream")], None),
        ("SSIM", [("ssim", "dream")], None),
        ("ball position error, median (px)", [("ball_error_px", "dream")], None),
        ("windows with the ball within 1 / 3 px",
         [("ball_within_1px", "within 1 px"), ("ball_within_3px", "within 3 px")], (0, 1)),
        ("player paddle error, median (px)", [("paddle_error_px", "dream")], None)) if series[0][0] in curves]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (label, series, ylim) in zip(axes[0], panels):
        for name, legend in series:
            h = np.arange(1, len(curves[name]) + 1)
            ax.plot(h, curves[name], label=legend)
            if "copy_last_" + name in curves:
                ax.plot(h, curves["copy_last_" + name], "--", label="copy last real frame")
        if len(series) > 1:
            ax.legend(fontsize=8)
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("horizon (steps)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_long_run(series: dict[str, np.ndarray], real: dict[str, float], path: str | Path, *,
                  window: int = 100) -> Path:
    """Long free-play figures over time (moving average over ``window`` steps), real level dashed."""
    plt = _pyplot()
    labels = {"hist_distance": "colour-histogram distance", "broken": "share of broken frames",
              "broken_beyond_real": "broken beyond real play", "ball_visible": "share of frames with a ball"}
    names = [n for n in labels if n in series]
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        v = series[name]
        w = max(1, min(window, len(v)))
        smooth = np.convolve(v, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(len(smooth)) + w, smooth, label="dream")
        ax.axhline(real[name], color="k", ls="--", lw=1, label="real held-out")
        ax.set_xlabel("step")
        ax.set_title(labels[name], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_breakdowns(examples: list[dict], path: str | Path, *, scale: int = 4) -> Path:
    """The long run's first breakdowns, one row each: the frames that led to a frame broken
    beyond real play, the broken one last, titled with its step and the checks it failed.

    Args:
        examples: ``[{"step": int, "failed": [str], "frames": (k, H, W, 3) uint8}]`` from
            :func:`training.evaluate.long_run`, at least one.
        path: PNG to write.
        scale: figure size; 4 draws a 64 x 64 frame about 160 px wide (nearest neighbour).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no examples.
    """
    if not examples:
        raise ValueError("plot_breakdowns needs at least one breakdown, got none")
    plt = _pyplot()
    cols = max(len(e["frames"]) for e in examples)
    fig, axes = plt.subplots(len(examples), cols, figsize=(1.6 * cols * scale / 4, 1.75 * len(examples) * scale / 4),
                             squeeze=False)
    for row, e in zip(axes, examples):
        k = len(e["frames"])
        for j, ax in enumerate(row):
            ax.axis("off")
            i = j - (cols - k)                         # right-aligned: the broken frame in the last column
            if i < 0:
                continue
            ax.imshow(e["frames"][i], interpolation="nearest")
            ago = k - 1 - i
            ax.set_title(f"step {e['step']}: " + ", ".join(e["failed"]) if ago == 0 else f"{ago} before",
                         fontsize=6 if ago == 0 else 7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
