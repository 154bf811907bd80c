"""The recording policies: which one each setting builds, and that the scripted players play."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from recorders.collect import RecordConfig, make_policy
from recorders.policies import RandomRepeatPolicy, ScriptedBreakoutPolicy, ScriptedPongPolicy


def _points_per_step(policy, game: str, steps: int, seed: int = 0) -> float:
    env = envs.make(game)
    try:
        obs, _ = env.reset(seed=seed)
        policy.episode_start(0)
        total = 0.0
        for _ in range(steps):
            obs, reward, term, trunc, _ = env.step(int(policy(obs[None])[0]))
            total += reward
            if term or trunc:
                obs, _ = env.reset()
                policy.episode_start(0)
    finally:
        env.close()
    return total / steps


def test_scripted_breakout_breaks_more_bricks_than_random_play():
    scripted = _points_per_step(ScriptedBreakoutPolicy(1, seed=0), "breakout", 1500)
    random = _points_per_step(RandomRepeatPolicy(1, 4, seed=0), "breakout", 1500)
    assert scripted > 2 * random and scripted > 0.005, (scripted, random)


def test_make_policy_by_game():
    assert isinstance(make_policy(RecordConfig(game="breakout", policy="scripted"), 2), ScriptedBreakoutPolicy)
    assert isinstance(make_policy(RecordConfig(game="pong", policy="scripted"), 2), ScriptedPongPolicy)
    # "mixed" stays random play for Breakout: the shipped checkpoint's command records that.
    assert isinstance(make_policy(RecordConfig(game="breakout", policy="mixed"), 2), RandomRepeatPolicy)
    with pytest.raises(ValueError, match="cartpole"):
        make_policy(RecordConfig(game="cartpole", policy="scripted"), 2)


def test_scripted_breakout_acts_on_a_batch():
    env = envs.make("breakout")
    try:
        obs, _ = env.reset(seed=1)
    finally:
        env.close()
    actions = ScriptedBreakoutPolicy(3, seed=0)(np.stack([obs] * 3))
    assert actions.shape == (3,) and actions.dtype == np.int64 and ((actions >= 0) & (actions < 4)).all()
