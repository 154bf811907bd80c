"""``python -m training.average``: the dynamics weights of several bundles averaged (a model soup)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from tests.conftest import make_tiny_bundle
from training.average import AverageConfig, average_dynamics, run
from worldmodel.bundle import load


@pytest.fixture
def three(pong_trajectory):
    """Three tiny palette bundles with the same config and palette, different weights."""
    frames, actions = pong_trajectory
    starts, start_actions = frames[None, :5], actions[None, :4]
    return [make_tiny_bundle(starts, start_actions, seed=s, palette_size=8) for s in range(3)]


def test_the_average_is_the_weighted_mean_of_every_learned_weight_and_keeps_the_palette(three):
    states = [{k: v.clone() for k, v in b.dynamics.state_dict().items()} for b in three]
    palette = three[0].dynamics.palette.clone()
    averaged = average_dynamics(three, [2.0, 1.0, 1.0])
    assert averaged is three[0]
    learned = dict(averaged.dynamics.named_parameters())
    assert learned
    for name, p in learned.items():
        expected = 0.5 * states[0][name] + 0.25 * states[1][name] + 0.25 * states[2][name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(averaged.dynamics.palette, palette)
    # the three start from different weights, so the mean is none of them
    name = next(iter(learned))
    assert not torch.equal(learned[name].detach(), states[1][name])


def test_equal_weights_by_default(three):
    states = [b.dynamics.state_dict()["copy_bias"].clone() for b in three]
    averaged = average_dynamics(three)
    torch.testing.assert_close(averaged.dynamics.copy_bias.detach(), sum(states) / 3)


def test_bad_inputs_are_named(three, pong_trajectory):
    frames, actions = pong_trajectory
    with pytest.raises(ValueError, match="two bundles or more, got 1"):
        average_dynamics(three[:1])
    with pytest.raises(ValueError, match=r"one number per bundle \(3\), got \[1.0, 1.0\]"):
        average_dynamics(three, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"weights must be >= 0 and not all 0, got \[1.0, -1.0, 1.0\]"):
        average_dynamics(three, [1.0, -1.0, 1.0])
    other = make_tiny_bundle(frames[None, :5], actions[None, :4], seed=1, palette_size=8, reward_clock=4)
    with pytest.raises(ValueError, match=r"b's dynamics config differs from a's: \{'reward_clock': \(0, 4\)\}"):
        average_dynamics([three[0], other], names=["a", "b"])
    repainted = three[1]
    repainted.dynamics.palette.add_(0.1)
    with pytest.raises(ValueError, match="bundle 1's dynamics buffer 'palette' differs from bundle 0's"):
        average_dynamics(three)
    breakout = dataclasses.replace(three[2], game="breakout")
    with pytest.raises(ValueError, match="bundle 1 is a 'breakout' bundle, bundle 0 a 'pong' one"):
        average_dynamics([three[0], breakout])


def test_run_writes_a_bundle_that_loads_and_records_its_lineage(three, tmp_path):
    paths = []
    for i, b in enumerate(three[:2]):
        b.info = {"commands": [f"python -m training.pipeline out=run{i}"]}
        paths.append(str(b.save(tmp_path / f"b{i}", weights_dtype=torch.float32)))
    other = dict(three[1].dynamics.named_parameters())
    expected = {k: (v.float() + other[k].float()) / 2 for k, v in three[0].dynamics.named_parameters()}
    out = run(AverageConfig(bundles=paths, out=str(tmp_path / "soup"), weights_dtype="float32"))
    soup = load(out)
    for name, p in soup.dynamics.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name].detach(), rtol=1e-6, atol=1e-6)
    info = json.loads((out / "config.json").read_text())["info"]
    assert info["commands"][0] == "python -m training.pipeline out=run0"
    assert info["commands"][-1].startswith("python -m training.average")
    assert [a["bundle"] for a in info["averaged"]] == paths
    assert info["averaged"][1]["commands"] == ["python -m training.pipeline out=run1"]
    # the rest of the bundle is the first one's
    assert np.array_equal(soup.start_frames.numpy(), three[0].start_frames.numpy())
    with pytest.raises(ValueError, match="out=DIR is required"):
        run(AverageConfig(bundles=paths))


def test_the_command_line_reports_a_bad_bundle_by_name(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "training.average", f"bundles=[pong,{tmp_path / 'nothing'}]",
                           f"out={tmp_path / 'soup'}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "error:" in done.stderr and "nothing" in done.stderr
    assert not (tmp_path / "soup").exists()
