"""``StageBudget.train_only``: an adapter fine-tune trains the named parameters and leaves the rest as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.loops import StageBudget, run_stage, trainable_parameters


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _loss_fn():
    gen = torch.Generator().manual_seed(1)

    def loss_fn(model):
        x = torch.randn(16, 4, generator=gen)
        return (model(x) - x[:, :2]).pow(2).mean(), {}
    return loss_fn


def test_only_the_named_module_trains_and_the_ema_keeps_the_rest(tmp_path):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    budget = StageBudget(steps=5, batch_size=16, lr=1e-2, warmup=1, ema=0.5, train_only=["2"])
    ema, _ = run_stage("adapter", model, _loss_fn(), budget, tmp_path, np.random.default_rng(0), device=torch.device("cpu"),
                       amp=False, frames_per_step=16, progress=False)
    for name in ("0.weight", "0.bias"):
        assert torch.equal(model.state_dict()[name], before[name]), name
        assert torch.equal(ema.state_dict()[name], before[name]), name
    for name in ("2.weight", "2.bias"):
        assert not torch.allclose(model.state_dict()[name], before[name]), name


def test_a_parameter_is_named_in_full_or_by_its_module():
    model = _model()
    assert trainable_parameters(model, ["2.bias"]) == [model[2].bias]
    assert [p.requires_grad for p in model.parameters()] == [False, False, False, True]
    assert trainable_parameters(model, "0") == [model[0].weight, model[0].bias]
    assert trainable_parameters(model, ["0", "2"]) == list(model.parameters())
    assert trainable_parameters(model, None) == list(model.parameters())


@pytest.mark.parametrize("names, message", [(["clock_in"], "clock_in"), (["2.bia"], "2.bia"), ([], "empty")])
def test_unknown_or_no_names_are_refused(names, message):
    with pytest.raises(ValueError, match=message):
        trainable_parameters(_model(), names)
