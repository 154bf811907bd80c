"""``python -m play key=value ...``: play a dream in a pygame window (Hydra entry point).

Examples::

    python -m play                                   # the shipped Pong dream, 8x window
    python -m play checkpoint=runs/pong-cpu/bundle scale=6
    python -m play side_by_side=true                 # the real game beside the dream; Tab re-syncs
    python -m play side_by_side=true record=both record_out=recordings/me video=recordings/me.mp4
    python -m play headless=true steps=40 screenshot=docs/pygame.png
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="play", version_base=None)
def _main(cfg: DictConfig) -> None:
    from play.pygame_app import PygameApp, WindowConfig
    from play.session import PlaySession, prepare_backend
    from worldmodel import CheckpointError, load

    if cfg.threads is not None:
        import torch

        torch.set_num_threads(int(cfg.threads))

    import pygame

    try:
        window = WindowConfig(scale=cfg.scale, fps=cfg.fps, headless=cfg.headless, steps=cfg.steps, keys=cfg["keys"],
                              save_frames=cfg.save_frames, screenshot=cfg.screenshot, side_by_side=cfg.side_by_side,
                              latent_keys=cfg.latent_keys, record=cfg.record, record_out=cfg.record_out,
                              video=cfg.video, seed=cfg.seed)
        model = load(cfg.checkpoint, device=cfg.device)
        session = PlaySession(model, seed=cfg.seed, sampling_steps=cfg.sampling_steps, temperature=cfg.temperature,
                              backend=prepare_backend(model, cfg.backend, cfg.precision, cfg.temperature),
                              precision=cfg.precision)
        app = PygameApp(session, window)
        played = app.run()
    except (CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    except pygame.error as e:
        hint = " (no display? try headless=true)" if not cfg.headless else ""
        sys.exit(f"error: pygame: {e}{hint}")
    print(f"played {played} steps at {session.fps:.1f} frames/s (median step {session.latency_ms:.1f} ms, "
          f"{session.sim.backend} backend, {session.sim.precision})")
    for side, recorder in (("dream", app.dream_recorder), ("real", app.real and app.real.recorder)):
        if recorder is not None:
            print(f"recorded {recorder.episodes_written} {side} episode(s) into {recorder.writer.root}")
    if app.video is not None:
        print(f"wrote {app.video.frames_written} frames to {app.video.path}")


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
