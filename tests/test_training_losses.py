"""The dynamics training loss: teacher forcing and scheduled sampling on the model's own frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recorders.dataset import Episode, WindowSampler
from training.loops import dynamics_loss_fn
from worldmodel.config import DynamicsConfig, TokenizerConfig
from worldmodel.tokenizer import build_tokenizer, frames_to_tensor, moving_mask, tensor_to_frames

FRAMES, SIZE = 6, 16


class SpyDynamics(torch.nn.Module):
    """Stands in for a DynamicsModel: records each call's inputs and answers a fixed frame."""

    def __init__(self, answer: torch.Tensor):
        super().__init__()
        self.cfg = DynamicsConfig(token_dim=answer.shape[-1], tokens_per_frame=answer.shape[0])
        self.answer = answer                   # (N, D) tokens every frame is predicted as
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls: list[dict] = []

    def forward(self, tokens, levels, actions, *, skip_tokens, since_reward, events=None):
        assert events is None   # a model without event codes gets none
        self.calls.append(dict(tokens=tokens.clone(), levels=levels.clone(), skip=skip_tokens.clone(),
                               since=since_reward.clone(), grad=torch.is_grad_enabled()))
        return self.scale * self.answer.expand_as(tokens)


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (FRAMES + 4, SIZE, SIZE, 3), dtype=np.uint8)
    n = len(frames) - 1
    episode = Episode(frames=frames, actions=rng.integers(0, 3, n), rewards=np.zeros(n, np.float32),
                      terminated=np.zeros(n, bool), truncated=np.zeros(n, bool))
    tokenizer = build_tokenizer(TokenizerConfig(kind="patch", frame_size=SIZE, patch_size=4))
    # A prediction off the uint8 grid: the loss must round it as a dream frame is rounded.
    answer_frame = torch.full((1, 1, 3, SIZE, SIZE), 0.1234)
    answer = tokenizer.encode(answer_frame)[0, 0]
    return episode, tokenizer, answer, answer_frame


def _loss(episode, tokenizer, dyn, probability, seed=0, stale=0.0, passes=1):
    sampler = WindowSampler([episode], FRAMES, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = dynamics_loss_fn(sampler, 2, torch.device("cpu"), tokenizer, moving_weight=0.0, generator=gen,
                               scheduled_sampling=probability, scheduled_sampling_passes=passes, stale_pixels=stale)
    return loss_fn(dyn), sampler


def test_teacher_forcing_feeds_the_real_previous_frames(setup):
    episode, tokenizer, answer, _ = setup
    dyn = SpyDynamics(answer)
    (loss, _), sampler = _loss(episode, tokenizer, dyn, 0.0)
    assert len(dyn.calls) == 1 and dyn.calls[0]["grad"]
    batch = WindowSampler([episode], FRAMES, seed=0).sample(2)
    real = tokenizer.encode(frames_to_tensor(torch.as_tensor(batch["frames"])))
    torch.testing.assert_close(dyn.calls[0]["skip"][:, 1:], real[:, :-1])
    assert dyn.calls[0]["since"].tolist() == batch["since_reward"].tolist()   # the windows' reward clocks
    # The loss compares the prediction with the real frames (slot 0 is context only).
    expected = (answer - real[:, 1:]).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_scheduled_sampling_swaps_in_the_models_own_rounded_frames(setup):
    episode, tokenizer, answer, answer_frame = setup
    dyn = SpyDynamics(answer)
    (loss, _), _ = _loss(episode, tokenizer, dyn, 1.0)
    first, second = dyn.calls
    assert not first["grad"] and second["grad"]          # the own-frame pass builds no graph
    real = tokenizer.encode(frames_to_tensor(torch.as_tensor(
        WindowSampler([episode], FRAMES, seed=0).sample(2)["frames"])))
    own = tokenizer.encode(frames_to_tensor(tensor_to_frames(answer_frame)))[0, 0]
    assert not torch.allclose(own, answer)                # rounding to uint8 changed it
    swapped = first["levels"] >= 0.5                      # (B, T): predicted from a high noise level
    assert swapped.any() and (~swapped).any()
    skip = second["skip"][:, 1:]                          # the base each frame corrects: the frame before
    for b in range(2):
        for t in range(FRAMES - 1):
            want = own if swapped[b, t] else real[b, t]
            torch.testing.assert_close(skip[b, t], want.expand_as(skip[b, t]))
    # Targets stay the real frames whatever the inputs were.
    expected = (answer - real[:, 1:]).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert dyn.scale.grad is not None


def test_a_second_scheduled_sampling_pass_predicts_from_the_models_own_frames(setup):
    episode, tokenizer, answer, answer_frame = setup
    dyn = SpyDynamics(answer)
    (loss, _), _ = _loss(episode, tokenizer, dyn, 1.0, passes=2)
    first, second, third = dyn.calls
    assert not first["grad"] and not second["grad"] and third["grad"]
    real = tokenizer.encode(frames_to_tensor(torch.as_tensor(
        WindowSampler([episode], FRAMES, seed=0).sample(2)["frames"])))
    own = tokenizer.encode(frames_to_tensor(tensor_to_frames(answer_frame)))[0, 0]
    once = first["levels"] >= 0.5                         # swapped by the first pass
    twice = once | (second["levels"] >= 0.5)              # ... or by the second
    assert (twice & ~once).any()
    for call, swapped in ((second, once), (third, twice)):
        skip = call["skip"][:, 1:]
        for b in range(2):
            for t in range(FRAMES - 1):
                want = own if swapped[b, t] else real[b, t]
                torch.testing.assert_close(skip[b, t], want.expand_as(skip[b, t]))
    torch.testing.assert_close(loss, (answer - real[:, 1:]).pow(2).mean(), rtol=1e-5, atol=1e-6)


def test_scheduled_sampling_passes_are_checked():
    from training.pipeline import build_config

    with pytest.raises(ValueError, match="scheduled_sampling_passes must be >= 1"):
        build_config({"game": "pong", "preset": "tiny", "scheduled_sampling_passes": 0})


def test_stale_pixels_come_from_one_to_three_frames_earlier_and_targets_stay_real(setup):
    episode, tokenizer, answer, _ = setup
    dyn = SpyDynamics(answer)
    (loss, _), _ = _loss(episode, tokenizer, dyn, 0.0, stale=0.3)
    real_frames = torch.as_tensor(WindowSampler([episode], FRAMES, seed=0).sample(2)["frames"])   # (B, T, H, W, 3)
    fed = tensor_to_frames(tokenizer.decode(dyn.calls[0]["skip"][:, 1:]))   # inputs 0..T-2, as the skip base
    same = (fed == real_frames[:, :-1]).all(-1)                             # (B, T-1, H, W)
    assert 0.55 < same[:, 1:].float().mean() < 0.85                         # about 30% drawn (random frames differ)
    assert same[:, 0].all()                                                 # the first frame has nothing earlier
    for t in range(1, FRAMES - 1):
        earlier = torch.stack([real_frames[:, max(t - k, 0)] for k in (1, 2, 3)])   # (3, B, H, W, 3)
        from_earlier = (fed[:, t] == earlier).all(-1).any(0)
        assert (same[:, t] | from_earlier).all()                            # every pixel real or stale
    real = tokenizer.encode(frames_to_tensor(real_frames))
    torch.testing.assert_close(loss, (answer - real[:, 1:]).pow(2).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["scheduled_sampling", "stale_pixels"])
def test_training_probabilities_are_checked(name):
    from training.pipeline import build_config

    with pytest.raises(ValueError, match=f"{name} must be a probability"):
        build_config({"game": "pong", "preset": "tiny", name: 1.5})


def test_focal_cross_entropy_weights_each_pixel_by_how_wrong_the_model_is():
    from training.loops import focal_cross_entropy

    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    targets = torch.tensor([0, 0, 0])                     # confident and right, unsure, confident and wrong
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(focal_cross_entropy(logits, targets, 0.0), ce)
    p = torch.softmax(logits, -1)[:, 0]
    focal = focal_cross_entropy(logits, targets, 2.0)
    torch.testing.assert_close(focal, (1 - p) ** 2 * ce)
    share = focal / ce                                    # the weight each item keeps
    assert share[0] < 0.002 < share[1] < share[2] < 1     # the right pixel all but drops out


@pytest.mark.parametrize("name", ["focal_gamma", "hard_pixel_weight"])
def test_palette_loss_options_are_checked(name):
    from training.pipeline import build_config

    palette = {"dynamics": {"palette_size": 32}}
    assert getattr(build_config({"game": "pong", "preset": "tiny", name: 2.0, "model": palette}), name) == 2.0
    with pytest.raises(ValueError, match=f"{name} must be >= 0, got -1"):
        build_config({"game": "pong", "preset": "tiny", name: -1.0, "model": palette})
    with pytest.raises(ValueError, match=f"{name}=2.0 needs the palette output"):
        build_config({"game": "pong", "preset": "tiny", name: 2.0, "model": {"dynamics": {"palette_size": 0}}})


@pytest.mark.parametrize("frames", [1, 3])
def test_free_running_rollout_makes_the_frames_the_dream_shows(pong_trajectory, frames):
    """The training rollout (no cache, one pass per frame over the window) draws what the
    Simulator draws from the same real frames, actions and noise: the dream's own errors."""
    from tests.conftest import make_tiny_bundle
    from training.loops import free_running_rollout
    from worldmodel import Simulator

    real, acts = pong_trajectory
    bundle = make_tiny_bundle(real[None, :3], acts[None, :2], palette_size=8)
    with torch.no_grad():
        bundle.dynamics.copy_bias.zero_()                        # no pull towards the last frame: colours follow the noise
    t = bundle.dynamics_config.context_frames                       # a training window
    starts = (4, 12)
    window = np.stack([real[s:s + t] for s in starts])               # (B, T, H, W, 3)
    produced = np.stack([np.concatenate([[-1], acts[s:s + t - 1]]) for s in starts])   # action that made frame k
    sim = Simulator(bundle, batch_size=2, backend="torch", seed=7, sampling_steps=1, precision="float32")
    sim.reset(window[:, :t - frames], produced[:, 1:t - frames])
    dream = np.stack([sim.step(produced[:, k])[0] for k in range(t - frames, t)], axis=1)

    tokens = bundle.tokenizer.encode(frames_to_tensor(torch.as_tensor(window))).float()
    made = free_running_rollout(bundle.dynamics, bundle.tokenizer, tokens, torch.as_tensor(produced), None, frames,
                                generator=torch.Generator().manual_seed(7))
    out = tensor_to_frames(bundle.tokenizer.decode(made)).numpy()
    np.testing.assert_array_equal(out[:, :t - frames], window[:, :t - frames])    # the real frames stay
    same = (out[:, t - frames:] == dream).all(-1).mean()
    other = free_running_rollout(bundle.dynamics, bundle.tokenizer, tokens, torch.as_tensor(produced), None, frames,
                                 generator=torch.Generator().manual_seed(8))
    other_same = (tensor_to_frames(bundle.tokenizer.decode(other)).numpy()[:, t - frames:] == dream).all(-1).mean()
    # The cached path and this one round differently in the last bits: allow a stray pixel. Other
    # noise draws other colours, so the match is the same frames' and not a copy of the last one.
    assert same > 0.999 and other_same < 0.9, (same, other_same)


def test_rollout_frames_are_checked(setup):
    episode, tokenizer, answer, _ = setup
    sampler = WindowSampler([episode], FRAMES, seed=0)
    with pytest.raises(ValueError, match="rollout_frames must be >= 0, got -1"):
        dynamics_loss_fn(sampler, 2, torch.device("cpu"), tokenizer, moving_weight=0.0, rollout_frames=-1)
    loss_fn = dynamics_loss_fn(sampler, 2, torch.device("cpu"), tokenizer, moving_weight=0.0, rollout_frames=FRAMES)
    with pytest.raises(ValueError, match=f"rollout_frames must be below the window's {FRAMES} frames"):
        loss_fn(SpyDynamics(answer))


def test_rollout_frames_setting_is_checked():
    from training.pipeline import build_config

    assert build_config({"game": "pong", "preset": "tiny", "rollout_frames": 3}).rollout_frames == 3
    with pytest.raises(ValueError, match=r"rollout_frames must be in \[0, 3\].*got 4"):
        build_config({"game": "pong", "preset": "tiny", "rollout_frames": 4})
    with pytest.raises(ValueError, match=r"rollout_frames must be in \[0, 3\].*got -1"):
        build_config({"game": "pong", "preset": "tiny", "rollout_frames": -1})


def test_clock_dropout_reads_none_seen_in_whole_windows(setup):
    """``clock_dropout`` replaces a window's reward clock by "none seen" (the cap) at every frame,
    in about that share of the windows, and leaves the other windows' clocks as they were."""
    episode, tokenizer, answer, _ = setup
    episode.rewards[::3] = 1.0                       # a point every third frame: every real clock is below the cap
    dyn = SpyDynamics(answer)
    dyn.cfg.reward_clock = cap = 5

    def clocks(dropout):
        sampler = WindowSampler([episode], FRAMES, seed=0)
        loss_fn = dynamics_loss_fn(sampler, 64, torch.device("cpu"), tokenizer, moving_weight=0.0,
                                   generator=torch.Generator().manual_seed(0), clock_dropout=dropout)
        dyn.calls.clear()
        loss_fn(dyn)
        return dyn.calls[-1]["since"]

    real = clocks(0.0)
    assert (real.clamp(max=cap) < cap).any(1).all()  # each window's real clock says something
    assert (clocks(1.0) == cap).all()
    half = clocks(0.5)
    dropped = (half == cap).all(1)
    assert 16 < int(dropped.sum()) < 48
    torch.testing.assert_close(half[~dropped], real[~dropped])
    with pytest.raises(ValueError, match="clock_dropout must be a probability in \\[0, 1\\], got 1.5"):
        dynamics_loss_fn(WindowSampler([episode], FRAMES, seed=0), 2, torch.device("cpu"), tokenizer,
                         moving_weight=0.0, clock_dropout=1.5)


def test_clock_dropout_setting_needs_a_clock():
    from training.pipeline import build_config

    clocked = {"dynamics": {"reward_clock": 8}}
    assert build_config({"game": "pong", "preset": "tiny", "clock_dropout": 0.2, "model": clocked}).clock_dropout == 0.2
    with pytest.raises(ValueError, match="clock_dropout=0.2 needs a reward clock"):
        build_config({"game": "pong", "preset": "tiny", "clock_dropout": 0.2})
    with pytest.raises(ValueError, match=r"clock_dropout must be a probability in \[0, 1\], got -0.1"):
        build_config({"game": "pong", "preset": "tiny", "clock_dropout": -0.1, "model": clocked})


def test_teacher_forcing_noises_every_frame_but_the_last_at_a_context_level(setup):
    """``teacher_forcing`` gives about that share of the windows context levels (<= 0.1) on every
    frame but the last, whose level stays the one diffusion forcing drew; other windows keep theirs."""
    episode, tokenizer, answer, _ = setup
    dyn = SpyDynamics(answer)

    def levels(share):
        loss_fn = dynamics_loss_fn(WindowSampler([episode], FRAMES, seed=0), 64, torch.device("cpu"), tokenizer,
                                   moving_weight=0.0, generator=torch.Generator().manual_seed(0),
                                   teacher_forcing=share)
        dyn.calls.clear()
        loss_fn(dyn)
        return dyn.calls[-1]["levels"]                                   # (64, FRAMES)

    free, forced, half = levels(0.0), levels(1.0), levels(0.5)
    assert (forced[:, :-1] <= 0.1).all()
    torch.testing.assert_close(forced[:, -1], free[:, -1])
    assert (free[:, -1] > 0.1).any() and int((free[:, :-1] <= 0.1).all(1).sum()) < 8   # 1 in 32 by chance
    clean = (half[:, :-1] <= 0.1).all(1)
    assert 16 < int(clean.sum()) < 48
    torch.testing.assert_close(half[~clean], free[~clean])
    with pytest.raises(ValueError, match=r"teacher_forcing must be a probability in \[0, 1\], got 2"):
        dynamics_loss_fn(WindowSampler([episode], FRAMES, seed=0), 2, torch.device("cpu"), tokenizer,
                         moving_weight=0.0, teacher_forcing=2)


def test_moving_mask_dilates_a_change_by_its_radius():
    """One pixel changes: radius ``r`` marks the ``(2r + 1)``-pixel square around it (clipped at
    the frame's edge), radius 0 the pixel alone; the window's first frame has no past."""
    frames = torch.full((1, 2, 3, SIZE, SIZE), -1.0)
    frames[0, 1, :, 8, 8] = 1.0
    frames[0, 1, 0, 0, 15] = 1.0                         # a change in one channel, at a corner
    for r in (0, 1, 4):
        mask = moving_mask(frames, radius=r)
        expected = torch.zeros(SIZE, SIZE)
        expected[8 - r:9 + r, 8 - r:9 + r] = 1
        expected[0:1 + r, 15 - r:16] = 1
        torch.testing.assert_close(mask[0, 1], expected)
        assert not mask[0, 0].any()
    with pytest.raises(ValueError, match="radius must be >= 0, got -1"):
        moving_mask(frames, radius=-1)


def test_moving_radius_weights_the_dynamics_loss_around_changes(setup):
    """The loss is the mean squared token error weighted by ``1 + moving_weight * mask``, the
    mask dilated by ``moving_radius``: recomputed here from the same windows, for two radii."""
    episode, tokenizer, answer, _ = setup
    episode.frames[:] = 0
    episode.frames[3:, 5, 5] = 255                      # one pixel changes, once
    dyn = SpyDynamics(answer)

    def losses(radius):
        loss_fn = dynamics_loss_fn(WindowSampler([episode], FRAMES, seed=0), 4, torch.device("cpu"), tokenizer,
                                   moving_weight=5.0, generator=torch.Generator().manual_seed(0),
                                   moving_radius=radius)
        x = frames_to_tensor(torch.as_tensor(WindowSampler([episode], FRAMES, seed=0).sample(4)["frames"]))
        w = tokenizer.pixel_weights(1.0 + 5.0 * moving_mask(x, radius=radius))[:, 1:]
        err = (answer - tokenizer.encode(x)[:, 1:]).pow(2) * w
        return loss_fn(dyn)[0], err.sum() / w.sum()

    (near, near_expected), (wide, wide_expected) = losses(1), losses(4)
    torch.testing.assert_close(near, near_expected)
    torch.testing.assert_close(wide, wide_expected)
    assert not torch.isclose(near, wide)
    with pytest.raises(ValueError, match="moving_radius must be >= 0, got -2"):
        dynamics_loss_fn(WindowSampler([episode], FRAMES, seed=0), 2, torch.device("cpu"), tokenizer,
                         moving_weight=0.0, moving_radius=-2)


def test_moving_radius_is_checked_by_the_pipeline_config():
    from training.pipeline import build_config

    assert build_config({"game": "pong", "preset": "tiny"}).moving_radius == 1      # the tokenizer's and LAM's
    assert build_config({"game": "pong", "preset": "tiny", "moving_radius": 4}).moving_radius == 4
    with pytest.raises(ValueError, match="moving_radius must be >= 0, got -1"):
        build_config({"game": "pong", "preset": "tiny", "moving_radius": -1})
