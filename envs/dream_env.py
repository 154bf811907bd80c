"""The Gymnasium face of a dream: a world-model checkpoint played as an environment."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

NOISE_SEED_BOUND = 2 ** 62
"""Sampling-noise seeds are drawn from ``[0, NOISE_SEED_BOUND)``."""


def draw_start(rng: np.random.Generator, num_starts: int, start: int | None = None) -> tuple[int, int]:
    """Draw the start window and the sampling-noise seed of one episode.

    The one rule :class:`DreamEnv` and :class:`envs.dream_vector_env.DreamVectorEnv` share,
    so that a sub-env seeded ``s`` starts where ``DreamEnv.reset(seed=s)`` starts. Both
    numbers are always drawn (in this order), so choosing ``start`` leaves the generator
    where a random start would have left it.

    Args:
        rng: the episode's generator (``env.np_random``).
        num_starts: K, the number of start windows in the bundle.
        start: a chosen window, or ``None`` for the drawn one.

    Returns:
        ``(start, noise_seed)``: a window index in ``[0, K)`` and a seed in
        ``[0, NOISE_SEED_BOUND)``.

    Raises:
        ValueError: ``start`` outside ``[0, K)``.
    """
    drawn = int(rng.integers(num_starts))
    noise_seed = int(rng.integers(NOISE_SEED_BOUND))
    start = drawn if start is None else int(start)
    if not 0 <= start < num_starts:
        raise ValueError(f"start window {start} out of range [0, {num_starts})")
    return start, noise_seed


class DreamEnv(gym.Env):
    """A game simulated by a world model, as a ``gymnasium.Env``.

    Each episode starts from a real start window of the checkpoint (chosen by the seed);
    every step denoises one new frame conditioned on the action.

    Action Space:
        ``Discrete(n)`` with the real game's actions (``action_meanings`` in the bundle);
        for Pong: 0 NOOP, 1 FIRE, 2 RIGHT (paddle up), 3 LEFT (paddle down), 4 RIGHTFIRE,
        5 LEFTFIRE. A ``conditioning="latent"`` checkpoint takes the same actions through its
        key-to-code map, or without one ``Discrete(codes)``, its latent codes.

    Observation Space:
        ``Box(0, 255, (64, 64, 3), uint8)``: the same frames as ``envs.make(game)``.

    Rewards:
        The reward model's prediction of the reward's sign (-1, 0 or +1).

    Episode End:
        Terminated when the reward and end model predicts the game ended; truncated by
        ``max_episode_steps`` when made through ``gymnasium.make``.

    Args:
        checkpoint: a shipped bundle name (``"pong"``) or a bundle directory, or a loaded
            :class:`worldmodel.ModelBundle`.
        render_mode: ``"rgb_array"`` or ``None``.
        sampling_steps: denoising steps per frame (default: the checkpoint's).
        device: torch device of the model.
        backend: the :class:`worldmodel.Simulator` backend (``"auto"``, ``"torch"``, ...).
        precision: the Simulator's arithmetic (``"auto"``, ``"float32"``, ``"bfloat16"``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, checkpoint: Any = "pong", render_mode: str | None = None, *, sampling_steps: int | None = None,
                 device: str = "cpu", backend: str = "auto", precision: str = "auto"):
        from worldmodel import ModelBundle, Simulator, load

        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.model = checkpoint if isinstance(checkpoint, ModelBundle) else load(checkpoint, device=device)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.model.fps}
        size = self.model.tokenizer_config.frame_size
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(self.model.control_actions)
        self.sim = Simulator(self.model, batch_size=1, backend=backend, sampling_steps=sampling_steps,
                             precision=precision)
        self._frame: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start from a real start window chosen by the seed (``options={"start": k}`` picks one)."""
        super().reset(seed=seed)
        start, noise_seed = draw_start(self.np_random, len(self.model.start_frames), (options or {}).get("start"))
        self.sim.generator.manual_seed(noise_seed)
        frames = self.model.start_frames[start:start + 1].numpy()
        actions = self.model.start_actions[start:start + 1].numpy()
        self._frame = self.sim.reset(frames, actions)[0]
        return self._frame.copy(), {"start": start}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        frames, rewards, terminated = self.sim.step(self.model.to_conditioning([int(action)]))
        self._frame = frames[0]
        return self._frame.copy(), float(rewards[0]), bool(terminated[0]), False, {}

    def render(self):
        if self.render_mode == "rgb_array":
            return None if self._frame is None else self._frame.copy()
        return None
