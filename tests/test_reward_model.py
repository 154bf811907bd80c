"""The reward and end model: decoding, learning a pixel rule, and the dream's rewards coming from it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from worldmodel import Simulator
from worldmodel.config import RewardConfig
from worldmodel.reward_model import (
    END_POS_WEIGHT,
    REWARD_CLASS_WEIGHTS,
    RewardEndModel,
    RewardEndOutput,
    game_over_targets,
    reward_end_loss,
)

TINY = RewardConfig(channels=(8, 16), hidden=16, num_actions=3)


def test_decode_undoes_the_class_weights():
    w = torch.tensor(REWARD_CLASS_WEIGHTS).log()
    # Equal unweighted odds of -1 and 0 plus the training weights: 0 wins only once the weights are taken out.
    logits = torch.stack([w + torch.tensor([0.0, 0.1, -5.0]), w + torch.tensor([-5.0, 0.0, 0.2])])
    end = torch.tensor([math.log(END_POS_WEIGHT) - 0.1, math.log(END_POS_WEIGHT) + 0.1])
    rewards, terminated = RewardEndOutput(reward_logits=logits, end_logits=end).decode()
    assert rewards.tolist() == [0.0, 1.0] and terminated.tolist() == [False, True]


def test_game_over_targets_span_the_still_screen_before_the_end():
    frames = np.zeros((8, 4, 4, 3), np.uint8)
    frames[:, 0, 0, 0] = [0, 1, 2, 3, 4, 9, 9, 9]        # x_5 .. x_7 the same final screen
    ended = np.array([False] * 6 + [True])
    # Transitions 4 (x_4 -> x_5, into the still screen), 5 and 6 are the game over.
    assert game_over_targets(frames, ended).tolist() == [False] * 4 + [True] * 3
    moving = frames.copy()
    moving[:, 0, 0, 1] = np.arange(8)                  # the screen changes up to the end (Pong)
    assert game_over_targets(moving, ended).tolist() == ended.tolist()
    assert not game_over_targets(frames, np.zeros(7, bool)).any()     # truncated, or still playing
    assert game_over_targets(np.zeros((4, 4, 4, 3), np.uint8), np.array([False, False, True])).all()


def test_predict_shapes_and_dtypes():
    model = RewardEndModel(TINY).eval()
    frames = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        rewards, terminated = model.predict(frames, frames.roll(1, dims=0), torch.tensor([0, 1, 2, 0, 1]))
    assert rewards.shape == (5,) and rewards.dtype == torch.float32 and set(rewards.tolist()) <= {-1.0, 0.0, 1.0}
    assert terminated.shape == (5,) and terminated.dtype == torch.bool


def _synthetic(n: int, gen: torch.Generator):
    """Transitions where a bright block appearing at the right edge earns +1, at the left edge -1,
    in the middle nothing; a block in the top-left corner ends the episode."""
    frames = torch.full((n, 2, 3, 64, 64), -1.0)
    kind = torch.randint(0, 4, (n,), generator=gen)                   # 0: middle, 1: right, 2: left, 3: end
    rows = torch.randint(8, 56, (n,), generator=gen)
    cols = torch.where(kind == 1, 60, torch.where(kind == 2, 2, torch.randint(20, 44, (n,), generator=gen)))
    for i in range(n):
        r, c = (2, 2) if kind[i] == 3 else (int(rows[i]), int(cols[i]))
        frames[i, 1, :, r:r + 2, c:c + 2] = 1.0
        frames[i, 0, :, 32:34, 32:34] = 1.0                              # something in both frames
    rewards = torch.where(kind == 1, 1.0, torch.where(kind == 2, -1.0, 0.0))
    return frames, torch.randint(0, 3, (n,), generator=gen), rewards, kind == 3


def test_learns_a_reward_rule_from_pixels():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = RewardEndModel(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss, _ = reward_end_loss(model, *_synthetic(32, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    frames, actions, rewards, ends = _synthetic(200, torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred_r, pred_e = model(frames[:, 0], frames[:, 1], actions).decode()
    assert (pred_r == rewards).float().mean() > 0.9
    assert (pred_e == ends).float().mean() > 0.9


def _forced(bundle, *, reward_class: int, end: bool):
    """A copy of ``bundle`` whose reward model always answers ``reward_class`` and ``end``."""
    model = RewardEndModel(dataclasses.replace(bundle.reward_config))
    last = model.head[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 20.0 if end else -20.0]))
        last.bias[reward_class] = 20.0
    return dataclasses.replace(bundle, reward_model=model.eval())


@pytest.mark.parametrize("reward_class,end,expected", [(2, True, 1.0), (0, False, -1.0), (1, False, 0.0)])
def test_dream_rewards_come_from_the_reward_model(tiny_bundle, reward_class, end, expected):
    bundle = _forced(tiny_bundle, reward_class=reward_class, end=end)
    sim = Simulator(bundle, batch_size=2, seed=0)
    sim.reset(bundle.start_frames.numpy(), bundle.start_actions.numpy())
    for _ in range(3):
        _, rewards, terminated = sim.step(np.array([2, 3]))
        assert rewards.tolist() == [expected, expected] and terminated.tolist() == [end, end]


def test_dream_rewards_match_the_reward_model_on_the_shown_frames(tiny_bundle):
    sim = Simulator(tiny_bundle, batch_size=2, seed=1, precision="float32")
    assert sim.reward_model is tiny_bundle.reward_model          # a bfloat16 Simulator's copy: the test below
    prev = sim.reset(tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy())
    for action in ([2, 3], [0, 1], [4, 5]):
        frames, rewards, terminated = sim.step(np.array(action))
        with torch.no_grad():
            r, e = tiny_bundle.reward_model.predict(torch.as_tensor(prev), torch.as_tensor(frames),
                                                    torch.tensor(action))
        np.testing.assert_array_equal(rewards, r.numpy())
        np.testing.assert_array_equal(terminated, e.numpy())
        prev = frames


def test_bfloat16_copy_of_the_shipped_reward_model_decides_as_float32():
    """The Simulator's bfloat16 reward model decides the shipped Pong model's held-out transitions,
    every point among them, as the float32 model does."""
    import worldmodel
    from recorders.dataset import episode_paths, load_episode
    from training.evaluate import SHIPPED_HELDOUT

    model = worldmodel.load("pong")
    cast = Simulator(model, backend="torch", precision="bfloat16").reward_model
    assert next(cast.parameters()).dtype == torch.bfloat16
    assert next(model.reward_model.parameters()).dtype == torch.float32      # the bundle's model is untouched
    points = 0
    for path in episode_paths(SHIPPED_HELDOUT / "pong")[:3]:
        episode = load_episode(path)
        frames, actions = torch.from_numpy(episode.frames), torch.from_numpy(episode.actions).long()
        for s in range(0, len(actions), 512):
            a = actions[s:s + 512]
            prev, nxt = frames[s:s + len(a)], frames[s + 1:s + 1 + len(a)]
            with torch.no_grad():
                r32, e32 = model.reward_model.predict(prev, nxt, a)
                r16, e16 = cast.predict(prev, nxt, a)
            assert torch.equal(r16, r32) and torch.equal(e16, e32)
            points += int((r32 != 0).sum())
    assert points >= 20                                                      # the decisions that matter are in it


def test_without_a_reward_model_the_dream_earns_nothing(tiny_bundle):
    bundle = dataclasses.replace(tiny_bundle, reward_model=None, reward_config=None)
    sim = Simulator(bundle, batch_size=2, seed=0)
    sim.reset(bundle.start_frames.numpy(), bundle.start_actions.numpy())
    _, rewards, terminated = sim.step(np.array([2, 3]))
    assert rewards.tolist() == [0.0, 0.0] and terminated.tolist() == [False, False]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="hidden"):
        RewardConfig(hidden=0)
    with pytest.raises(ValueError, match="channels"):
        RewardConfig(channels=())


def test_event_oversampling_is_importance_weighted(monkeypatch):
    """The reward stage draws a quarter of each batch from the rare transitions; the importance
    weights make the weighted loss an unbiased estimate of the loss under uniform sampling."""
    import training.loops as loops
    from recorders.dataset import Episode, WindowSampler

    t = 40
    rewards = np.zeros(t, np.float32)
    rewards[[5, 20]] = [1.0, -1.0]
    ends = np.zeros(t, bool)
    ends[-1] = True
    ep = Episode(frames=np.zeros((t + 1, 64, 64, 3), np.uint8), actions=np.zeros(t, np.int64), rewards=rewards,
                 terminated=ends, truncated=np.zeros(t, bool))
    seen = []
    monkeypatch.setattr(loops, "reward_end_loss",
                        lambda model, x, a, r, e, w: seen.append((r.numpy(), e.numpy(), w.numpy())) or (0.0, {}))
    loss_fn = loops.reward_loss_fn(WindowSampler([ep], 2, seed=0), 8, "cpu")
    for _ in range(400):
        loss_fn(None)
    r, e, w = (np.concatenate(z) for z in zip(*seen))
    event = (r != 0) | e
    assert event.mean() > 0.25                                 # 3 of 40 transitions, sampled far more often
    assert abs(w.mean() - 1.0) < 0.05                          # E[weight] = 1 under the sampling distribution
    # Each event's weighted frequency matches its true frequency (1 in 40).
    for idx in (5, 20):
        hit = r == rewards[idx]
        assert abs((w * hit).sum() / len(w) - 1 / t) < 0.01
