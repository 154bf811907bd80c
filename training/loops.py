"""Training loops of the three stages, sharing one resumable stage runner."""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from recorders.dataset import WindowSampler
from training.train_state import has_state, load_state, save_state
from worldmodel.diffusion import add_noise, sample_noise_levels
from worldmodel.dynamics import END_POS_WEIGHT, REWARD_CLASS_WEIGHTS, REWARD_CLASSES, DynamicsModel
from worldmodel.lam import LatentActionModel, lam_loss
from worldmodel.tokenizer import frames_to_tensor, moving_mask


@dataclass
class StageBudget:
    """How long and how a stage trains.

    Attributes:
        steps: optimizer steps (the stage ends at ``steps`` or ``minutes``, whichever first).
        minutes: wall-clock cap in minutes (``None``: none); the learning-rate schedule
            follows whichever of the two limits is nearer.
        batch_size: windows (or frame stacks) per step.
        lr: peak learning rate (AdamW).
        warmup: linear warm-up steps.
        weight_decay: AdamW weight decay.
        ema: decay of the exponential moving average of the weights (``None``: no EMA); the
            EMA weights are the ones exported.
        save_every_minutes: how often a resumable snapshot is written.
        pause_at: stop after this many steps with the schedule of the whole budget, to be
            resumed later (a long run split across sessions); ``None``: run to the end.
    """

    steps: int = 1000
    minutes: float | None = None
    batch_size: int = 8
    lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.01
    ema: float | None = None
    save_every_minutes: float = 2.0
    pause_at: int | None = None


def _amp_context(device: torch.device, amp: bool):
    if not amp:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_stage(name: str, model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module], tuple[torch.Tensor, dict]],
              budget: StageBudget, out_dir: Path, rng: np.random.Generator, *, device: torch.device, amp: bool,
              frames_per_step: int, progress: bool = True, generators: dict[str, torch.Generator] | None = None,
              config: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Train ``model`` on ``loss_fn`` until the budget is spent, resuming from ``out_dir`` if a snapshot is there.

    Args:
        name: stage name (for the progress bar).
        model: the module to train (on ``device``).
        loss_fn: draws a batch (from generators seeded by ``rng``) and returns (loss, logs).
        budget: steps, time and optimizer settings.
        out_dir: where snapshots go.
        rng: the data sampler's generator (its state is saved and restored).
        device: training device.
        amp: bfloat16 autocast.
        frames_per_step: frames one step consumes, for the frames/s readout.
        generators: other random generators ``loss_fn`` draws from (saved and restored).
        config: the model's config, stored in snapshots; resuming with another one is refused.

    Returns:
        (the trained module, EMA weights if configured, else the model itself; final logs).
    """
    ema = copy.deepcopy(model).requires_grad_(False) if budget.ema else None
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": budget.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=budget.lr, betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    if has_state(out_dir):
        meta = load_state(out_dir, model=model, ema=ema, optimizer=opt, sampler_rng=rng, generators=generators,
                          config=config)
        step, elapsed = meta["step"], meta["elapsed"]
        print(f"[{name}] resumed from {out_dir} at step {step} ({elapsed / 60:.1f} min trained)")
    limit_s = budget.minutes * 60 if budget.minutes else math.inf
    logs: dict = {}
    history: list[dict] = []              # every 10 steps; appended to <out_dir>/history.jsonl at each save
    bar = tqdm(total=budget.steps, initial=step, desc=name, disable=not progress, unit="step", dynamic_ncols=True)
    last_save = time.perf_counter()
    model.train()
    t_seg, step_seg = time.perf_counter(), step
    stop = budget.steps if budget.pause_at is None else min(budget.steps, budget.pause_at)
    while step < stop and elapsed < limit_s:
        progress_frac = max(step / budget.steps, elapsed / limit_s)
        lr = budget.lr * min(1.0, (step + 1) / max(1, budget.warmup))
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        with _amp_context(device, amp):
            loss, logs = loss_fn(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            d = min(budget.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - d)
        step += 1
        elapsed += time.perf_counter() - t0
        logs = {"loss": float(loss.detach()), **{k: float(v.detach() if torch.is_tensor(v) else v) for k, v in logs.items()}, "grad_norm": float(grad_norm), "lr": lr}
        if step % 10 == 0 or step == budget.steps:
            now = time.perf_counter()
            fps = (step - step_seg) * frames_per_step / max(now - t_seg, 1e-9)
            t_seg, step_seg = now, step
            bar.set_postfix(loss=f"{logs['loss']:.4f}", fps=f"{fps:.0f}", min=f"{elapsed / 60:.1f}")
            history.append({"step": step, "minutes": round(elapsed / 60, 3), "frames_per_s": round(fps, 1),
                            **{k: round(v, 6) for k, v in logs.items()}})
            if not progress and step % 100 == 0:
                print(f"[{name}] step {step}/{budget.steps} loss {logs['loss']:.4f} {fps:.0f} frames/s "
                      f"{elapsed / 60:.1f} min", flush=True)
        bar.update(1)
        if time.perf_counter() - last_save > budget.save_every_minutes * 60:
            _append_history(out_dir, history)
            save_state(out_dir, model=model, ema=ema, optimizer=opt, step=step, elapsed=elapsed, sampler_rng=rng,
                       generators=generators, config=config)
            last_save = time.perf_counter()
    bar.close()
    _append_history(out_dir, history)
    save_state(out_dir, model=model, ema=ema, optimizer=opt, step=step, elapsed=elapsed, sampler_rng=rng,
               generators=generators, config=config)
    logs.update(step=step, minutes=elapsed / 60)
    final = ema if ema is not None else model
    return final.eval(), logs


# -- stage losses -------------------------------------------------------------------------------

def _append_history(out_dir, history: list[dict]) -> None:
    """Append the logged steps to ``<out_dir>/history.jsonl`` (one JSON object per line) and clear them."""
    if history:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(out_dir) / "history.jsonl", "a") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
        history.clear()


def _batch_to(batch: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}


def tokenizer_loss_fn(sampler: WindowSampler, batch_size: int, device, moving_weight: float):
    """Reconstruction loss of a learned tokenizer, weighted on moving pixels."""

    def loss_fn(tok):
        batch = _batch_to(sampler.sample(batch_size), device)
        x = frames_to_tensor(batch["frames"])                                   # (B, T, 3, H, W)
        w = 1.0 + moving_weight * moving_mask(x)                                 # (B, T, H, W)
        rec = tok.decode(tok.encode(x)).float()
        err = (rec - x).pow(2).mean(dim=2)
        return (err * w).sum() / w.sum(), {}
    return loss_fn


def lam_loss_fn(sampler: WindowSampler, batch_size: int, device, moving_weight: float):
    """LAM loss on stacks of ``history + 2`` frames (windows of that length)."""

    def loss_fn(lam: LatentActionModel):
        batch = _batch_to(sampler.sample(batch_size), device)
        x = frames_to_tensor(batch["frames"])                                   # (B, h+2, 3, H, W)
        w = 1.0 + moving_weight * moving_mask(x)[:, -1]
        loss, codes = lam_loss(lam, x, w)
        usage = torch.bincount(codes, minlength=lam.fsq.num_codes).float()
        p = usage / usage.sum()
        perplexity = torch.exp(-(p * torch.log(p + 1e-9)).sum())
        return loss, {"perplexity": perplexity}
    return loss_fn


def dynamics_loss_fn(sampler: WindowSampler, batch_size: int, device, tokenizer, *, moving_weight: float,
                     noise_shift: float = 1.0, reward_weight: float = 0.1, end_weight: float = 0.1,
                     action_source=None, generator: torch.Generator | None = None):
    """Diffusion-forcing loss: per-frame noise levels, x0-prediction, weighted on moving pixels.

    Slot 0 of a window has no past and only serves as context. The reward and end heads are
    trained on frames whose noise level is below 0.5 (at inference they read clean frames).

    Args:
        action_source: optional ``f(frames (B, T, 3, H, W), actions (B, T)) -> (B, T)`` that
            replaces the real actions (latent-action conditioning).
    """
    classes = torch.tensor(REWARD_CLASSES, device=device)

    def loss_fn(dyn: DynamicsModel):
        batch = _batch_to(sampler.sample(batch_size), device)
        x = frames_to_tensor(batch["frames"])                                   # (B, T, 3, H, W)
        b, t = x.shape[:2]
        with torch.no_grad():
            x0 = tokenizer.encode(x).float()                                     # (B, T, N, D)
            w = tokenizer.pixel_weights(1.0 + moving_weight * moving_mask(x))    # (B, T, N, D or 1)
        actions = batch["actions"] if action_source is None else action_source(x, batch["actions"])
        levels = sample_noise_levels(b, t, shift=noise_shift, generator=generator, device=device)
        eps = torch.randn(x0.shape, generator=generator, device=device)
        out = dyn(add_noise(x0, levels, eps), levels, actions)
        err = (out.x0.float() - x0).pow(2) * w
        frame_loss = err[:, 1:].sum() / w[:, 1:].expand_as(err[:, 1:]).sum()
        target = torch.bucketize(batch["rewards"].sign(), classes)              # index into REWARD_CLASSES
        head_mask = (levels < 0.5) & (batch["actions"] >= 0)
        head_mask[:, 0] = False
        rew = F.cross_entropy(out.reward_logits.float()[head_mask], target[head_mask],
                              weight=torch.tensor(REWARD_CLASS_WEIGHTS, device=device)) if head_mask.any() else 0.0
        end = F.binary_cross_entropy_with_logits(out.end_logits.float()[head_mask],
                                                 batch["terminated"].float()[head_mask],
                                                 pos_weight=torch.tensor(END_POS_WEIGHT, device=device)) if head_mask.any() else 0.0
        loss = frame_loss + reward_weight * rew + end_weight * end
        return loss, {"frame": frame_loss, "reward": rew, "end": end}
    return loss_fn
