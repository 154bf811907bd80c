"""Shared fixtures: real Pong frames, a tiny random-weight model bundle, a tiny real dataset.

Everything is small (tiny preset, episodes of a few dozen steps) and written under pytest's
temporary directories, so the whole suite runs in seconds on two CPU cores.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
# Exported ONNX graphs go to a fresh cache, so a user's cache neither serves nor receives them.
os.environ["DREAMGAMES_CACHE"] = tempfile.mkdtemp(prefix="dreamgames-test-cache-")

from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# The models here are tiny: a second intra-op thread buys nothing, and when the machine is
# busy (a training job on the other core) OpenMP threads waiting on each other make every
# small matrix product ~100x slower. One thread keeps the suite fast either way.
torch.set_num_threads(1)

RECORD_SEED = 7


def perturb_(module: torch.nn.Module, *, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Add small Gaussian noise to every parameter, in place.

    A freshly initialised DynamicsModel has its adaLN-Zero gates (and the final layer's
    modulation) at exactly zero, so every residual branch is closed and neither attention
    nor the action can influence the output; perturbing opens them.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


def random_dynamics(cfg, *, std: float = 0.1):
    """A DynamicsModel of ``cfg`` with every parameter drawn from N(0, std) (torch's global
    generator): no residual branch closed, so every input reaches the output."""
    from worldmodel.dynamics import DynamicsModel

    model = DynamicsModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def warm_start_dynamics(model, source) -> bool:
    """``training.pipeline._warm_start`` of ``model``'s dynamics stage from a bundle holding only
    the dynamics model ``source``."""
    from training.pipeline import _warm_start

    bundle = SimpleNamespace(dynamics=source, dynamics_config=source.cfg, tokenizer=None, lam=None, reward_model=None,
                             tokenizer_config=None, lam_config=None, reward_config=None)
    return _warm_start(model, model.cfg, bundle, "dynamics")


def real_pong_frames(steps: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Play real Pong with random actions: ``frames (steps+1, 64, 64, 3) uint8``, ``actions (steps,) int64``."""
    import envs

    env = envs.make("pong")
    try:
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        frames, actions = [obs], []
        for _ in range(steps):
            a = int(rng.integers(env.action_space.n))
            obs, _, term, trunc, _ = env.step(a)
            frames.append(obs)
            actions.append(a)
            assert not (term or trunc)
    finally:
        env.close()
    return np.stack(frames), np.asarray(actions, np.int64)


def record_pong(out: Path, *, episodes: int = 2, max_steps: int = 30, seed: int = RECORD_SEED):
    """Record real Pong episodes with the project's recorder; returns the DatasetWriter."""
    from recorders.collect import RecordConfig, record

    cfg = RecordConfig(game="pong", out=str(out), episodes=episodes, max_steps=max_steps, num_envs=1,
                       vector="sync", policy="random", seed=seed)
    return record(cfg, progress=False)


def make_tiny_bundle(start_frames: np.ndarray, start_actions: np.ndarray, *, seed: int = 0, palette_size: int = 0,
                     local_mixing: bool = False, reward_clock: int = 0, event_codes: int = 0):
    """A ModelBundle of the ``tiny`` preset for Pong, random (perturbed) weights, assembled as
    ``training.pipeline.run`` assembles it; with ``palette_size``, a palette model whose palette
    is the start frames' most common colours; with ``local_mixing``, the dynamics mix each frame's
    neighbouring tokens (perturbed away from zero like every weight); with ``reward_clock``, the
    dynamics read a reward clock of that cap (its embeddings perturbed too); with ``event_codes``,
    each frame is conditioned on one of that many event codes (perturbed too)."""
    from envs.games import get_game
    from worldmodel.bundle import ModelBundle
    from worldmodel.config import get_preset, update_dataclass
    from worldmodel.dynamics import DynamicsModel, most_common_colours
    from worldmodel.reward_model import RewardEndModel
    from worldmodel.tokenizer import build_tokenizer

    spec = get_game("pong")
    m = get_preset("tiny")
    m.dynamics = update_dataclass(m.dynamics, dict(num_actions=spec.num_actions, token_dim=m.tokenizer.token_dim,
                                                   tokens_per_frame=m.tokenizer.tokens_per_frame,
                                                   palette_size=palette_size, local_mixing=local_mixing,
                                                   reward_clock=reward_clock, event_codes=event_codes),
                                  where="model.dynamics")
    torch.manual_seed(seed)
    dynamics = perturb_(DynamicsModel(m.dynamics), seed=seed)
    if palette_size:
        dynamics.set_palette(most_common_colours(start_frames, palette_size))
    reward_cfg = update_dataclass(m.reward, dict(num_actions=spec.num_actions), where="model.reward")
    bundle = ModelBundle(
        game=spec.name, action_meanings=list(spec.action_meanings), keymap=dict(spec.keymap),
        key_aliases=dict(spec.key_aliases), fps=spec.fps, conditioning="actions", tokenizer_config=m.tokenizer,
        dynamics_config=m.dynamics, sampler=m.sampler, tokenizer=build_tokenizer(m.tokenizer), dynamics=dynamics,
        start_frames=torch.as_tensor(start_frames), start_actions=torch.as_tensor(start_actions),
        reward_config=reward_cfg, reward_model=RewardEndModel(reward_cfg), info={"preset": "tiny", "test": True})
    return bundle.eval()


@pytest.fixture(scope="session")
def pong_trajectory() -> tuple[np.ndarray, np.ndarray]:
    """A short real Pong trajectory: frames (25, 64, 64, 3) uint8 and actions (24,) int64.

    The ball and the opponent paddle appear around step 15, so the later frames show both."""
    return real_pong_frames(24, seed=0)


@pytest.fixture(scope="session")
def tiny_bundle(pong_trajectory):
    """Tiny-preset Pong bundle with random weights and K=2 real start windows."""
    from worldmodel.config import get_preset

    frames, actions = pong_trajectory
    ctx = get_preset("tiny").dynamics.context_frames
    t = ctx - 1
    starts = [2, 6]
    start_frames = np.stack([frames[s:s + t] for s in starts])                 # (K, ctx-1, 64, 64, 3)
    start_actions = np.stack([actions[s:s + t - 1] for s in starts])           # (K, ctx-2)
    assert start_frames.shape == (2, ctx - 1, 64, 64, 3) and start_frames.dtype == np.uint8
    assert start_actions.shape == (2, ctx - 2) and start_actions.dtype == np.int64
    return make_tiny_bundle(start_frames, start_actions)


@pytest.fixture(scope="session")
def pong_dataset(tmp_path_factory) -> Path:
    """A real Pong dataset of 2 episodes of at most 30 steps (random policy). Read-only for tests."""
    root = tmp_path_factory.mktemp("pong_dataset") / "pong"
    writer = record_pong(root, episodes=2, max_steps=30)
    assert writer.episodes_written == 2
    return root


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """One end-to-end run of the ``tiny`` pipeline on freshly recorded Pong:
    ``(root, cfg, metrics)``, the run in ``root / "run"``, its datasets in ``root / "data"`` and
    ``root / "heldout"``. Tests may read it and copy from it, not change it."""
    from training.pipeline import build_config, run

    root = tmp_path_factory.mktemp("e2e")
    cfg = build_config(dict(preset="tiny", out=str(root / "run"), dataset=str(root / "data"),
                            heldout=str(root / "heldout"), progress=False, start_windows=4))
    return root, cfg, run(cfg)
