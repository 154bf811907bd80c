"""Many dreams of one checkpoint in lock step, as a ``gymnasium.vector.VectorEnv``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from envs.dream_env import draw_start


class DreamVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` dreams of one world model stepped as one batch.

    One :class:`worldmodel.Simulator` of batch size ``num_envs`` serves every sub-env: a
    step denoises all the new frames in one batched pass, and a sub-env that starts a new
    episode is primed alone (``Simulator.reset(..., env_ids=...)``) while the others keep
    their context.

    Follows Gymnasium 1.x's ``VectorEnv`` contract with next-step autoreset
    (``metadata["autoreset_mode"] = AutoresetMode.NEXT_STEP``): the step after a sub-env
    terminates or truncates ignores its action and returns the first frame of its next
    episode, with reward 0 and ``terminated = truncated = False``.

    Action Space:
        ``MultiDiscrete([n] * num_envs)``; ``single_action_space`` is the real game's
        ``Discrete(n)`` (for Pong: 0 NOOP, 1 FIRE, 2 RIGHT (up), 3 LEFT (down), 4 RIGHTFIRE,
        5 LEFTFIRE). Numpy arrays, lists or torch tensors of shape ``(num_envs,)``. A
        ``conditioning="latent"`` checkpoint takes the same actions through its key-to-code
        map, or without one its latent codes (``n`` = the LAM's code count).

    Observation Space:
        ``Box(0, 255, (num_envs, 64, 64, 3), uint8)``; ``single_observation_space`` is the
        real game's ``Box(0, 255, (64, 64, 3), uint8)``, the same as ``envs.make(game)``.
        With ``torch_observations=True`` observations are ``torch.uint8`` tensors of that
        shape on the model's device (the spaces stay the same).

    Rewards:
        ``(num_envs,) float64``: the reward model's prediction of the reward's sign.

    Episode End:
        Terminated when the reward and end model predicts the game ended; truncated after
        ``max_episode_steps`` steps (``None``: never). ``gymnasium.make_vec`` passes the
        registered limit.

    Seeding:
        ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (as ``SyncVectorEnv`` does), and
        sub-env ``i`` starts every episode where ``DreamEnv`` seeded ``s + i`` would start
        its episodes. The batch's sampling noise is seeded from sub-env 0's draw, so with
        ``num_envs=1`` the dream equals ``DreamEnv``'s frame for frame. Same seed, same
        actions: same dreams.

    Args:
        checkpoint: a shipped bundle name (``"pong"``) or a bundle directory, or a loaded
            :class:`worldmodel.ModelBundle`.
        num_envs: number of sub-envs B.
        render_mode: ``"rgb_array"`` or ``None``.
        max_episode_steps: truncate episodes after this many steps (``None``: never).
        sampling_steps: denoising steps per frame (default: the checkpoint's).
        device: torch device of the model (when ``checkpoint`` is not loaded yet).
        backend: the :class:`worldmodel.Simulator` backend (``"auto"``, ``"torch"``, ...).
        precision: the Simulator's arithmetic (``"auto"``, ``"float32"``, ``"bfloat16"``).
        torch_observations: return observations as torch tensors on the model's device.

    Raises:
        ValueError: ``num_envs`` or ``max_episode_steps`` below 1, or an unknown render mode.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, checkpoint: Any = "pong", num_envs: int = 1, render_mode: str | None = None, *,
                 max_episode_steps: int | None = None, sampling_steps: int | None = None, device: str = "cpu",
                 backend: str = "auto", precision: str = "auto", torch_observations: bool = False):
        from worldmodel import ModelBundle, Simulator, load

        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.model = checkpoint if isinstance(checkpoint, ModelBundle) else load(checkpoint, device=device)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.torch_observations = torch_observations
        self.metadata = {**self.metadata, "render_fps": self.model.fps}
        size = self.model.tokenizer_config.frame_size
        self.single_observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.single_action_space = gym.spaces.Discrete(self.model.control_actions)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.sim = Simulator(self.model, batch_size=num_envs, backend=backend, sampling_steps=sampling_steps,
                             precision=precision)
        self.device = self.sim.device
        self._rngs: list[np.random.Generator] | None = None                  # one per sub-env
        self._frames: np.ndarray | None = None                               # (B, H, W, 3) uint8
        self._elapsed = np.zeros(num_envs, np.int64)                         # steps since each reset
        self._autoreset = np.zeros(num_envs, bool)                           # ended on the last step

    # -- Gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        """Start new episodes from real start windows chosen by the seed.

        Args:
            seed: ``int`` (sub-env ``i`` gets ``seed + i``), a list of ``num_envs`` ints or
                ``None`` (each), or ``None`` (continue each sub-env's generator; fresh
                random ones on the first reset).
            options: ``{"reset_mask": (B,) bool}`` resets only those sub-envs (Gymnasium's
                convention; the others keep their episodes); ``{"start": k}`` with an int
                or a ``(B,)`` int array picks the start windows.

        Returns:
            ``observations (B, H, W, 3) uint8`` (numpy, or torch with
            ``torch_observations``) and ``infos`` with ``"start"`` ``(B,) int64`` (the
            window each sub-env started from) and its mask ``"_start"``.

        Raises:
            RuntimeError: called after :meth:`close`.
            ValueError: a seed list of the wrong length, a bad reset mask, or a start window
                out of range.
        """
        if self.closed:
            raise RuntimeError("the env is closed")
        opts = options or {}
        mask = self._reset_mask(opts.get("reset_mask"))
        seeds = self._seed_list(seed)
        if isinstance(seed, int):
            super().reset(seed=seed)
        if self._rngs is None:
            self._rngs = [seeding.np_random(None)[0] for _ in range(self.num_envs)]
        for i in np.flatnonzero(mask):
            if seeds[i] is not None:
                self._rngs[i] = seeding.np_random(seeds[i])[0]
        chosen = self._chosen_starts(opts.get("start"))
        full = bool(mask.all()) or self._frames is None
        if full:
            mask = np.ones(self.num_envs, bool)
        starts = self._begin_episodes(np.flatnonzero(mask), chosen, full=full)
        return self._observations(), self._start_info(starts, mask)

    def step(self, actions):
        """Advance every sub-env by one frame; sub-envs that ended on the last step start anew.

        Args:
            actions: ``(B,)`` integer actions (numpy, list or torch), one per sub-env.

        Returns:
            ``observations (B, H, W, 3) uint8``, ``rewards (B,) float64``,
            ``terminations (B,) bool``, ``truncations (B,) bool``, ``infos`` (``"start"`` and
            ``"_start"`` for the sub-envs that autoreset on this step, else empty).

        Raises:
            RuntimeError: called before :meth:`reset`, or after :meth:`close`.
            ValueError: wrong shape, non-integer actions, or an action out of range
                (the message names it and its sub-env).
        """
        if self.closed:
            raise RuntimeError("the env is closed")
        if self._frames is None:
            raise RuntimeError("call reset() before step()")
        acts = self._check_actions(actions)
        frames, rewards, terminated = self.sim.step(self.model.to_conditioning(acts))
        self._frames = frames
        self._elapsed += 1
        rewards = rewards.astype(np.float64)
        truncated = np.zeros(self.num_envs, bool)
        if self.max_episode_steps is not None:
            truncated = self._elapsed >= self.max_episode_steps
        infos: dict[str, Any] = {}
        restart = self._autoreset.copy()
        if restart.any():
            # Next-step autoreset: the frame just dreamt for these sub-envs is dropped.
            starts = self._begin_episodes(np.flatnonzero(restart), [None] * self.num_envs, full=False)
            rewards[restart], terminated[restart], truncated[restart] = 0.0, False, False
            infos = self._start_info(starts, restart)
        self._autoreset = terminated | truncated
        return self._observations(), rewards, terminated.copy(), truncated.copy(), infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        """The latest frame of every sub-env: ``num_envs`` ``(H, W, 3) uint8`` arrays, or
        ``None`` without ``render_mode="rgb_array"`` or before :meth:`reset`."""
        if self.render_mode != "rgb_array" or self._frames is None:
            return None
        return tuple(f.copy() for f in self._frames)

    def close_extras(self, **kwargs: Any) -> None:
        """Drop the simulator (its KV cache holds the memory)."""
        self.sim = None
        self._frames = None

    # -- helpers ---------------------------------------------------------------------------------
    def _begin_episodes(self, ids: np.ndarray, chosen: list[int | None], *, full: bool) -> np.ndarray:
        """Prime sub-envs ``ids`` with start windows; ``chosen[i]`` (``None``: drawn) is sub-env ``i``'s.

        A full reset also reseeds the batch's sampling noise (from sub-env 0's draw, as
        ``DreamEnv`` does); a subset reset leaves the other sub-envs' noise stream alone.
        Returns ``(B,) int64`` start windows (``-1`` for sub-envs not reset).
        """
        k = len(self.model.start_frames)
        starts = np.full(self.num_envs, -1, np.int64)
        noise_seeds = {}
        for i in ids:
            starts[i], noise_seeds[i] = draw_start(self._rngs[i], k, chosen[i])
        picked = torch.as_tensor(starts[ids])
        frames = self.model.start_frames[picked]                             # (B', T, H, W, 3)
        actions = self.model.start_actions[picked]                           # (B', T-1)
        if full:
            self.sim.generator.manual_seed(noise_seeds[0])
            self._frames = self.sim.reset(frames, actions)
        else:
            self._frames = self.sim.reset(frames, actions, env_ids=ids)
        self._elapsed[ids] = 0
        self._autoreset[ids] = False
        return starts

    def _observations(self):
        if self.torch_observations:
            return torch.from_numpy(self._frames.copy()).to(self.device)
        return self._frames.copy()

    @staticmethod
    def _start_info(starts: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        return {"start": starts.copy(), "_start": mask.copy()}

    def _reset_mask(self, mask) -> np.ndarray:
        if mask is None:
            return np.ones(self.num_envs, bool)
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (self.num_envs,) or not mask.any():
            raise ValueError(f"options['reset_mask'] must be a ({self.num_envs},) bool array with a True, "
                             f"got {mask.dtype} {mask.shape} {mask.tolist()}")
        return mask

    def _chosen_starts(self, start) -> list[int | None]:
        if start is None:
            return [None] * self.num_envs
        if np.ndim(start) == 0:
            return [int(start)] * self.num_envs
        starts = [int(s) for s in np.asarray(start).reshape(-1)]
        if len(starts) != self.num_envs:
            raise ValueError(f"options['start'] needs one window per sub-env ({self.num_envs}), got {starts}")
        return starts

    def _seed_list(self, seed) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"a list of seeds needs one per sub-env ({self.num_envs}), got {len(seeds)}: {seeds}")
        return seeds

    def _check_actions(self, actions) -> np.ndarray:
        a = actions.cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        if a.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"actions must be integers, got dtype {a.dtype}: {a.tolist()}")
        bad = np.flatnonzero((a < 0) | (a >= self.single_action_space.n))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"action {int(a[i])} of sub-env {i} is not in {self.single_action_space}")
        return a.astype(np.int64)

