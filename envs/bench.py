"""``python -m envs.bench``: environment steps per second of the dream against the real game.

Steps a :class:`~envs.dream_vector_env.DreamVectorEnv` of a checkpoint and a Gymnasium
``SyncVectorEnv`` of the real game (``envs.make(game)``, the same 64x64 frames) with the same
random actions, at each ``--num-envs``, for about ``--seconds`` each, in one process, and
prints one JSON object::

    {"checkpoint": "pong", "game": "pong", "device": "cpu", "backend": "torch", "threads": 1,
     "sampling_steps": 4, "cpu_load_1min": 5.7,
     "configs": [{"num_envs": 1, "dream_steps_per_s": 14.88, "real_steps_per_s": 1364.1,
                  "dream_ms_per_step": 67.21, "real_ms_per_step": 0.733, "real_over_dream": 91.7}, ...]}

(the shipped Pong checkpoint on 2 busy CPU cores).

An env step is one sub-env advancing one frame, so a batch step of 16 envs counts 16.
Anything the setup prints (an ONNX export, ALE's banner) goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import gymnasium as gym
import numpy as np


def steps_per_second(env: gym.vector.VectorEnv, *, seconds: float, seed: int = 0, min_steps: int = 2) -> dict:
    """Time random-action steps of a vector env.

    Resets with ``seed``, takes one untimed warm-up step, then steps until ``seconds`` have
    passed and at least ``min_steps`` batch steps were taken.

    Returns:
        ``{"steps_per_s": env steps per second (batch steps x num_envs),
        "ms_per_step": milliseconds per batch step, "batch_steps": how many were timed}``.
    """
    rng = np.random.default_rng(seed)
    n, num_actions = env.num_envs, int(env.single_action_space.n)
    env.reset(seed=seed)
    env.step(rng.integers(num_actions, size=n))
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < seconds:
        env.step(rng.integers(num_actions, size=n))
        steps += 1
    elapsed = time.perf_counter() - start
    return {"steps_per_s": steps * n / elapsed, "ms_per_step": 1000 * elapsed / steps, "batch_steps": steps}


def run(checkpoint: str = "pong", *, num_envs: tuple[int, ...] = (1, 16, 64), seconds: float = 3.0,
        device: str = "cpu", backend: str = "auto", threads: int = 1) -> dict:
    """Benchmark the dream vector env of ``checkpoint`` against the real game's.

    Args:
        checkpoint: shipped bundle name or bundle directory.
        num_envs: the batch sizes to measure.
        seconds: about how long to time each env at each batch size.
        device: torch device of the model.
        backend: Simulator backend (``"auto"``, ``"torch"``, ...).
        threads: torch intra-op threads.

    Returns:
        The JSON-ready report described in the module docstring.
    """
    import torch

    import envs
    from envs.dream_vector_env import DreamVectorEnv
    from worldmodel import load

    torch.set_num_threads(threads)
    model = load(checkpoint, device=device)
    rows, chosen_backend, sampling_steps = [], None, None
    for n in num_envs:
        with contextlib.redirect_stdout(sys.stderr):
            dream = DreamVectorEnv(model, num_envs=n, backend=backend)
            real = gym.vector.SyncVectorEnv([lambda: envs.make(model.game)] * n)
        chosen_backend, sampling_steps = dream.sim.backend, dream.sim.steps
        d = steps_per_second(dream, seconds=seconds)
        r = steps_per_second(real, seconds=seconds)
        dream.close()
        real.close()
        rows.append({"num_envs": n, "dream_steps_per_s": round(d["steps_per_s"], 2),
                     "real_steps_per_s": round(r["steps_per_s"], 1), "dream_ms_per_step": round(d["ms_per_step"], 2),
                     "real_ms_per_step": round(r["ms_per_step"], 3),
                     "real_over_dream": round(r["steps_per_s"] / d["steps_per_s"], 1)})
    return {"checkpoint": str(checkpoint), "game": model.game, "device": device, "backend": chosen_backend,
            "threads": threads, "sampling_steps": sampling_steps, "cpu_load_1min": round(os.getloadavg()[0], 2),
            "configs": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="pong", help="shipped bundle name or bundle directory")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 16, 64], help="batch sizes to measure")
    parser.add_argument("--seconds", type=float, default=3.0, help="about how long to time each configuration")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto", help="Simulator backend: auto, torch, ...")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.num_envs):
        parser.error(f"--num-envs must all be >= 1, got {args.num_envs}")
    report = run(args.checkpoint, num_envs=tuple(args.num_envs), seconds=args.seconds, device=args.device,
                 backend=args.backend, threads=args.threads)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
