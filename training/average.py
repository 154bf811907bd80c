"""Average the dynamics weights of several bundles: a model soup.

Run it with Hydra::

    python -m training.average 'bundles=[pong,runs/pong-rollout1b/bundle]' out=runs/pong-soup
    python -m training.average 'bundles=[a/bundle,b/bundle,c/bundle]' 'weights=[2,1,1]' out=runs/soup

Runs fine-tuned from one checkpoint lie in one basin of the loss, where the element-wise mean of
their weights is a model too, often better than each of them (Wortsman et al. 2022, "Model
soups: averaging weights of multiple fine-tuned models improves accuracy without increasing
inference time"). Here it undoes what longer training does to free play: on Pong, runs trained
on from the shipped checkpoint stall (docs/experiments.md, sessions 27-29), their averages with
it do not, though none has yet beaten the shipped model itself.

Only the dynamics model is averaged. Everything else (tokenizer, LAM, reward and end model,
sampler, start windows, the game's keys) is the first bundle's; the bundle's ``info`` lists the
commands that made each averaged bundle and this command.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.pipeline import WEIGHT_DTYPES, bundle_commands
from worldmodel.bundle import ModelBundle, load
from worldmodel.config import to_dict


@dataclass
class AverageConfig:
    """What ``python -m training.average`` averages (the Hydra config maps onto it).

    Attributes:
        bundles: two or more bundles (shipped names or directories) of one game whose dynamics
            models share a config; the first gives everything but the dynamics weights.
        out: the averaged bundle's directory (created; an existing bundle there is replaced).
        weights: one non-negative weight per bundle, normalised to sum to 1 (default: equal).
        weights_dtype: how the bundle stores its weights: ``float32``, ``float16`` (the shipped
            checkpoints) or ``bfloat16``.
    """

    bundles: list[str] = field(default_factory=list)
    out: str = ""
    weights: list[float] | None = None
    weights_dtype: str = "float16"


def average_dynamics(bundles: list[ModelBundle], weights: list[float] | None = None,
                     names: list[str] | None = None) -> ModelBundle:
    """The first bundle with its dynamics weights replaced by the weighted mean of all bundles'.

    Each floating-point parameter is averaged in float32 (``sum_i w_i theta_i`` with the
    weights normalised to sum to 1). Buffers that are not learned (the palette) must be equal
    in every bundle: a mean of two palettes would draw colours neither model was trained on.
    The first bundle's dynamics model is changed in place and returned in its bundle.

    Args:
        bundles: two or more loaded bundles.
        weights: one weight >= 0 per bundle, not all 0 (default: equal).
        names: what to call each bundle in errors (default ``bundle 0``, ``bundle 1``, ...).

    Returns:
        The first bundle, its dynamics model holding the average.

    Raises:
        ValueError: fewer than two bundles; a weight count that differs from the bundle count,
            a negative weight or all zero; bundles of different games or dynamics configs, or
            different palettes.
    """
    names = names or [f"bundle {i}" for i in range(len(bundles))]
    if len(bundles) < 2:
        raise ValueError(f"averaging needs two bundles or more, got {len(bundles)}")
    w = torch.ones(len(bundles), dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
    if w.shape != (len(bundles),):
        raise ValueError(f"weights must hold one number per bundle ({len(bundles)}), got {list(weights)}")
    if (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"weights must be >= 0 and not all 0, got {list(weights)}")
    w = w / w.sum()
    first = bundles[0]
    states = [b.dynamics.state_dict() for b in bundles]
    learned = {name for name, _ in first.dynamics.named_parameters()}
    ours = to_dict(first.dynamics_config)
    for b, state, name in zip(bundles[1:], states[1:], names[1:]):
        if b.game != first.game:
            raise ValueError(f"{name} is a {b.game!r} bundle, {names[0]} a {first.game!r} one")
        theirs = to_dict(b.dynamics_config)
        diff = {k: (v, theirs.get(k)) for k, v in ours.items() if v != theirs.get(k)}
        if diff:
            raise ValueError(f"{name}'s dynamics config differs from {names[0]}'s: {diff} ({names[0]}'s value, "
                             f"then {name}'s)")
        for key, ref in states[0].items():
            if key not in learned and not torch.equal(state[key], ref):
                raise ValueError(f"{name}'s dynamics buffer {key!r} differs from {names[0]}'s; only learned "
                                 f"weights are averaged")
    mean = {key: sum(float(wi) * s[key].float() for wi, s in zip(w, states)).to(ref.dtype) if key in learned else ref
            for key, ref in states[0].items()}
    first.dynamics.load_state_dict(mean)
    return first


def run(cfg: AverageConfig) -> Path:
    """Load ``cfg.bundles``, average their dynamics (:func:`average_dynamics`) and save the bundle to ``cfg.out``.

    Returns:
        The written bundle directory.

    Raises:
        ValueError: no ``out``, an unknown ``weights_dtype``, or what :func:`average_dynamics` raises.
        CheckpointError: a bundle that cannot be loaded.
    """
    if not cfg.out:
        raise ValueError("out=DIR is required: where the averaged bundle goes")
    if cfg.weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {sorted(WEIGHT_DTYPES)}, got {cfg.weights_dtype!r}")
    bundles = [load(b) for b in cfg.bundles]
    averaged = average_dynamics(bundles, cfg.weights, names=list(cfg.bundles))
    command = "python -m training.average " + shlex.join(sys.argv[1:])
    weights = cfg.weights or [1.0] * len(bundles)
    averaged.info = {**averaged.info, "command": command,
                     "commands": [*bundle_commands(averaged), command],
                     "averaged": [{"bundle": name, "weight": float(wt), "commands": bundle_commands(b)}
                                  for name, wt, b in zip(cfg.bundles, weights, bundles)]}
    averaged.info.pop("metrics", None)   # the first bundle's figures are not the average's
    path = averaged.save(cfg.out, weights_dtype=WEIGHT_DTYPES[cfg.weights_dtype])
    print(f"averaged the dynamics of {len(bundles)} bundles ({', '.join(cfg.bundles)}) into {path}")
    return path


def main() -> None:
    """Hydra entry point (see the module docstring)."""
    from worldmodel.bundle import CheckpointError
    from worldmodel.cli import hydra_command

    hydra_command(__file__, "average", lambda cfg: run(AverageConfig(**cfg)), (ValueError, TypeError, CheckpointError))


if __name__ == "__main__":
    main()
