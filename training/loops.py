"""Training loops of the three stages, sharing one resumable stage runner, on one process or
data-parallel over several (``torchrun``, PyTorch's DistributedDataParallel)."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from recorders.dataset import WindowSampler, stack_windows
from training.train_state import has_state, load_state, save_state
from worldmodel.diffusion import add_noise, sample_noise_levels
from worldmodel.dynamics import DynamicsModel
from worldmodel.lam import LatentActionModel, lam_loss
from worldmodel.reward_model import RewardEndModel, reward_end_loss
from worldmodel.tokenizer import frames_to_tensor, moving_mask, tensor_to_frames


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
        train_only: names of the parameters to train, each a parameter's full name or the
            name of a module holding it (``["clock_emb", "clock_in"]``); the others stay as
            they are (an adapter fine-tune: new inputs learned on a frozen network).
            ``None``: train every parameter.
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
    train_only: list[str] | None = None


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run (PyTorch DistributedDataParallel).

    The default is a run of one process (rank 0 of 1), where nothing changes. ``torchrun``
    starts one process per device and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; the
    entry point reads them once with :meth:`from_env` and hands the result down. Every rank
    samples its own training windows (seeds from :meth:`seed`), DDP averages the gradients,
    so one step sees ``world_size x batch_size`` windows; rank 0 alone writes snapshots,
    logs and outputs. See ``docs/distributed.md``.

    Attributes:
        rank: this process's index in ``range(world_size)``.
        world_size: processes in the run.
        local_rank: index on this machine, which picks the GPU (``cuda:<local_rank>``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"inconsistent distributed settings: rank={self.rank}, world_size={self.world_size}, "
                             f"local_rank={self.local_rank}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Distributed:
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (as ``torchrun`` sets them; absent: one process).

        Raises:
            ValueError: a value is not an integer, or they are inconsistent (naming them).
        """
        environ = os.environ if environ is None else environ
        try:
            values = {k: int(environ.get(k, default)) for k, default in
                      (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))}
        except ValueError:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got RANK={environ.get('RANK')!r}, "
                             f"WORLD_SIZE={environ.get('WORLD_SIZE')!r}, LOCAL_RANK={environ.get('LOCAL_RANK')!r}")
        return cls(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"])

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes files and logs."""
        return self.rank == 0

    def setup(self, device: torch.device) -> torch.device:
        """Join the process group (NCCL on CUDA, gloo on CPU; ``torchrun``'s ``MASTER_ADDR`` and
        ``MASTER_PORT`` say where) and return this rank's device (``cuda:<local_rank>`` on CUDA)."""
        if not self.enabled:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=self.rank,
                                     world_size=self.world_size)
        return device

    def seed(self, seed: int) -> int:
        """The seed of this rank's own random stream: ``seed`` itself on rank 0 (so rank 0 draws
        what a one-process run draws), a 31-bit seed from ``SeedSequence([seed, rank])`` on the others."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0] >> 1)

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing on one process)."""
        if self.enabled:
            tdist.barrier()

    def shutdown(self) -> None:
        """Leave the process group, if one was joined."""
        if self.enabled and tdist.is_initialized():
            tdist.destroy_process_group()


class _LossModule(torch.nn.Module):
    """``loss_fn(model)`` as a module's forward, so that DDP's forward (which prepares its
    gradient all-reduce) wraps the whole loss computation, whatever methods it calls."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module], tuple[torch.Tensor, dict]]):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self) -> tuple[torch.Tensor, dict]:
        return self.loss_fn(self.model)


def _rank_rng_state(rng: np.random.Generator, generators: dict[str, torch.Generator] | None) -> dict:
    return dict(sampler_rng=rng.bit_generator.state, torch=torch.get_rng_state(),
                generators={k: g.get_state() for k, g in (generators or {}).items()})


def _amp_context(device: torch.device, amp: bool):
    if not amp:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def run_stage(name: str, model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module], tuple[torch.Tensor, dict]],
              budget: StageBudget, out_dir: Path, rng: np.random.Generator, *, device: torch.device, amp: bool,
              frames_per_step: int, progress: bool = True, generators: dict[str, torch.Generator] | None = None,
              config: dict | None = None, distributed: Distributed = Distributed()) -> tuple[torch.nn.Module, dict]:
    """Train ``model`` on ``loss_fn`` until the budget is spent, resuming from ``out_dir`` if a snapshot is there.

    Data-parallel when ``distributed.enabled``: every rank runs this with the same model and
    budget and its own ``rng`` and ``generators`` (seeded per rank); the loss goes through
    DistributedDataParallel, which averages the gradients, so every rank takes the same
    optimizer step, the one a single process would take on the ranks' batches combined
    (for a loss that is a mean over equal per-rank batches). Each step all-reduces the
    logged values (the logs are the ranks' mean) and rank 0's clock, so that all ranks stop
    and snapshot at the same step. Rank 0 alone writes the snapshots (with every rank's
    random-generator states) and the history; on resume each rank restores its own.

    Args:
        name: stage name (for the progress bar).
        model: the module to train (on ``device``).
        loss_fn: draws a batch (from generators seeded by ``rng``) and returns (loss, logs).
        budget: steps, time and optimizer settings; ``batch_size`` is per rank.
        out_dir: where snapshots go (a directory every rank can read, to resume).
        rng: the data sampler's generator (its state is saved and restored).
        device: training device.
        amp: bfloat16 autocast.
        frames_per_step: frames one step consumes on all ranks together, for the frames/s readout.
        progress: show a progress bar (rank 0 only).
        generators: other random generators ``loss_fn`` draws from (saved and restored).
        config: the model's config, stored in snapshots; resuming with another one is refused.
        distributed: this process's rank and world size (default: one process).

    Returns:
        (the trained module, EMA weights if configured, else the model itself; final logs).
    """
    main = distributed.is_main
    ema = copy.deepcopy(model).requires_grad_(False) if budget.ema else None
    trained = trainable_parameters(model, budget.train_only)
    decay, no_decay = [], []
    for p in trained:
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": budget.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=budget.lr, betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    if has_state(out_dir):
        meta = load_state(out_dir, model=model, ema=ema, optimizer=opt, sampler_rng=rng, generators=generators,
                          config=config, rank=distributed.rank)
        step, elapsed = meta["step"], meta["elapsed"]
        if main:
            print(f"[{name}] resumed from {out_dir} at step {step} ({elapsed / 60:.1f} min trained)")
        saved_world = meta.get("world_size", 1)
        if saved_world != distributed.world_size and main:
            print(f"[{name}] the snapshot was written by {saved_world} process(es), this run has "
                  f"{distributed.world_size}: ranks without a saved sampler state start fresh streams")
    forward = _LossModule(model, loss_fn)
    if distributed.enabled:  # after loading: every rank holds the same weights; DDP checks and syncs them
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    limit_s = budget.minutes * 60 if budget.minutes else math.inf
    logs: dict = {}
    history: list[dict] = []              # every 10 steps; appended to <out_dir>/history.jsonl at each save
    bar = tqdm(total=budget.steps, initial=step, desc=name, disable=not (progress and main), unit="step",
               dynamic_ncols=True)
    last_save = time.perf_counter()

    def save() -> None:
        # Every rank's generators travel to rank 0, which writes one snapshot for all.
        states = [None] * distributed.world_size
        mine = _rank_rng_state(rng, generators)
        if distributed.enabled:
            tdist.all_gather_object(states, mine)
        else:
            states = [mine]
        if main:
            _append_history(out_dir, history)
            save_state(out_dir, model=model, ema=ema, optimizer=opt, step=step, elapsed=elapsed, sampler_rng=rng,
                       generators=generators, config=config, other_ranks=states[1:])

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
            loss, logs = forward()
        opt.zero_grad(set_to_none=True)
        loss.backward()                   # with DDP: the gradients arrive averaged over the ranks
        grad_norm = torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        if ema is not None:
            d = min(budget.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - d)
        step += 1
        elapsed += time.perf_counter() - t0
        logs = {"loss": float(loss.detach()), **{k: float(v.detach() if torch.is_tensor(v) else v) for k, v in logs.items()}, "grad_norm": float(grad_norm), "lr": lr}
        save_due = time.perf_counter() - last_save > budget.save_every_minutes * 60
        if distributed.enabled:
            logs, elapsed, save_due = _sync_step(logs, elapsed, save_due, distributed, device)
        if step % 10 == 0 or step == budget.steps:
            now = time.perf_counter()
            fps = (step - step_seg) * frames_per_step / max(now - t_seg, 1e-9)
            t_seg, step_seg = now, step
            bar.set_postfix(loss=f"{logs['loss']:.4f}", fps=f"{fps:.0f}", min=f"{elapsed / 60:.1f}")
            if main:
                history.append({"step": step, "minutes": round(elapsed / 60, 3), "frames_per_s": round(fps, 1),
                                **{k: round(v, 6) for k, v in logs.items()}})
            if main and not progress and step % 100 == 0:
                print(f"[{name}] step {step}/{budget.steps} loss {logs['loss']:.4f} {fps:.0f} frames/s "
                      f"{elapsed / 60:.1f} min", flush=True)
        bar.update(1)
        if save_due:
            save()
            last_save = time.perf_counter()
    bar.close()
    save()
    logs.update(step=step, minutes=elapsed / 60)
    final = ema if ema is not None else model
    return final.eval(), logs


def trainable_parameters(model: nn.Module, names: list[str] | str | None) -> list[nn.Parameter]:
    """The parameters of ``model`` that ``names`` selects (see ``StageBudget.train_only``), with
    ``requires_grad`` set on them and cleared on the others; every parameter for ``None``.

    Raises:
        ValueError: a name that is neither a parameter nor a module of ``model``, or an empty list.
    """
    params = dict(model.named_parameters())
    if names is None:
        return list(params.values())
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("train_only is empty: name at least one parameter or module to train")
    modules = {n for n, _ in model.named_modules() if n}
    unknown = [n for n in names if n not in params and n not in modules]
    if unknown:
        raise ValueError(f"train_only names {unknown}, which {type(model).__name__} does not have; its "
                         f"top-level modules are {sorted(n for n in modules if '.' not in n)}")
    chosen = [p for n, p in params.items() if any(n == m or n.startswith(m + ".") for m in names)]
    model.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def _sync_step(logs: dict[str, float], elapsed: float, save_due: bool, distributed: Distributed,
               device: torch.device) -> tuple[dict[str, float], float, bool]:
    """One all-reduce per step: the logged values averaged over the ranks, and rank 0's training
    clock and snapshot timer for everyone (so that every rank stops and saves at the same step)."""
    keys = sorted(logs)
    clock = [elapsed, float(save_due)] if distributed.is_main else [0.0, 0.0]
    # NCCL reduces CUDA tensors only; gloo CPU ones.
    t = torch.tensor([logs[k] for k in keys] + clock, dtype=torch.float64,
                     device=device if device.type == "cuda" else "cpu")
    tdist.all_reduce(t)
    values = t.tolist()
    synced = {k: v / distributed.world_size for k, v in zip(keys, values)}
    synced["lr"] = logs["lr"]             # the same on every rank; kept exact
    return {k: synced[k] for k in logs}, values[-2], values[-1] > 0


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


def reward_loss_fn(sampler: WindowSampler, batch_size: int, device, *, event_share: float = 0.25):
    """Reward and end model loss on transitions ``(x_t, a_t, x_{t+1})`` (windows of 2 frames).

    ``event_share`` of each batch is drawn from the rare transitions (non-zero reward or game
    end), the rest uniformly; importance weights (true over sampling probability) keep the
    loss an unbiased estimate of the uniform one, so the decoded predictions stay calibrated
    while the rare classes are seen far more often.
    """
    events = [(e, int(t)) for e, ep in enumerate(sampler.episodes)
              for t in np.flatnonzero((ep.rewards != 0) | ep.terminated)]
    total = sum(len(ep.actions) for ep in sampler.episodes)
    n_events = round(batch_size * event_share) if events else 0
    share = n_events / batch_size
    # P(sample) over a batch slot: uniform part (1 - share) / total, plus share / len(events) for an event.
    w_plain = 1.0 / (1.0 - share)
    w_event = 1.0 / ((1.0 - share) + share * total / len(events)) if events else w_plain

    def loss_fn(model: RewardEndModel):
        items = [sampler.sample_one() for _ in range(batch_size - n_events)]
        items += [sampler.window_at(*events[i]) for i in sampler.rng.integers(len(events), size=n_events)]
        batch = _batch_to(stack_windows(items), device)
        x = frames_to_tensor(batch["frames"])                                   # (B, 2, 3, H, W)
        actions = batch["actions"][:, 1].clamp(min=0)     # a_t; -1 only marks an episode's first frame
        rewards, ends = batch["rewards"][:, 1], batch["terminated"][:, 1]
        weights = torch.where((rewards != 0) | ends, w_event, w_plain)
        return reward_end_loss(model, x, actions, rewards, ends, weights)
    return loss_fn


def _previous_frames(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, T, ...)`` -> the frame before each slot (zeros before the first): the previous-frame skip's base."""
    return torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)


def focal_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """Per-item focal loss ``-(1 - p)^gamma log p`` (Lin et al. 2017, "Focal Loss for Dense
    Object Detection"), ``p`` the softmax probability of the target class.

    Args:
        logits: ``(M, K)`` float scores.
        targets: ``(M,)`` int64 classes in ``[0, K)``.
        gamma: focusing exponent; 0 gives the plain cross-entropy.

    Returns:
        ``(M,)`` float32 losses (nats).
    """
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    if gamma == 0:
        return ce
    return (1.0 - torch.exp(-ce)).clamp(min=0.0).pow(gamma) * ce


def as_shown(tokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, T, N, D)`` predicted tokens -> float32 tokens of the frames a dream shows: decoded,
    rounded to uint8 and encoded again."""
    return tokenizer.encode(frames_to_tensor(tensor_to_frames(tokenizer.decode(tokens.float())))).float()


def free_running_rollout(dyn: DynamicsModel, tokenizer, inputs: torch.Tensor, actions: torch.Tensor,
                         since_reward: torch.Tensor | None, frames: int, *,
                         generator: torch.Generator | None = None, events: torch.Tensor | None = None) -> torch.Tensor:
    """Replace the last ``frames`` frames of windows by the model's own free-running rollout.

    Frame ``k`` is made from the (already replaced) frames before it, clean, and pure noise,
    in one sampling step, with each pixel's most likely colour for a palette model, and
    rounded to uint8 and encoded again: what a :class:`~worldmodel.simulator.Simulator`
    with the default sampler (one step, no context noise, temperature 0) shows, without its
    KV cache (each pass runs over the window up to the frame made). No gradients.

    Args:
        dyn: the dynamics model (or its DistributedDataParallel wrapper).
        tokenizer: the patch tokenizer the tokens come from.
        inputs: ``(B, T, N, D)`` float tokens of the windows.
        actions: ``(B, T)`` int64, the action that produced each frame.
        since_reward: ``(B, T)`` int64 reward clock (aligned like ``actions``), or None.
        frames: how many frames, ``1 <= frames < T``.
        generator: the noise's random generator.
        events: ``(B, T)`` int64 event codes of the frames, for a model with ``event_codes``.

    Returns:
        ``(B, T, N, D)`` float tokens: ``inputs``' first ``T - frames`` frames, then the rollout's.

    Raises:
        ValueError: ``frames`` outside ``[1, T - 1]``.
    """
    b, t = inputs.shape[:2]
    if not 1 <= frames < t:
        raise ValueError(f"a rollout replaces 1 to {t - 1} frames of a {t}-frame window, got {frames!r}")
    x = inputs.clone()
    with torch.no_grad():
        for k in range(t - frames, t):
            noise = torch.randn((b, 1, *x.shape[2:]), generator=generator, device=x.device)
            levels = torch.cat([torch.zeros(b, k, device=x.device), torch.ones(b, 1, device=x.device)], dim=1)
            made = dyn(torch.cat([x[:, :k], noise], dim=1), levels, actions[:, :k + 1], skip_tokens=x[:, k - 1:k],
                       predict=1, since_reward=None if since_reward is None else since_reward[:, :k + 1],
                       events=None if events is None else events[:, :k + 1])
            x[:, k] = as_shown(tokenizer, made)[:, 0]
    return x


def dynamics_loss_fn(sampler: WindowSampler, batch_size: int, device, tokenizer, *, moving_weight: float,
                     noise_shift: float = 1.0, action_source=None, generator: torch.Generator | None = None,
                     scheduled_sampling: float = 0.0, scheduled_sampling_passes: int = 1,
                     stale_pixels: float = 0.0, focal_gamma: float = 0.0, hard_pixel_weight: float = 0.0,
                     rollout_frames: int = 0, event_diversity: float = 0.0, clock_dropout: float = 0.0,
                     teacher_forcing: float = 0.0, moving_radius: int = 1):
    """Diffusion-forcing loss: per-frame noise levels, x0-prediction, weighted on moving pixels.

    The x0-prediction's loss is the mean squared error of the tokens, or for a model with a
    palette (``cfg.palette_size``) the cross-entropy of each pixel's nearest palette colour.

    Slot 0 of a window has no past and only serves as context.

    Args:
        action_source: optional ``f(frames (B, T, 3, H, W), actions (B, T)) -> (B, T)`` that
            replaces the real actions (latent-action conditioning).
        scheduled_sampling: probability that a frame is replaced, as input and as the base the
            next frame corrects, by the model's own prediction of it, rounded to uint8 like a
            frame the dream shows (scheduled sampling, Bengio et al. 2015, "Scheduled Sampling
            for Sequence Prediction with Recurrent Neural Networks"; a one-pass stand-in for
            training on whole rollouts, as in Self Forcing, Huang et al. 2025). The targets stay
            the real frames, so the model learns to correct its own errors instead of building
            on them. Costs one extra forward pass without gradients per step; 0 = off.
        scheduled_sampling_passes: how many times frames are swapped for the model's own
            predictions. From the second pass on, a frame can be predicted from a context that
            already holds the model's own frames, so its errors build on earlier ones as in free
            play (a rollout truncated to that many steps; Self Forcing trains on whole ones).
            One forward pass without gradients per pass; >= 1.
        stale_pixels: probability that a pixel of an input frame shows what the same pixel
            showed 1 to 3 frames earlier (the targets stay the real frames): a static pixel
            does not change, a moving object leaves the stale pixels a dream leaves when it
            fails to erase where an object was, and the model learns to erase them (noise
            on the context frames, Diffusion Forcing's remedy for drift, in the form the
            dream's errors take); 0 = off.
        focal_gamma: with a palette, each pixel's cross-entropy is scaled by ``(1 - p)^gamma``,
            ``p`` the probability the model gives the right colour (:func:`focal_cross_entropy`),
            so the loss goes to the pixels the model gets wrong, whether they change or not;
            0 = plain cross-entropy.
        hard_pixel_weight: with a palette, extra loss weight of each pixel whose most likely
            colour (the copy bias included) is wrong, decided afresh at every step: the loss of
            the pixels the dream would draw wrong now, such as a leftover row of a paddle that
            does not change in the game and so never gets ``moving_weight``, is raised while
            every other pixel keeps its weight (pixel-level online hard example mining,
            Shrivastava et al. 2016, "Training Region-based Object Detectors with Online Hard
            Example Mining"). Unlike ``focal_gamma`` it leaves the loss of the pixels the model
            gets right as it is. On Pong (20, docs/experiments.md, session 29) it cut the broken
            frames one step ahead, but the model learnt to hedge on such pixels and left stray
            ones behind in free play; 0 = off.
        rollout_frames: at most this many frames at the end of each window are replaced, as
            input, by the model's own free-running rollout from the frames before them, made
            the way the dream makes its frames (:class:`~worldmodel.simulator.Simulator`: one
            sampling step from pure noise with a clean context, each pixel's most likely colour
            with a palette, rounded to uint8), one frame after another. Each training step draws
            how many, 1 to ``rollout_frames``, for the whole batch; the targets stay the real
            frames. Unlike ``scheduled_sampling``, whose frames are predicted in one parallel
            pass from partly noised frames, these are the errors free play makes and builds on,
            so the model learns to come back from them: a truncated form of Self Forcing's
            training on whole rollouts (Huang et al. 2025, "Self Forcing: Bridging the
            Train-Test Gap in Autoregressive Video Diffusion"), with the real frames' loss in
            place of its distribution matching. Costs that many forward passes without
            gradients per step (each over the window up to the frame made); 0 = off.
        event_diversity: for a model with event codes (``cfg.event_codes``), the weight of
            ``log K - H(q̄)``, ``q̄`` the posterior's distribution averaged over the batch's
            frames (the diversity loss of wav2vec 2.0's codebooks, Baevski et al. 2020): without
            it a posterior can settle on one code for every frame, whose embedding is then a mere
            bias, and say nothing. It asks only that the codes be used alike over the batch, which
            a posterior near uniform on every frame meets as well as one sure of a different code
            for each kind of frame: on Pong with the network frozen (0.05, session 30) it kept all
            16 codes in use and said next to nothing. 0 = off.
        clock_dropout: for a model with a reward clock, probability that a window's clock reads
            "none seen" (``reward_clock``) at every frame, whatever the rewards before it were
            (condition dropout, as classifier-free guidance trains its unconditional model, Ho &
            Salimans 2022). The dream's clock comes from its reward model, which misses a point
            the dream does not draw whole; the clock then runs on while the frames show what
            follows a point, a state the real clock never pairs with them. With dropout the model
            has seen such windows and what came next (the serve). 0 = off.
        teacher_forcing: probability that a window is noised the way the dream samples: every
            frame but the last at a context level (``U(0, 0.1)``, as the Simulator's clean or
            lightly noised cache) and the last at a level drawn as usual (teacher forcing, the
            baseline Diffusion Forcing generalises, Chen et al. 2024). Diffusion forcing's
            independent levels put all 7 frames before the last of an 8-frame window (the
            shipped models') at context levels in 1 window of 128 (each with probability 1/2),
            so what the dream does with a clean context, such as reading the reward clock while
            the context shows nothing but the wait for a serve, gets that share of the training;
            0 = off.
        moving_radius: how many pixels around a changed pixel also get ``moving_weight``
            (:func:`~worldmodel.tokenizer.moving_mask`). With 1, a moving object's next place
            along its path, if the game does not take it there, is a pixel that keeps its colour
            beyond the mask's reach, weighted as any still pixel: on Pong the computer's paddle
            that rises after a point and jumps back down with the serve, which the patch above it
            goes on drawing (docs/experiments.md, session 36). A radius a little over one
            frame's displacement weights where an object could have gone as much as where it
            went: Pong's paddle moves 2-3 pixels a frame at 64 x 64, and 4 covers all the pixels
            of that rise at the held-out serves (3: 70%).

    The loss of a model with event codes also trains the prior on the posterior's distribution
    (:data:`EVENT_PRIOR_WEIGHT`); the logs then carry ``frame_loss``, ``event_kl`` and
    ``event_usage`` (``H(q̄)`` in nats).

    Raises:
        ValueError: ``rollout_frames`` negative, or (on the first step) not below the window's
            length: one real frame at least starts the rollout.
    """

    if rollout_frames < 0:
        raise ValueError(f"rollout_frames must be >= 0, got {rollout_frames!r}")
    if hard_pixel_weight < 0:
        raise ValueError(f"hard_pixel_weight must be >= 0, got {hard_pixel_weight!r}")
    if event_diversity < 0:
        raise ValueError(f"event_diversity must be >= 0, got {event_diversity!r}")
    if not 0.0 <= clock_dropout <= 1.0:
        raise ValueError(f"clock_dropout must be a probability in [0, 1], got {clock_dropout!r}")
    if not 0.0 <= teacher_forcing <= 1.0:
        raise ValueError(f"teacher_forcing must be a probability in [0, 1], got {teacher_forcing!r}")
    if moving_radius < 0:
        raise ValueError(f"moving_radius must be >= 0, got {moving_radius!r}")

    def stale(x: torch.Tensor) -> torch.Tensor:
        """Frames ``(B, T, 3, H, W)`` with pixels drawn from 1-3 frames earlier, each with probability ``stale_pixels``."""
        b, t, _, h, w = x.shape
        back = torch.randint(1, 4, (b, t, 1, h, w), generator=generator, device=device)
        source = (torch.arange(t, device=device)[None, :, None, None, None] - back).clamp(min=0)
        earlier = torch.gather(x, 1, source.expand_as(x))
        pick = torch.rand((b, t, 1, h, w), generator=generator, device=device) < stale_pixels
        return torch.where(pick, earlier, x)

    def own_frames(dyn: DynamicsModel, x0, actions, since, events):
        """``x0`` with frames swapped for the model's own one-pass predictions, as the dream would show them."""
        shape = x0.shape[:2]
        with torch.no_grad():
            levels = sample_noise_levels(*shape, shift=noise_shift, generator=generator, device=device)
            eps = torch.randn(x0.shape, generator=generator, device=device)
            made = dyn(add_noise(x0, levels, eps), levels, actions, skip_tokens=_previous_frames(x0),
                       since_reward=since, events=events).float()
            made = as_shown(tokenizer, made)
            # Only frames predicted from a high noise level are the model's own; a frame given
            # almost clean is a copy of the real one.
            pick = torch.rand(shape, generator=generator, device=device) < scheduled_sampling
            return torch.where(((levels >= 0.5) & pick)[..., None, None], made, x0)

    def loss_fn(dyn: DynamicsModel):
        batch = _batch_to(sampler.sample(batch_size), device)
        x = frames_to_tensor(batch["frames"])                                   # (B, T, 3, H, W)
        b, t = x.shape[:2]
        with torch.no_grad():
            x0 = tokenizer.encode(x).float()                                     # (B, T, N, D)
            w = tokenizer.pixel_weights(1.0 + moving_weight * moving_mask(x, radius=moving_radius))  # (B, T, N, D|1)
        actions = batch["actions"] if action_source is None else action_source(x, batch["actions"])
        since = batch["since_reward"]
        if clock_dropout and dyn.cfg.reward_clock:
            dropped = torch.rand((b, 1), generator=generator, device=device) < clock_dropout
            since = torch.where(dropped, dyn.cfg.reward_clock, since)
        inputs = tokenizer.encode(stale(x)).float() if stale_pixels > 0 else x0
        codes = events = None
        if dyn.cfg.event_codes:   # the real frames' codes: the same event in every pass, no-gradient ones included
            posterior = dyn.event_scores("posterior", x0[:, :-1], x0[:, 1:], actions[:, 1:], since[:, 1:])
            codes, events = event_samples(posterior, generator)
        for _ in range(scheduled_sampling_passes if scheduled_sampling > 0 else 0):
            inputs = own_frames(dyn, inputs, actions, since, codes)
        if rollout_frames:
            if rollout_frames >= t:
                raise ValueError(f"rollout_frames must be below the window's {t} frames (a real frame starts the "
                                 f"rollout), got {rollout_frames!r}")
            frames = int(torch.randint(1, rollout_frames + 1, (1,), generator=generator, device=device))
            inputs = free_running_rollout(dyn, tokenizer, inputs, actions, since, frames, generator=generator,
                                          events=codes)
        levels = sample_noise_levels(b, t, shift=noise_shift, generator=generator, device=device)
        if teacher_forcing:
            forced = torch.rand((b, 1), generator=generator, device=device) < teacher_forcing
            context = sample_noise_levels(b, t, context_prob=1.0, generator=generator, device=device)
            levels = torch.where(forced & (torch.arange(t, device=device) < t - 1), context, levels)
        eps = torch.randn(x0.shape, generator=generator, device=device)
        palette = dyn.cfg.palette_size
        previous = _previous_frames(inputs)
        pred = dyn(add_noise(inputs, levels, eps), levels, actions, skip_tokens=previous,
                   since_reward=since, events=events, **({"logits": True} if palette else {}))
        logs = {}
        if events is not None:   # the prior learns the posterior's distribution from the frames a dream has
            prior = dyn.event_scores("prior", previous[:, :-1], inputs[:, :-1], actions[:, 1:],
                                     since[:, 1:])
            logs["event_kl"] = categorical_kl(posterior.detach(), prior).mean()
            usage = posterior.softmax(-1).mean((0, 1))
            logs["event_usage"] = -(usage * usage.clamp_min(1e-12).log()).sum()
        if palette:   # cross-entropy of each pixel's palette colour; weights per pixel
            w = w[..., ::3]                                                      # (B, T, N, P): (p q c) layout
            targets = dyn.palette_targets(x0)                                    # (B, T, N, P)
            if hard_pixel_weight:
                w = w + hard_pixel_weight * (pred.detach().argmax(-1) != targets)
            err = focal_cross_entropy(pred.flatten(0, -2), targets.flatten(), focal_gamma).view_as(w) * w
            frame_loss = err[:, 1:].sum() / w[:, 1:].sum()
        else:
            err = (pred.float() - x0).pow(2) * w
            frame_loss = err[:, 1:].sum() / w[:, 1:].expand_as(err[:, 1:]).sum()
        if logs:
            logs["frame_loss"] = frame_loss.detach()
            diversity = event_diversity * (math.log(dyn.cfg.event_codes) - logs["event_usage"])
            return frame_loss + EVENT_PRIOR_WEIGHT * logs["event_kl"] + diversity, logs
        return frame_loss, logs
    return loss_fn


EVENT_PRIOR_WEIGHT = 0.1
"""Weight of the event prior's loss (:func:`categorical_kl`, nats per frame) beside the frame
loss (nats per pixel). The prior has its own weights, so the weight leaves its Adam steps as they
are; it keeps the prior's gradients, larger while it is new, from taking the clipped norm's share."""


def categorical_kl(posterior: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``KL(q || p)`` in nats ``(...)`` float32 of categorical distributions given by logits ``(..., K)``."""
    q = posterior.float().log_softmax(-1)
    return (q.exp() * (q - prior.float().log_softmax(-1))).sum(-1)


def event_samples(posterior: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes drawn from a posterior's logits ``(B, T-1, K)`` of frames 1..T-1 of windows.

    Returns:
        ``codes (B, T) int64`` (-1, none, for frame 0) for passes without gradients, and ``events
        (B, T, K + 1)`` float: the same codes as one-hot rows (frame 0's at "none", index K) with the
        straight-through gradient of the posterior's probabilities (DreamerV2's categorical
        latents, Hafner et al. 2021), for :meth:`~worldmodel.dynamics.DynamicsModel.forward`.
    """
    b, _, k = posterior.shape
    probs = posterior.float().softmax(-1)
    drawn = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(b, -1)
    one_hot = F.one_hot(drawn, k).float() + probs - probs.detach()
    none = F.one_hot(torch.full((b, 1), k, device=posterior.device), k + 1).float()
    events = torch.cat([none, F.pad(one_hot, (0, 1))], dim=1)
    codes = torch.cat([torch.full((b, 1), -1, device=posterior.device, dtype=torch.long), drawn], dim=1)
    return codes, events
