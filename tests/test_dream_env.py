"""The dream as a Gymnasium environment: check_env, spaces shared with the real game, seeding."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.dream_env import DreamEnv


@pytest.fixture()
def dream(tiny_bundle):
    return DreamEnv(tiny_bundle, render_mode="rgb_array")


def test_check_env_passes(dream):
    check_env(dream, skip_render_check=False)


def test_spaces_match_the_real_game(dream):
    real = envs.make("pong")
    assert dream.observation_space == real.observation_space
    assert dream.action_space == real.action_space
    obs, _ = dream.reset(seed=0)
    assert real.observation_space.contains(obs)


def test_same_seed_same_dream(dream):
    def roll(seed):
        obs, info = dream.reset(seed=seed)
        out = [obs]
        for a in (2, 2, 3, 0):
            out.append(dream.step(a)[0])
        return np.stack(out), info["start"]

    a, start_a = roll(3)
    b, start_b = roll(3)
    assert start_a == start_b
    np.testing.assert_array_equal(a, b)


def test_bad_action_names_the_value(dream):
    dream.reset(seed=0)
    with pytest.raises(ValueError, match="7"):
        dream.step(7)


def test_registered_through_gymnasium_make(tiny_bundle, tmp_path):
    path = tiny_bundle.save(tmp_path / "bundle")
    env_id = "worldmodel/DreamTinyTest-v0"
    gym.register(id=env_id, entry_point="envs.dream_env:DreamEnv", kwargs={"checkpoint": str(path)},
                 max_episode_steps=5)
    try:
        env = gym.make(env_id)
        env.reset(seed=0)
        truncated = False
        for _ in range(5):
            _, reward, terminated, truncated, _ = env.step(0)
            assert reward in (-1.0, 0.0, 1.0)
        assert truncated  # max_episode_steps from the registration
    finally:
        gym.registry.pop(env_id, None)


def test_shipped_dreams_are_registered():
    from envs.registration import dream_id, shipped_checkpoints

    for name in shipped_checkpoints():
        assert dream_id(name) in gym.registry
