"""Resumable training state in safetensors + JSON (never pickles).

``<dir>/last.safetensors`` holds the model, its EMA, the optimizer's moment tensors and the
torch RNG state; ``<dir>/last.json`` holds the step, the elapsed training time, the
optimizer's scalar state and the data sampler's RNG state. Both are replaced atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def save_state(directory: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module | None,
               optimizer: torch.optim.Optimizer, step: int, elapsed: float, sampler_rng: np.random.Generator,
               extra: dict | None = None) -> None:
    """Write a resumable snapshot of a training stage."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    scalars = {}
    for pid, st in opt["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val) and val.dim() > 0:
                tensors[f"optim.{pid}.{name}"] = val.contiguous().cpu()
            else:
                scalars[f"{pid}.{name}"] = float(val)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = dict(step=step, elapsed=elapsed, optim_scalars=scalars, param_groups=opt["param_groups"],
                sampler_rng=sampler_rng.bit_generator.state, extra=extra or {})
    tmp_t, tmp_j = directory / "last.safetensors.tmp", directory / "last.json.tmp"
    save_file(tensors, str(tmp_t))
    tmp_j.write_text(json.dumps(meta))
    os.replace(tmp_t, directory / "last.safetensors")
    os.replace(tmp_j, directory / "last.json")


def has_state(directory: str | Path) -> bool:
    d = Path(directory)
    return (d / "last.safetensors").exists() and (d / "last.json").exists()


def load_state(directory: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module | None,
               optimizer: torch.optim.Optimizer | None, sampler_rng: np.random.Generator | None) -> dict:
    """Restore a snapshot written by :func:`save_state`; returns its JSON metadata."""
    directory = Path(directory)
    tensors = load_file(str(directory / "last.safetensors"))
    meta = json.loads((directory / "last.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    if optimizer is not None:
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        for k, v in meta["optim_scalars"].items():
            pid, name = k.split(".", 1)
            state.setdefault(int(pid), {})[name] = torch.tensor(v)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if sampler_rng is not None:
        sampler_rng.bit_generator.state = meta["sampler_rng"]
    return meta


def load_trained(directory: str | Path, module: torch.nn.Module) -> torch.nn.Module:
    """Load a finished stage's weights into ``module``: the EMA weights if the snapshot has them."""
    tensors = load_file(str(Path(directory) / "last.safetensors"))
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return module
