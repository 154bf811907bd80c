"""Colour sampling at a temperature (Gumbel-max) for palette models: the distribution it draws,
its shared per-token noise, and the Simulator's use of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_tiny_bundle
from worldmodel import Simulator
from worldmodel.diffusion import sample_palette_colours


def _scores(probs, tokens: int, pixels: int = 1) -> torch.Tensor:
    """``(1, 1, tokens, pixels, K)`` log-probabilities, the same for every pixel."""
    return torch.tensor(probs).log().expand(1, 1, tokens, pixels, len(probs)).clone()


def test_temperature_zero_is_the_argmax():
    scores = torch.randn(2, 1, 5, 4, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_palette_colours(scores, 0.0), scores.argmax(-1))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_colours_are_drawn_from_the_tempered_softmax(temperature):
    probs = torch.tensor([0.6, 0.3, 0.1])
    colours = sample_palette_colours(_scores(probs.tolist(), 40_000), temperature, torch.Generator().manual_seed(1))
    drawn = torch.bincount(colours.flatten(), minlength=3).double() / colours.numel()
    expected = torch.softmax(probs.log().double() / temperature, 0)
    # 40,000 draws: the standard error of each share is under 0.0025.
    torch.testing.assert_close(drawn, expected, atol=0.012, rtol=0)


def test_pixels_of_a_token_share_their_draw_and_tokens_do_not():
    probs = [0.5, 0.5]
    colours = sample_palette_colours(_scores(probs, 2_000, pixels=6), 1.0, torch.Generator().manual_seed(2))
    assert (colours == colours[..., :1]).all()                       # one decision per token
    share = colours[..., 0].float().mean().item()
    assert 0.45 < share < 0.55                                       # ... drawn afresh for each token
    independent = sample_palette_colours(_scores(probs, 2_000, pixels=6), 1.0, torch.Generator().manual_seed(2),
                                         shared_pixels=False)
    assert not (independent == independent[..., :1]).all()


def test_a_negative_temperature_is_named():
    with pytest.raises(ValueError, match="-0.5"):
        sample_palette_colours(torch.zeros(1, 1, 1, 1, 2), -0.5)


@pytest.fixture(scope="module")
def palette_bundle(pong_trajectory):
    frames, actions = pong_trajectory
    return make_tiny_bundle(np.stack([frames[2:5], frames[6:9]]), np.stack([actions[2:4], actions[6:8]]),
                            palette_size=16)


def _dream(bundle, steps: int = 6, **kw) -> np.ndarray:
    sim = Simulator(bundle, batch_size=2, seed=5, precision="float32", **kw)
    sim.reset(bundle.start_frames.numpy(), bundle.start_actions.numpy())
    return np.stack([sim.step(np.array([2, 3]))[0] for _ in range(steps)])


def test_the_simulator_samples_with_its_seed_and_argmaxes_at_zero(palette_bundle):
    argmax = _dream(palette_bundle, backend="torch")
    assert np.array_equal(_dream(palette_bundle, backend="torch", temperature=0.0), argmax)
    hot = _dream(palette_bundle, backend="auto", temperature=2.0)
    assert np.array_equal(_dream(palette_bundle, backend="torch", temperature=2.0), hot)   # same seed, same dream
    assert not np.array_equal(hot, argmax)                                                 # the draw changes frames
    palette = {tuple(c) for c in palette_bundle.dynamics.palette.add(1).mul(127.5).round().int().tolist()}
    assert {tuple(c) for c in hot.reshape(-1, 3).tolist()} <= palette                     # palette colours only


def test_the_simulator_names_a_temperature_it_cannot_run(palette_bundle, tiny_bundle):
    with pytest.raises(ValueError, match="torch backend only"):
        Simulator(palette_bundle, backend="onnx", temperature=0.5)
    with pytest.raises(ValueError, match="palette"):
        Simulator(tiny_bundle, temperature=0.5)
    with pytest.raises(ValueError, match="-1"):
        Simulator(palette_bundle, temperature=-1)


def test_the_play_front_ends_take_a_temperature(palette_bundle):
    from play.session import PlaySession, prepare_backend

    assert prepare_backend(palette_bundle, "auto", temperature=0.5) == "torch"
    with pytest.raises(ValueError, match="torch backend only"):
        prepare_backend(palette_bundle, "onnx", temperature=0.5)
    session = PlaySession(palette_bundle, seed=0, temperature=0.5, backend="torch")
    assert session.sim.temperature == 0.5
    assert session.step(2).frame.shape == (64, 64, 3)
