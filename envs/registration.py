"""Registers one ``worldmodel/Dream<Game>-v0`` Gymnasium id per shipped checkpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gymnasium as gym

DREAM_NAMESPACE = "worldmodel"
MAX_EPISODE_STEPS = 10_000


def shipped_checkpoints() -> list[str]:
    """Names of the bundles under ``worldmodel/checkpoints`` (found without importing torch)."""
    spec = importlib.util.find_spec("worldmodel")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0]) / "checkpoints"
    return sorted(d.name for d in root.iterdir() if (d / "config.json").exists()) if root.is_dir() else []


def dream_id(game: str) -> str:
    """``"pong"`` -> ``"worldmodel/DreamPong-v0"``."""
    return f"{DREAM_NAMESPACE}/Dream{game.capitalize()}-v0"


def register_dreams() -> list[str]:
    """Register every shipped dream (idempotent); returns the ids.

    Each id has both entry points, so ``gymnasium.make(id)`` gives a
    :class:`envs.dream_env.DreamEnv` (in a ``TimeLimit`` of ``MAX_EPISODE_STEPS``) and
    ``gymnasium.make_vec(id, num_envs=N)`` one batched
    :class:`envs.dream_vector_env.DreamVectorEnv` (Gymnasium picks the vector entry point
    when ``vectorization_mode`` is left out, and passes it ``max_episode_steps``);
    ``vectorization_mode="sync"`` still builds N separate ``DreamEnv``.
    """
    ids = []
    for name in shipped_checkpoints():
        env_id = dream_id(name)
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="envs.dream_env:DreamEnv",
                         vector_entry_point="envs.dream_vector_env:DreamVectorEnv", kwargs={"checkpoint": name},
                         max_episode_steps=MAX_EPISODE_STEPS)
        ids.append(env_id)
    return ids
