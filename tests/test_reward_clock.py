"""The reward clock (``DynamicsConfig.reward_clock``): frames since the last non-zero reward as
conditioning. The data and the Simulator align it the same way (a frame is made with the clock
of the frame before it), the model starts as the one without it and warm-starts from one, and
onnxruntime runs it as torch does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recorders.dataset import NO_REWARD_SEEN, Episode, WindowSampler, frames_since_reward
from tests.conftest import make_tiny_bundle, random_dynamics, warm_start_dynamics
from worldmodel import Simulator
from worldmodel.config import DynamicsConfig
from worldmodel.dynamics import DynamicsModel

CFG = DynamicsConfig(width=32, depth=2, heads=2, context_frames=3, num_actions=3, token_dim=12, tokens_per_frame=16)
BIG = NO_REWARD_SEEN


def test_the_clock_counts_frames_since_the_last_reward():
    clock = frames_since_reward(np.array([0, 1, 0, 0, -1, 0], np.float32))
    assert clock.tolist() == [BIG, BIG, 0, 1, 2, 0, 1]


def test_a_training_window_gives_each_frame_the_clock_of_the_frame_before_it():
    rewards = np.array([0, 0, 1, 0, 0, 0, -1, 0, 0], np.float32)
    ep = Episode(frames=np.zeros((10, 4, 4, 3), np.uint8), actions=np.zeros(9, np.int64), rewards=rewards,
                 terminated=np.zeros(9, bool), truncated=np.zeros(9, bool))
    sampler = WindowSampler([ep], window=4)
    # frames 0..3: frame 0 has no frame before it; frames 1, 2 are before any reward.
    assert sampler.window_at(0, 0)["since_reward"].tolist() == [BIG, BIG, BIG, BIG]
    # frames 3..6: made with the clocks of frames 2..5 (the reward of 2 -> 3 lands on frame 3).
    assert sampler.window_at(0, 3)["since_reward"].tolist() == [BIG, 0, 1, 2]
    assert sampler.window_at(0, 6)["since_reward"].tolist() == [2, 3, 0, 1]


def test_it_starts_as_the_model_without_it_and_caps_the_clock(capsys):
    torch.manual_seed(0)
    plain = random_dynamics(CFG)
    clocked = DynamicsModel(dataclasses.replace(CFG, reward_clock=5))
    assert not clocked.clock_emb.weight.any() and not clocked.clock_in.weight.any()
    assert warm_start_dynamics(clocked, plain)
    assert "clock_emb.weight" in capsys.readouterr().out
    tokens, levels = torch.randn(2, 3, 16, 12), torch.rand(2, 3)
    actions = torch.randint(0, 3, (2, 3))
    since = torch.tensor([[0, 1, 2], [7, BIG, 3]])
    with torch.no_grad():
        torch.testing.assert_close(clocked(tokens, levels, actions, since_reward=since), plain(tokens, levels, actions))
        torch.nn.init.normal_(clocked.clock_emb.weight)
        torch.nn.init.normal_(clocked.clock_in.weight)
        out = clocked(tokens, levels, actions, since_reward=since)
        assert (out - plain(tokens, levels, actions)).abs().max() > 1e-3
        # Past the cap, and "none seen", all read as the cap.
        capped = clocked(tokens, levels, actions, since_reward=since.clamp(max=5))
        torch.testing.assert_close(out, capped)
        torch.testing.assert_close(clocked(tokens, levels, actions), clocked(tokens, levels, actions,
                                                                            since_reward=torch.full((2, 3), 5)))
    with pytest.raises(ValueError, match="differs in reward_clock"):
        warm_start_dynamics(plain, clocked)
    with pytest.raises(ValueError, match="reward_clock must be"):
        dataclasses.replace(CFG, reward_clock=-1)


@pytest.fixture(scope="module")
def clocked_bundle(tiny_bundle):
    frames, actions = tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy()
    bundle = make_tiny_bundle(frames, actions, seed=5, reward_clock=8)
    return dataclasses.replace(bundle, sampler=dataclasses.replace(bundle.sampler, quantize_frames=False))


def test_the_simulator_primes_and_keeps_the_clock_as_the_data_does(clocked_bundle, monkeypatch):
    sim = Simulator(clocked_bundle, batch_size=1, backend="torch", precision="float32", seed=0, sampling_steps=1)
    seen = []
    forward = sim.dynamics.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["since_reward"][0].tolist())
        return forward(*args, **kwargs)

    monkeypatch.setattr(sim.dynamics, "forward", spy)
    frames = clocked_bundle.start_frames.numpy()[:1, -3:]
    # Frames f0 f1 f2, the reward of f1 -> f2 non-zero, f0 five frames after the last reward:
    # clocks f0 5, f1 6, f2 0.
    sim.reset(frames, np.zeros((1, 2), np.int64), rewards=np.array([[0.0, 1.0]]), since_reward=np.array([5]))
    scripted = iter([0.0, -1.0, 0.0, 0.0])
    monkeypatch.setattr(sim, "_reward_and_end", lambda shown, a: (np.array([next(scripted)], np.float32),
                                                                   np.zeros(1, bool)))
    for _ in range(4):
        sim.step(np.zeros(1, np.int64))
    slots = min(3, sim.cache.slots + 1)
    primed = [BIG, 5, 6][3 - slots:-1]
    # Each pass commits the pending frame (made with the clock before it) and makes the next.
    assert seen == [primed, [6, 0], [0, 1], [1, 0], [0, 1]]
    # The same rewards through the data's clock give the same sequence.
    data = frames_since_reward(np.array([0, 1, 0, -1, 0, 0], np.float32))[2:]
    assert data.tolist() == [0, 1, 0, 1, 2]
    with pytest.raises(ValueError, match="rewards must have shape"):
        sim.reset(frames, np.zeros((1, 2), np.int64), rewards=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="since_reward must be"):
        sim.reset(frames, np.zeros((1, 2), np.int64), since_reward=np.array([-1]))


def test_onnx_frames_match_torch_with_a_reward_clock(clocked_bundle, tmp_path, monkeypatch):
    from worldmodel.onnx_backend import onnx_available

    if not onnx_available(torch.device("cpu")):
        pytest.skip("onnxruntime, onnx or onnxscript not installed")
    monkeypatch.setenv("DREAMGAMES_CACHE", str(tmp_path))
    frames, actions = clocked_bundle.start_frames.numpy(), clocked_bundle.start_actions.numpy()
    sims = [Simulator(clocked_bundle, batch_size=2, backend="onnx", seed=7),
            Simulator(clocked_bundle, batch_size=2, backend="torch", seed=7, precision="float32")]
    rewards = np.zeros(actions.shape)
    rewards[0, -1] = 1.0
    for sim in sims:
        sim.reset(frames, actions, rewards=rewards, since_reward=np.array([3, 40]))
    rng = np.random.default_rng(0)
    for _ in range(6):
        a = rng.integers(clocked_bundle.num_actions, size=2)
        fo, ft = (sim.step(a)[0] for sim in sims)
        assert int(np.abs(fo.astype(np.int16) - ft).max()) <= 2   # test_onnx_backend's FRAME_TOLERANCE
    assert sims[0].since.tolist() == sims[1].since.tolist()
