"""The action contract: a_t, taken after observing x_t, produces x_{t+1}, in the recorded data
and in the dynamics model (slot j is conditioned on a_{j-1} and only frames >= j see it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs
from conftest import make_tiny_bundle, perturb_, record_pong
from recorders.dataset import EpisodeDataset
from worldmodel.config import get_preset, update_dataclass
from worldmodel.dynamics import DynamicsModel

SEED = 11


@pytest.fixture(scope="module")
def recorded_episode(tmp_path_factory):
    root = tmp_path_factory.mktemp("align") / "pong"
    record_pong(root, episodes=1, max_steps=25, seed=SEED)
    ds = EpisodeDataset(root)
    assert len(ds) == 1
    return ds[0]


def test_recorded_actions_replay_to_recorded_frames(recorded_episode):
    ep = recorded_episode
    assert ep.info["vector_seed"] == SEED and ep.info["env_index"] == 0
    assert len(np.unique(ep.actions)) > 1, "a random policy should vary its actions"
    env = envs.make("pong", max_episode_steps=25)
    try:
        obs, _ = env.reset(seed=SEED)                   # env i of the recorder gets seed + i
        np.testing.assert_array_equal(obs, ep.frames[0])
        for t, a in enumerate(ep.actions):
            obs, reward, term, trunc, _ = env.step(int(a))
            np.testing.assert_array_equal(obs, ep.frames[t + 1], err_msg=f"a_{t} did not produce x_{t + 1}")
            assert reward == ep.rewards[t] and term == ep.terminated[t] and trunc == ep.truncated[t]
    finally:
        env.close()


def test_replay_detects_shifted_actions(recorded_episode):
    """The replay check can fail: actions shifted by one step produce other frames."""
    ep = recorded_episode
    env = envs.make("pong")
    try:
        env.reset(seed=SEED)
        shifted = np.concatenate([[0], ep.actions[:-1]])
        mismatches = 0
        for t, a in enumerate(shifted):
            obs, *_ = env.step(int(a))
            mismatches += not np.array_equal(obs, ep.frames[t + 1])
    finally:
        env.close()
    assert mismatches > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_vectorized_recording_replays_per_env(tmp_path, workers):
    """With several envs, in one process or shared out among worker processes, episode info
    names the env and its seed (env i gets seed + i), and every episode, including later ones
    after an autoreset, replays from that seed."""
    from recorders.collect import RecordConfig, record

    record(RecordConfig(game="pong", out=str(tmp_path / "ds"), episodes=4, max_steps=10, num_envs=2, vector="sync",
                        policy="mixed", seed=SEED, workers=workers), progress=False)
    ds = EpisodeDataset(tmp_path / "ds")
    assert len(ds) == 4
    assert sorted(ds[i].info["env_index"] for i in range(4)) == [0, 0, 1, 1]
    env = envs.make("pong", max_episode_steps=10)
    try:
        for i in range(len(ds)):
            ep = ds[i]
            assert ep.info["vector_seed"] == SEED + ep.info["env_index"]
            obs, _ = env.reset(seed=ep.info["vector_seed"])
            np.testing.assert_array_equal(obs, ep.frames[0])
            for t, a in enumerate(ep.actions):
                obs, *_ = env.step(int(a))
                np.testing.assert_array_equal(obs, ep.frames[t + 1], err_msg=f"episode {i}: a_{t} -> x_{t + 1}")
    finally:
        env.close()


@pytest.fixture(scope="module")
def dynamics():
    m = get_preset("tiny")
    cfg = update_dataclass(m.dynamics, dict(num_actions=6, token_dim=m.tokenizer.token_dim,
                                            tokens_per_frame=m.tokenizer.tokens_per_frame), where="dynamics")
    torch.manual_seed(0)
    model = perturb_(DynamicsModel(cfg), seed=1).eval()
    gates = torch.cat([blk.ada[-1].weight.flatten() for blk in model.blocks])
    assert gates.abs().max() > 0, "adaLN-Zero gates must be open for this test to mean anything"
    return model


def test_fresh_model_gates_are_closed():
    """Why the fixture perturbs: a fresh model ignores actions entirely (adaLN-Zero)."""
    m = get_preset("tiny")
    cfg = update_dataclass(m.dynamics, dict(num_actions=6, token_dim=m.tokenizer.token_dim,
                                            tokens_per_frame=m.tokenizer.tokens_per_frame), where="dynamics")
    model = DynamicsModel(cfg)
    for blk in model.blocks:
        assert (blk.ada[-1].weight == 0).all() and (blk.ada[-1].bias == 0).all()


@pytest.mark.parametrize("j", [0, 1, 2, 3])
def test_action_at_slot_j_affects_only_frames_from_j(dynamics, j):
    cfg = dynamics.cfg
    f = cfg.context_frames
    g = torch.Generator().manual_seed(j)
    tokens = torch.randn(2, f, cfg.tokens_per_frame, cfg.token_dim, generator=g)
    levels = torch.rand(2, f, generator=g)
    actions = torch.tensor([[-1, 2, 3, 1], [-1, 0, 5, 4]])[:, :f]
    changed = actions.clone()
    changed[:, j] = (actions[:, j] + 3) % 6 if j > 0 else 2       # slot 0: "no action" -> a real one
    with torch.no_grad():
        a = dynamics(tokens, levels, actions)
        b = dynamics(tokens, levels, changed)
    assert a.shape == (2, f, cfg.tokens_per_frame, cfg.token_dim)
    # Frames before j are bit-identical: block-causal attention hides the future.
    assert torch.equal(a[:, :j], b[:, :j])
    # Frame j and every later one see the new action (directly, or through attention).
    for k in range(j, f):
        diff = (a[:, k] - b[:, k]).abs().amax(dim=(1, 2))
        assert (diff > 1e-5).all(), f"action at slot {j} did not change frame {k}: {diff}"


def test_negative_action_is_the_null_action(dynamics):
    cfg = dynamics.cfg
    tokens = torch.randn(1, 2, cfg.tokens_per_frame, cfg.token_dim)
    levels = torch.zeros(1, 2)
    with torch.no_grad():
        a = dynamics(tokens, levels, torch.tensor([[-1, 2]]))
        b = dynamics(tokens, levels, torch.tensor([[cfg.num_actions, 2]]))
        c = dynamics(tokens, levels, torch.tensor([[0, 2]]))
    assert torch.equal(a, b)
    assert not torch.allclose(a[:, 0], c[:, 0])


def test_simulator_frame_depends_on_action(pong_trajectory):
    """End to end through the Simulator: with the same noise, different actions give different frames."""
    from worldmodel import Simulator

    frames, actions = pong_trajectory
    bundle = make_tiny_bundle(frames[None, 2:5], actions[None, 2:4], seed=3)
    outs = []
    for action in (2, 3):
        sim = Simulator(bundle, batch_size=1, seed=0)
        sim.reset(bundle.start_frames.numpy(), bundle.start_actions.numpy())
        outs.append(sim.step([action])[0])
    assert not np.array_equal(outs[0], outs[1])
