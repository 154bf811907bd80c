"""Event codes (``DynamicsConfig.event_codes``): a per-frame discrete latent with a learned prior.

The model starts as the one without them and warm-starts from one; in training a
straight-through posterior sample conditions every pass and the prior learns the posterior's
distribution; a dream draws each frame's code from the prior and primes with the posterior's."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from recorders.dataset import Episode, WindowSampler
from tests.conftest import make_tiny_bundle, random_dynamics, warm_start_dynamics
from training.loops import EVENT_PRIOR_WEIGHT, categorical_kl, dynamics_loss_fn, event_samples
from worldmodel import Simulator
from worldmodel.config import DynamicsConfig, TokenizerConfig
from worldmodel.dynamics import DynamicsModel
from worldmodel.tokenizer import build_tokenizer

K = 4
CFG = DynamicsConfig(width=32, depth=2, heads=2, context_frames=3, num_actions=3, token_dim=12, tokens_per_frame=16,
                     palette_size=4, reward_clock=5)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, 16, 12, generator=g), torch.rand(2, 3, generator=g),
            torch.randint(0, 3, (2, 3), generator=g))


def test_codes_start_at_zero_and_reach_the_frame_once_learnt(capsys):
    torch.manual_seed(0)
    plain = random_dynamics(CFG)
    evented = DynamicsModel(dataclasses.replace(CFG, event_codes=K))
    assert not evented.event_emb.weight.any() and not evented.event_in.weight.any()
    assert warm_start_dynamics(evented, plain)
    assert "event_posterior.token_in.weight" in capsys.readouterr().out
    tokens, levels, actions = _inputs()
    codes = torch.tensor([[-1, 0, 3], [2, 1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(evented(tokens, levels, actions, events=codes, logits=True),
                                   plain(tokens, levels, actions, logits=True))
        torch.nn.init.normal_(evented.event_emb.weight)
        torch.nn.init.normal_(evented.event_in.weight)
        out = evented(tokens, levels, actions, events=codes, logits=True)
        other = evented(tokens, levels, actions, events=codes.flip(1), logits=True)
        assert (out - other).abs().max() > 1e-3
        # A one-hot row of weights is its code; "none" is -1, index K of the rows, and None.
        one_hot = torch.nn.functional.one_hot(torch.where(codes < 0, K, codes), K + 1).float()
        torch.testing.assert_close(evented(tokens, levels, actions, events=one_hot, logits=True), out)
        none = torch.full((2, 3), -1)
        torch.testing.assert_close(evented(tokens, levels, actions, logits=True),
                                   evented(tokens, levels, actions, events=none, logits=True))
    with pytest.raises(ValueError, match="differs in event_codes"):
        warm_start_dynamics(plain, evented)
    with pytest.raises(ValueError, match="event_codes must be 0"):
        dataclasses.replace(CFG, event_codes=1)
    with pytest.raises(ValueError, match="has no event codes"):
        plain.event_scores("prior", tokens, tokens, actions)
    with pytest.raises(ValueError, match="encoder must be"):
        evented.event_scores("posteriour", tokens, tokens, actions)


def test_the_posterior_reads_the_frame_it_explains_and_the_prior_does_not_need_it():
    torch.manual_seed(1)
    model = DynamicsModel(dataclasses.replace(CFG, event_codes=K))
    tokens, _, actions = _inputs(1)
    for encoder in ("posterior", "prior"):
        scores = model.event_scores(encoder, tokens, tokens.flip(1), actions, torch.tensor([[0, 4, 9], [1, 2, 3]]))
        assert scores.shape == (2, 3, K) and scores.dtype == torch.float32
        # A change in a single patch of the second frame moves the scores (max pooling keeps it).
        moved = tokens.flip(1).clone()
        moved[:, :, 5] += 1.0
        assert (model.event_scores(encoder, tokens, moved, actions) - model.event_scores(encoder, tokens,
                tokens.flip(1), actions)).abs().amax(-1).min() > 1e-4


def test_event_samples_are_one_hot_with_the_posteriors_gradient():
    logits = torch.tensor([[[9.0, -9.0, -9.0], [-9.0, -9.0, 9.0]]], requires_grad=True)   # (1, 2, 3): T = 3
    codes, events = event_samples(logits, torch.Generator().manual_seed(0))
    assert codes.tolist() == [[-1, 0, 2]]
    torch.testing.assert_close(events.detach(), torch.tensor([[[0.0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0]]]))
    (events[..., :3] * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    probs = logits.detach().softmax(-1)
    expected = probs * (torch.tensor([1.0, 2.0, 3.0]) - (probs * torch.tensor([1.0, 2.0, 3.0])).sum(-1, keepdim=True))
    torch.testing.assert_close(logits.grad, expected)
    # Drawn in proportion to the posterior.
    many = torch.log(torch.tensor([0.2, 0.8])).expand(1, 4000, 2)
    drawn, _ = event_samples(many, torch.Generator().manual_seed(1))
    assert abs(float(drawn[0, 1:].float().mean()) - 0.8) < 0.03


def test_categorical_kl_is_the_divergence_in_nats():
    q, p = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    torch.testing.assert_close(categorical_kl(q.log(), p.log()), torch.tensor(expected))
    assert float(categorical_kl(q.log() + 3.0, q.log())) == pytest.approx(0.0, abs=1e-7)


def test_the_loss_trains_the_posterior_through_the_frames_and_the_prior_on_the_posterior():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4, (12, 16, 16, 3), dtype=np.uint8) * 80
    n = len(frames) - 1
    episode = Episode(frames=frames, actions=rng.integers(0, 3, n), rewards=(rng.random(n) < 0.2).astype(np.float32),
                      terminated=np.zeros(n, bool), truncated=np.zeros(n, bool))
    tokenizer = build_tokenizer(TokenizerConfig(kind="patch", frame_size=16, patch_size=4))
    cfg = dataclasses.replace(CFG, token_dim=48, event_codes=K)
    torch.manual_seed(0)
    model = DynamicsModel(cfg)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    model.set_palette(np.array([[0, 0, 0], [80, 80, 80], [160, 160, 160], [240, 240, 240]], np.uint8))
    loss_fn = dynamics_loss_fn(WindowSampler([episode], 3, seed=0), 4, torch.device("cpu"), tokenizer,
                               moving_weight=1.0, generator=torch.Generator().manual_seed(0),
                               scheduled_sampling=0.5, rollout_frames=1, event_diversity=0.5)
    loss, logs = loss_fn(model)
    assert float(logs["event_kl"].detach()) > 0 and 0 < float(logs["event_usage"].detach()) <= math.log(K)
    diversity = 0.5 * (math.log(K) - logs["event_usage"].detach())
    torch.testing.assert_close(loss.detach(), logs["frame_loss"] + EVENT_PRIOR_WEIGHT * logs["event_kl"].detach()
                               + diversity)
    # The prior's loss alone moves the prior, not the posterior (whose distribution it learns).
    logs["event_kl"].backward(retain_graph=True)
    assert model.event_prior.out[-1].weight.grad.abs().sum() > 0
    assert model.event_posterior.out[-1].weight.grad is None
    # The diversity loss moves the posterior alone.
    logs["event_usage"].backward(retain_graph=True)
    assert model.event_posterior.out[-1].weight.grad.abs().sum() > 0 and model.event_emb.weight.grad is None
    # The frame loss reaches the posterior through the straight-through samples.
    model.zero_grad()
    frame_loss = loss - EVENT_PRIOR_WEIGHT * logs["event_kl"] - 0.5 * (math.log(K) - logs["event_usage"])
    frame_loss.backward()
    assert model.event_posterior.out[-1].weight.grad.abs().sum() > 0
    assert model.event_emb.weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def evented_bundle(tiny_bundle):
    frames, actions = tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy()
    return make_tiny_bundle(frames, actions, seed=3, palette_size=8, reward_clock=8, event_codes=K)


def test_a_dream_draws_codes_from_the_prior_and_primes_with_the_posterior(evented_bundle, monkeypatch):
    frames, actions = evented_bundle.start_frames.numpy(), evented_bundle.start_actions.numpy()
    sim = Simulator(evented_bundle, batch_size=2, seed=0, precision="float32", event_temperature=0, sampling_steps=2)
    assert sim.backend == "torch"
    seen = []
    forward = sim.dynamics.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["events"].tolist())
        return forward(*args, **kwargs)

    monkeypatch.setattr(sim.dynamics, "forward", spy)
    sim.reset(frames, actions)
    dyn, tok = sim.dynamics, evented_bundle.tokenizer
    clean = tok.encode(torch.as_tensor(frames).permute(0, 1, 4, 2, 3).float().div(127.5).sub(1))
    t = frames.shape[1]
    cond = torch.cat([torch.full((2, 1), -1), torch.as_tensor(actions)], dim=1)
    previous = torch.cat([torch.zeros_like(clean[:, :1]), clean[:, :-1]], dim=1)
    posterior = dyn.event_scores("posterior", previous, clean, cond, torch.full((2, t), 8)).argmax(-1)
    posterior[:, 0] = -1                                           # no frame before the first
    keep = min(t, sim.cache.slots + 1)
    assert seen == [posterior[:, t - keep:-1].tolist()]
    assert sim.pending_event[:, 0].tolist() == posterior[:, -1].tolist()
    # The prior's most likely code, from the two latest frames, the action and the clock.
    step_actions = np.array([1, 2])
    prior = dyn.event_scores("prior", clean[:, -2:-1], clean[:, -1:], torch.as_tensor(step_actions)[:, None],
                             torch.full((2, 1), 8)).argmax(-1)
    sim.step(step_actions)
    # The committing pass carries the pending frame's code and the new one; the next pass the new one.
    assert seen[1:] == [torch.cat([posterior[:, -1:], prior], dim=1).tolist(), prior.tolist()]
    assert sim.pending_event.tolist() == prior.tolist()


def test_a_dream_draws_in_proportion_to_the_prior(evented_bundle):
    frames, actions = evented_bundle.start_frames.numpy(), evented_bundle.start_actions.numpy()
    sim = Simulator(evented_bundle, batch_size=64, seed=0, precision="float32")
    sim.reset(np.repeat(frames[:1], 64, axis=0), np.repeat(actions[:1], 64, axis=0))
    with torch.no_grad():   # a prior that gives the codes 0.1, 0.2, 0.3, 0.4, whatever it reads
        sim.dynamics.event_prior.out[-1].weight.zero_()
        sim.dynamics.event_prior.out[-1].bias.copy_(torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])))
    drawn = []
    for _ in range(10):
        sim.step(np.zeros(64, np.int64))
        drawn += sim.pending_event[:, 0].tolist()
    share = np.bincount(drawn, minlength=K) / len(drawn)
    assert np.abs(share - [0.1, 0.2, 0.3, 0.4]).max() < 0.05
    sim2 = Simulator(evented_bundle, batch_size=2, seed=0, event_temperature=0)
    with pytest.raises(ValueError, match="event_temperature must be >= 0"):
        Simulator(evented_bundle, batch_size=1, event_temperature=-1)
    assert sim2.event_temperature == 0


def test_the_evaluation_reports_the_event_temperature(evented_bundle, tiny_bundle):
    from training.evaluate import _simulator_choice

    options = {"backend": "torch", "precision": "float32", "event_temperature": 0.5}
    choice = _simulator_choice(evented_bundle, options, (1, 64))
    assert choice["backend"] == {1: "torch", 64: "torch"} and choice["event_temperature"] == 0.5
    assert _simulator_choice(evented_bundle, {**options, "event_temperature": None}, (1,))["event_temperature"] == 1.0
    assert "event_temperature" not in _simulator_choice(tiny_bundle, options, (1,))


def test_the_pipeline_checks_event_diversity():
    from training.pipeline import build_config

    codes = {"dynamics": {"event_codes": 8}}
    assert build_config({"game": "pong", "preset": "tiny", "event_diversity": 0.1, "model": codes}).event_diversity == 0.1
    with pytest.raises(ValueError, match="event_diversity must be >= 0, got -1"):
        build_config({"game": "pong", "preset": "tiny", "event_diversity": -1.0, "model": codes})
    with pytest.raises(ValueError, match="event_diversity=0.1 needs event codes"):
        build_config({"game": "pong", "preset": "tiny", "event_diversity": 0.1})
    with pytest.raises(ValueError, match="event_diversity must be >= 0, got -1"):
        dynamics_loss_fn(None, 1, torch.device("cpu"), None, moving_weight=0.0, event_diversity=-1)
