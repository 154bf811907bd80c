"""Vectorized episode collection from real games into the dataset format."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from envs.games import get_game
from recorders.dataset import DatasetWriter, Episode
from recorders.policies import (CallablePolicy, KeyboardPolicy, MixedPolicy, Policy, RandomRepeatPolicy,
                                ScriptedPongPolicy)


@dataclass
class RecordConfig:
    """What to record and how.

    Attributes:
        game: game name (``pong``, ``breakout``, ``cartpole``).
        out: dataset directory (created, or appended to).
        episodes: number of whole episodes to write.
        max_steps: cut each episode after this many steps (it is written as truncated).
        num_envs: sub-environments stepped together.
        vector: ``"async"`` (one process per env) or ``"sync"``.
        policy: ``random``, ``scripted`` (Pong only), ``mixed`` (random and scripted) or
            ``human`` (keyboard; forces one env).
        max_repeat: longest hold of the random policy, in steps.
        frame_skip: emulator frames per step (ALE; ``None``: the game's default).
        sticky_actions: ALE's repeat-action probability.
        size: frame height and width.
        seed: seeds the envs (env ``i`` gets ``seed + i``) and the policy.
    """

    game: str = "pong"
    out: str = "data/pong"
    episodes: int = 10
    max_steps: int = 2000
    num_envs: int = 2
    vector: str = "async"
    policy: str = "mixed"
    max_repeat: int = 8
    frame_skip: int | None = None
    sticky_actions: float = 0.0
    size: int = 64
    seed: int = 0

    POLICIES = ("random", "scripted", "mixed", "human")

    def __post_init__(self):
        get_game(self.game)
        for name in ("episodes", "max_steps", "num_envs", "max_repeat", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.vector not in ("async", "sync"):
            raise ValueError(f"vector must be 'async' or 'sync', got {self.vector!r}")
        if self.policy not in self.POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {self.POLICIES}")
        if self.frame_skip is not None and (not isinstance(self.frame_skip, int) or self.frame_skip < 1):
            raise ValueError(f"frame_skip must be a positive integer or null, got {self.frame_skip!r}")
        if not isinstance(self.sticky_actions, (int, float)) or not 0.0 <= self.sticky_actions <= 1.0:
            raise ValueError(f"sticky_actions must be in [0, 1], got {self.sticky_actions!r}")


def make_policy(cfg: RecordConfig, num_envs: int) -> Policy:
    """Build the policy named by ``cfg.policy``.

    Raises:
        ValueError: unknown policy name, or a Pong-only policy for another game.
    """
    spec = get_game(cfg.game)
    rand = RandomRepeatPolicy(num_envs, spec.num_actions, max_repeat=cfg.max_repeat, seed=cfg.seed)
    if cfg.policy == "random":
        return rand
    if cfg.policy in ("scripted", "mixed") and cfg.game != "pong":
        if cfg.policy == "mixed":
            return rand
        raise ValueError(f"the scripted policy plays Pong only, not {cfg.game!r}")
    if cfg.policy == "scripted":
        return ScriptedPongPolicy(num_envs, seed=cfg.seed)
    if cfg.policy == "mixed":
        return MixedPolicy([rand, ScriptedPongPolicy(num_envs, seed=cfg.seed + 1)], num_envs=num_envs, seed=cfg.seed)
    if cfg.policy == "human":
        return KeyboardPolicy(spec)
    raise ValueError(f"unknown policy {cfg.policy!r}; choose random, scripted, mixed or human")


def _env_factory(cfg: RecordConfig):
    from envs.real import make

    def thunk():
        # One BLAS thread per worker: the frame resize is a small matrix product, and
        # several workers each spinning a full thread pool starve each other (5x slower).
        threadpool_limits(1, user_api="blas")
        return make(cfg.game, frame_skip=cfg.frame_skip, sticky_actions=cfg.sticky_actions, size=cfg.size,
                    max_episode_steps=cfg.max_steps)
    return thunk


def record(cfg: RecordConfig, policy: Policy | None = None, *, progress: bool = True) -> DatasetWriter:
    """Play ``cfg.episodes`` whole episodes and write them to ``cfg.out``.

    Episodes are written as soon as they end, atomically, so a killed recorder loses only
    the episodes in flight. Recording into an existing dataset of the same game appends.

    Args:
        cfg: what to record.
        policy: a policy object or a callable ``policy(obs (H, W, 3)) -> action``; ``None``
            builds the one ``cfg.policy`` names.
        progress: show a progress bar with frames per second.

    Returns:
        The writer, whose ``frames_written`` and ``episodes_written`` count what was written.
    """
    spec = get_game(cfg.game)
    num_envs = 1 if cfg.policy == "human" else cfg.num_envs
    if policy is None:
        policy = make_policy(cfg, num_envs)
    elif not hasattr(policy, "episode_start"):
        policy = CallablePolicy(policy)
    frame_skip = spec.frame_skip if cfg.frame_skip is None else cfg.frame_skip
    writer = DatasetWriter(cfg.out, dict(
        game=spec.name, frame_size=[cfg.size, cfg.size], frame_skip=frame_skip, sticky_actions=cfg.sticky_actions,
        action_meanings=list(spec.action_meanings), fps=spec.fps, env_id=spec.env_id))
    vec_cls = gym.vector.AsyncVectorEnv if (cfg.vector == "async" and num_envs > 1) else gym.vector.SyncVectorEnv
    envs = vec_cls([_env_factory(cfg)] * num_envs, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    bar = tqdm(total=cfg.episodes, unit="ep", disable=not progress, desc=f"recording {spec.name}")
    start = time.perf_counter()
    blas = threadpool_limits(1, user_api="blas")
    try:
        obs, _ = envs.reset(seed=[cfg.seed + i for i in range(num_envs)])
        buffers = [_Buffer(obs[i]) for i in range(num_envs)]
        for i in range(num_envs):
            policy.episode_start(i)
        episode_seeds = [cfg.seed + i for i in range(num_envs)]
        done = np.zeros(num_envs, bool)
        while writer.episodes_written < cfg.episodes:
            actions = policy(obs)
            obs, rewards, term, trunc, _ = envs.step(actions)
            for i in range(num_envs):
                if done[i]:  # NEXT_STEP autoreset: this step only reset env i
                    buffers[i] = _Buffer(obs[i])
                    policy.episode_start(i)
                    continue
                buffers[i].add(actions[i], rewards[i], term[i], trunc[i], obs[i])
                if (term[i] or trunc[i]) and writer.episodes_written < cfg.episodes:
                    info = dict(policy=getattr(policy, "current_name", lambda _: policy.name)(i),
                                vector_seed=episode_seeds[i], env_index=i, recorded_at=time.time())
                    writer.write(buffers[i].episode(info))
                    bar.update(1)
                    bar.set_postfix(fps=f"{writer.frames_written / (time.perf_counter() - start):.0f}")
            done = term | trunc
    finally:
        blas.restore_original_limits()
        envs.close()
        bar.close()
    return writer


class _Buffer:
    """One episode in flight."""

    def __init__(self, first_obs: np.ndarray):
        self.frames = [first_obs]
        self.actions, self.rewards, self.terminated, self.truncated = [], [], [], []

    def add(self, action, reward, terminated, truncated, obs) -> None:
        self.actions.append(action)
        self.rewards.append(reward)
        self.terminated.append(terminated)
        self.truncated.append(truncated)
        self.frames.append(obs)

    def episode(self, info: dict) -> Episode:
        return Episode(frames=np.stack(self.frames).astype(np.uint8),
                       actions=np.asarray(self.actions, np.int64),
                       rewards=np.asarray(self.rewards, np.float32),
                       terminated=np.asarray(self.terminated, bool),
                       truncated=np.asarray(self.truncated, bool), info=info)
