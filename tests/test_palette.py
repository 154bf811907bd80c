"""The palette output of the dynamics model: per-pixel colour classification (CDCD's categorical
x0-parameterisation), its loss, its warm start from a regression model, and its onnx graph."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recorders.dataset import Episode, WindowSampler
from tests.conftest import make_tiny_bundle
from training.loops import dynamics_loss_fn
from training.pipeline import _warm_start
from worldmodel import Simulator
from worldmodel.config import DynamicsConfig, TokenizerConfig
from worldmodel.dynamics import DynamicsModel, most_common_colours, palette_distances
from worldmodel.onnx_backend import onnx_available
from worldmodel.tokenizer import build_tokenizer, frames_to_tensor

PALETTE = np.array([[144, 72, 17], [92, 186, 92], [236, 236, 236], [213, 130, 74]], np.uint8)


def _model(**kw) -> DynamicsModel:
    torch.manual_seed(0)
    cfg = DynamicsConfig(width=48, depth=2, heads=2, context_frames=4, num_actions=3, token_dim=48,
                         tokens_per_frame=4, palette_size=len(PALETTE), **kw)
    model = DynamicsModel(cfg)
    model.set_palette(PALETTE)
    return model


def _frames(rng, count: int, size: int = 8) -> np.ndarray:
    """``(count, size, size, 3)`` uint8 frames drawn pixel by pixel from the palette."""
    return PALETTE[rng.integers(len(PALETTE), size=(count, size, size))]


def test_most_common_colours_are_ordered_by_frequency_and_padded():
    frames = np.zeros((2, 3, 3, 3), np.uint8)
    frames[0, 0, :2] = (10, 20, 30)
    frames[1, 2, 2] = (255, 0, 0)
    colours = most_common_colours(frames, 4)
    assert colours.tolist() == [[0, 0, 0], [10, 20, 30], [255, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="uint8"):
        most_common_colours(frames.astype(np.float32), 4)


def test_palette_distances_match_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    pixels, palette = torch.rand(2, 5, 12, generator=g) * 2 - 1, torch.rand(7, 3, generator=g) * 2 - 1
    direct = (pixels.unflatten(-1, (4, 3))[..., None, :] - palette).pow(2).sum(-1)
    torch.testing.assert_close(palette_distances(pixels, palette), direct, atol=1e-5, rtol=0)


def test_palette_targets_look_up_palette_pixels_and_measure_the_rest():
    """The packed-RGB lookup gives argmin's answer for palette pixels, off-palette pixels and a
    palette that holds a colour twice (padding): the lower index wins, as with argmin."""
    model = _model()
    colours = PALETTE.copy()
    colours[3] = colours[1]                                                   # a duplicate colour
    model.set_palette(colours)
    rng = np.random.default_rng(0)
    pixels = colours[rng.integers(len(colours), size=(2, 3, 16))].astype(np.float32)   # (2, 3, P=16, 3)
    pixels[0, 0, :5] += rng.uniform(-40, 40, size=(5, 3))                     # off the palette
    pixels[1, 2, 7] += 0.3                                                    # not an 8-bit colour
    tokens = torch.as_tensor(pixels.clip(0, 255) / 127.5 - 1.0, dtype=torch.float32).flatten(-2)
    expected = palette_distances(tokens, model.palette).argmin(-1)
    assert torch.equal(model.palette_targets(tokens), expected)
    assert not (model.palette_targets(tokens) == 3).any()                    # index 1 holds the same colour


def test_predict_returns_the_last_frames_of_the_full_prediction():
    model = _model().eval()
    g = torch.Generator().manual_seed(1)
    tokens, skip = torch.randn(2, 3, 4, 48, generator=g), torch.randn(2, 3, 4, 48, generator=g)
    levels, actions = torch.rand(2, 3, generator=g), torch.tensor([[0, 1, 2], [2, 1, 0]])
    with torch.no_grad():
        full = model(tokens, levels, actions, skip_tokens=skip, logits=True)
        last = model(tokens, levels, actions, skip_tokens=skip[:, 2:], logits=True, predict=1)
    torch.testing.assert_close(last, full[:, 2:])
    for bad in (0, 4):
        with pytest.raises(ValueError, match=f"got {bad}"):
            model(tokens, levels, actions, skip_tokens=skip[:, 2:], predict=bad)


def test_an_untrained_palette_model_copies_the_previous_frame():
    model = _model().eval()
    tok = build_tokenizer(TokenizerConfig(kind="patch", frame_size=8, patch_size=4))
    frames = tok.encode(frames_to_tensor(torch.as_tensor(_frames(np.random.default_rng(0), 3))[None]))
    noisy = torch.randn_like(frames)
    out = model(noisy, torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.long), skip_tokens=frames)
    torch.testing.assert_close(out, frames)                       # argmax colour = previous colour, exactly
    scores = model(noisy, torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.long), skip_tokens=frames, logits=True)
    assert scores.shape == (1, 3, 4, 16, len(PALETTE))
    assert torch.equal(scores.argmax(-1), model.palette_targets(frames))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("whole", [True, False])
def test_the_cpu_colour_choice_equals_the_argmax_of_the_biased_scores(dtype, whole):
    """The CPU path scores in full only pixels whose previous colour does not win outright; its
    colours must equal the argmax of the float32 scores with the copy bias added, ties included
    (whole-number scores and bias: many ties; scores on a grid of 1/8 with a bias of 0.37, which
    bfloat16 rounds to 0.369: sums that bfloat16 would round onto another colour's score)."""
    model = _model().eval()
    bias = 1.0 if whole else 0.37
    model.copy_bias.data.fill_(bias)
    tok = build_tokenizer(TokenizerConfig(kind="patch", frame_size=8, patch_size=4))
    previous = tok.encode(frames_to_tensor(torch.as_tensor(_frames(np.random.default_rng(1), 2))[None]))
    shape, gen = (1, 2, 4, 16 * len(PALETTE)), torch.Generator().manual_seed(0)
    head = torch.randint(0, 4, shape, generator=gen) if whole else torch.randint(0, 32, shape, generator=gen) / 8
    head = head.to(dtype)
    with torch.no_grad():
        out = model._palette_output(head, previous, logits=False, dtype=torch.float32)
        scores = model._palette_output(head, previous, logits=True, dtype=torch.float32)
    expected = model.palette[scores.argmax(-1)].flatten(-2)
    raw = head.float().unflatten(-1, (16, len(PALETTE)))
    fast = raw.gather(-1, model.palette_targets(previous)[..., None])[..., 0] + bias > raw.amax(-1)
    assert 0.2 < fast.float().mean() < 0.95       # both paths of the CPU rule are taken
    assert torch.equal(out, expected)


@pytest.mark.parametrize("k", [2, 3, 5, 7, 32])
def test_max_last_is_the_maximum_over_the_last_axis(k):
    from worldmodel.dynamics import _max_last
    x = torch.randn(3, 4, k, generator=torch.Generator().manual_seed(k)).bfloat16()
    assert torch.equal(_max_last(x), x.amax(-1))


def test_set_palette_names_a_wrong_shape():
    with pytest.raises(ValueError, match=r"\(4, 3\) colours.*\(5, 3\)"):
        _model().set_palette(np.zeros((5, 3), np.uint8))
    with pytest.raises(ValueError, match="palette_size is 0"):
        DynamicsModel(DynamicsConfig(width=48, heads=2)).set_palette(PALETTE)
    with pytest.raises(ValueError, match="palette_size"):
        DynamicsConfig(palette_size=1)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_the_palette_loss_is_cross_entropy_and_learns(gamma):
    rng = np.random.default_rng(0)
    # Every pixel steps to the next palette colour each frame: copying the previous frame is
    # always wrong, and the frame before says exactly what comes.
    first = rng.integers(len(PALETTE), size=(8, 8))
    frames = np.stack([PALETTE[(first + t) % len(PALETTE)] for t in range(12)])
    n = len(frames) - 1
    episode = Episode(frames=frames, actions=rng.integers(0, 3, n), rewards=np.zeros(n, np.float32),
                      terminated=np.zeros(n, bool), truncated=np.zeros(n, bool))
    tok = build_tokenizer(TokenizerConfig(kind="patch", frame_size=8, patch_size=4))
    model = _model()

    def make_loss(g):
        return dynamics_loss_fn(WindowSampler([episode], 4, seed=0), 4, torch.device("cpu"), tok, moving_weight=0.0,
                                generator=torch.Generator().manual_seed(0), focal_gamma=g)

    loss_fn, cross_entropy = make_loss(gamma), make_loss(0.0)
    with torch.no_grad():                                  # the same windows and noise
        first_focal, first_ce = float(loss_fn(model)[0]), float(cross_entropy(model)[0])
    assert first_focal < first_ce if gamma else first_focal == first_ce
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss, _ = loss_fn(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            losses.append(float(loss) if not gamma else float(cross_entropy(model)[0]))
    # Guessing among the 4 colours costs log 4 = 1.39 nats a pixel; the copy bias (always wrong
    # here) starts above it. The focal loss (gamma 2) learns it too, scored by the cross-entropy.
    assert losses[0] > np.log(4) and np.mean(losses[-10:]) < 0.5, losses[::10]


@pytest.mark.parametrize("weight", [0.0, 20.0])
def test_hard_pixel_weight_raises_the_loss_of_the_pixels_drawn_wrong(weight):
    # The left half of every frame stays, the right half steps to the next palette colour. An
    # untrained model with the previous-frame skip scores every colour 0 but the previous one,
    # which gets the copy bias (5): it draws the left half right and the right half wrong.
    first = np.random.default_rng(0).integers(len(PALETTE), size=(8, 8))
    frames = np.stack([PALETTE[np.where(np.arange(8) < 4, first, first + t) % len(PALETTE)] for t in range(12)])
    n = len(frames) - 1
    episode = Episode(frames=frames, actions=np.zeros(n, np.int64), rewards=np.zeros(n, np.float32),
                      terminated=np.zeros(n, bool), truncated=np.zeros(n, bool))
    tok = build_tokenizer(TokenizerConfig(kind="patch", frame_size=8, patch_size=4))
    loss_fn = dynamics_loss_fn(WindowSampler([episode], 4, seed=0), 4, torch.device("cpu"), tok, moving_weight=0.0,
                               generator=torch.Generator().manual_seed(0), hard_pixel_weight=weight)
    with torch.no_grad():
        loss = float(loss_fn(_model())[0])
    others = len(PALETTE) - 1
    right, wrong = np.log1p(others * np.exp(-5.0)), np.log(np.exp(5.0) + others)    # nats a pixel
    # Half the pixels right at weight 1, half wrong at weight 1 + ``weight``.
    assert loss == pytest.approx((right + (1 + weight) * wrong) / (2 + weight), rel=1e-4)


def test_a_warm_start_from_a_regression_model_keeps_the_trunk_and_starts_the_head_fresh(capsys):
    regression = DynamicsModel(dataclasses.replace(_model().cfg, palette_size=0))
    torch.nn.init.normal_(regression.final.linear.weight)

    @dataclasses.dataclass
    class Bundle:
        dynamics: DynamicsModel
        dynamics_config: DynamicsConfig
        tokenizer = lam = reward_model = tokenizer_config = lam_config = reward_config = None

    model = _model()
    assert _warm_start(model, model.cfg, Bundle(regression, regression.cfg), "dynamics")
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, regression.blocks[0].attn.qkv.weight)
    assert model.final.linear.weight.shape != regression.final.linear.weight.shape
    assert torch.equal(model.palette, torch.as_tensor(PALETTE).float() / 127.5 - 1)   # kept, not overwritten
    assert "final.linear.weight" in capsys.readouterr().out
    with pytest.raises(ValueError, match="differs in width"):
        other = DynamicsModel(dataclasses.replace(regression.cfg, width=64, heads=2))
        _warm_start(model, model.cfg, Bundle(other, other.cfg), "dynamics")


def test_a_warm_start_from_another_game_keeps_the_trunk_and_this_games_actions_and_palette(capsys):
    @dataclasses.dataclass
    class Bundle:
        dynamics: DynamicsModel
        dynamics_config: DynamicsConfig
        game: str = "pong"
        tokenizer = lam = reward_model = tokenizer_config = lam_config = reward_config = None

    pong = _model()
    for p in pong.parameters():
        p.data.normal_()
    pong.set_palette(PALETTE[::-1])
    breakout = DynamicsModel(dataclasses.replace(pong.cfg, num_actions=5))
    breakout.set_palette(PALETTE)
    with pytest.raises(ValueError, match="differs in num_actions"):   # the same game must match
        _warm_start(breakout, breakout.cfg, Bundle(pong, pong.cfg), "dynamics")
    assert _warm_start(breakout, breakout.cfg, Bundle(pong, pong.cfg), "dynamics", other_game=True)
    torch.testing.assert_close(breakout.blocks[1].mlp.fc1.weight, pong.blocks[1].mlp.fc1.weight)
    torch.testing.assert_close(breakout.final.linear.weight, pong.final.linear.weight)
    assert breakout.action_emb.weight.shape[0] == 6 and pong.action_emb.weight.shape[0] == 4
    assert torch.equal(breakout.palette, torch.as_tensor(PALETTE).float() / 127.5 - 1)
    assert "action_emb.weight, action_in.weight, palette start fresh" in capsys.readouterr().out


@pytest.mark.skipif(not onnx_available(torch.device("cpu")), reason="onnxruntime, onnx or onnxscript not installed")
def test_onnx_palette_dream_matches_torch(pong_trajectory, tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMGAMES_CACHE", str(tmp_path))
    frames, actions = pong_trajectory
    bundle = make_tiny_bundle(np.stack([frames[2:5], frames[6:9]]), np.stack([actions[2:4], actions[6:8]]),
                              palette_size=16)
    sims = [Simulator(bundle, batch_size=2, backend=b, seed=3, precision="float32") for b in ("onnx", "torch")]
    for sim in sims:
        sim.reset(bundle.start_frames.numpy(), bundle.start_actions.numpy())
    rng = np.random.default_rng(0)
    differ = total = 0
    for _ in range(8):
        a = rng.integers(bundle.num_actions, size=2)
        fo, ft = (sim.step(a)[0] for sim in sims)
        palette = {tuple(c) for c in most_common_colours(bundle.start_frames.numpy(), 16).tolist()}
        assert {tuple(c) for c in fo.reshape(-1, 3).tolist()} <= palette     # every pixel a palette colour
        differ += int((fo != ft).any(-1).sum())
        total += fo.shape[0] * fo.shape[1] * fo.shape[2]
    # An argmax may flip where two colours score within float rounding of each other.
    assert differ <= 0.001 * total, f"{differ} of {total} pixels differ"
