"""Resumable training state in one safetensors file (never pickles).

``<dir>/last.safetensors`` holds the model, its EMA, the optimizer's moment tensors and the
state of every random generator the stage draws from; its header metadata holds, as JSON,
the step, the elapsed training time, the optimizer's scalar state, the data sampler's
NumPy generator state and the stage's config. It is replaced atomically (written to a
temporary name, then renamed), so a killed run leaves the previous snapshot whole.

A data-parallel run's snapshot (written by rank 0) also holds the generator states of the
other ranks: tensors ``rank<r>.rng.torch`` and ``rank<r>.rng.gen.<name>``, and in the JSON
``rank_sampler_rng`` and ``world_size``; each rank restores its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

SNAPSHOT = "last.safetensors"


class SnapshotMismatch(ValueError):
    """A snapshot was written by a run with another model or stage configuration."""


def save_state(directory: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module | None,
               optimizer: torch.optim.Optimizer, step: int, elapsed: float, sampler_rng: np.random.Generator,
               generators: dict[str, torch.Generator] | None = None, config: dict | None = None,
               other_ranks: list[dict] | None = None) -> Path:
    """Write a resumable snapshot of a training stage; returns its path.

    Args:
        other_ranks: in a data-parallel run, ranks 1.. random states, each a dict with
            ``sampler_rng`` (a NumPy ``bit_generator.state``), ``torch`` (``torch.get_rng_state()``)
            and ``generators`` (name -> ``Generator.get_state()``).
    """
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
    for name, gen in (generators or {}).items():
        tensors[f"rng.gen.{name}"] = gen.get_state()
    rank_sampler_rng = {}
    for r, st in enumerate(other_ranks or [], start=1):
        tensors[f"rank{r}.rng.torch"] = st["torch"]
        for name, state in st["generators"].items():
            tensors[f"rank{r}.rng.gen.{name}"] = state
        rank_sampler_rng[str(r)] = st["sampler_rng"]
    meta = dict(step=step, elapsed=elapsed, optim_scalars=scalars, param_groups=opt["param_groups"],
                sampler_rng=sampler_rng.bit_generator.state, config=config, world_size=1 + len(other_ranks or []),
                rank_sampler_rng=rank_sampler_rng)
    tmp = directory / (SNAPSHOT + ".tmp")
    save_file(tensors, str(tmp), metadata={"train_state": json.dumps(meta)})
    os.replace(tmp, directory / SNAPSHOT)
    return directory / SNAPSHOT


def has_state(directory: str | Path) -> bool:
    return (Path(directory) / SNAPSHOT).exists()


def _read(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = str(Path(directory) / SNAPSHOT)
    with safe_open(path, framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("train_state", "{}"))
    return load_file(path), meta


def load_state(directory: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module | None,
               optimizer: torch.optim.Optimizer | None, sampler_rng: np.random.Generator | None,
               generators: dict[str, torch.Generator] | None = None, config: dict | None = None,
               rank: int = 0) -> dict:
    """Restore a snapshot written by :func:`save_state`; returns its JSON metadata.

    Every rank restores the same weights and optimizer state. The random generators are
    rank ``rank``'s; a rank the snapshot has no state for (a run resumed with more processes
    than wrote it) keeps the generators it has.

    Raises:
        SnapshotMismatch: ``config`` differs from the one the snapshot was written with
            (the message names the first differing field).
    """
    tensors, meta = _read(directory)
    saved = meta.get("config")
    if config is not None and saved is not None and saved != config:
        diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise SnapshotMismatch(f"{directory}: the snapshot was trained with other settings ({diff[0]}: "
                               f"{saved.get(diff[0])!r} there, {config.get(diff[0])!r} now); use a new out= "
                               f"directory or the old settings")
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
    prefix = "" if rank == 0 else f"rank{rank}."
    sampler_state = meta["sampler_rng"] if rank == 0 else meta.get("rank_sampler_rng", {}).get(str(rank))
    if f"{prefix}rng.torch" in tensors:
        torch.set_rng_state(tensors[f"{prefix}rng.torch"])
    for name, gen in (generators or {}).items():
        if f"{prefix}rng.gen.{name}" in tensors:
            gen.set_state(tensors[f"{prefix}rng.gen.{name}"])
    if sampler_rng is not None and sampler_state is not None:
        sampler_rng.bit_generator.state = sampler_state
    return meta


def load_trained(directory: str | Path, module: torch.nn.Module) -> torch.nn.Module:
    """Load a finished stage's weights into ``module``: the EMA weights if the snapshot has them."""
    tensors, _ = _read(directory)
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return module
