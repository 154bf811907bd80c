"""The end-to-end training pipeline: record (if needed) -> tokenizer -> LAM -> reward -> dynamics -> evaluate -> bundle.

Run it with Hydra::

    python -m training.pipeline game=pong preset=cpu export=worldmodel/checkpoints/pong
    python -m training.pipeline preset=tiny out=runs/smoke          # seconds
    python -m training.pipeline +budget.dynamics.minutes=5          # override any budget field
    torchrun --nproc-per-node 2 -m training.pipeline preset=gpu     # data-parallel (docs/distributed.md)

Every stage snapshots itself every few minutes under ``<out>/<stage>/``; running the same
command again resumes where it stopped, and a finished stage is not trained again.
Under ``torchrun`` every process trains on its own windows with DistributedDataParallel
(``budget.*.batch_size`` is per process), and rank 0 alone records missing datasets, writes
snapshots, metrics and the bundle, and runs the evaluation.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from envs.games import get_game
from envs.readout import readout_for
from recorders.collect import RecordConfig, record
from recorders.dataset import NULL_ACTION, DatasetError, EpisodeDataset, WindowSampler, episode_paths
from training.evaluate import paddle_control, sample_windows, teacher_forced, tokenizer_reconstruction, write_video
from training.loops import Distributed, dynamics_loss_fn, lam_loss_fn, reward_loss_fn, run_stage, tokenizer_loss_fn
from training.presets import TrainBudget, get_budget
from training.train_state import has_state, load_trained
from worldmodel.bundle import ModelBundle, load
from worldmodel.config import ModelPreset, get_preset, to_dict, update_dataclass
from worldmodel.device import cpu_supports_bf16, resolve_device
from worldmodel.dynamics import DynamicsModel, most_common_colours
from worldmodel.lam import LatentActionModel
from worldmodel.latent_actions import fit_action_codes
from worldmodel.reward_model import RewardEndModel, game_over_targets
from worldmodel.tokenizer import build_tokenizer, frames_to_tensor

STAGES = ("tokenizer", "lam", "reward", "dynamics", "evaluate")
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class PipelineConfig:
    """Everything one pipeline run needs (the Hydra config maps onto it).

    Attributes:
        game: game name.
        preset: model size and training budget name (``tiny``, ``cpu``, ``gpu``).
        out: run directory (snapshots, bundle, metrics, video).
        dataset: training dataset directory; recorded first if it does not exist.
        heldout: held-out dataset directory (other seeds); recorded first if missing.
        device: ``auto``, ``cpu`` or ``cuda``.
        amp: bfloat16 autocast: ``auto`` (on CUDA, or a CPU with native bf16), ``true``, ``false``.
        seed: seeds recording, sampling and initialisation.
        export: copy the final bundle here too (e.g. ``worldmodel/checkpoints/pong``).
        stages: which stages to run.
        moving_weight: extra loss weight of moving pixels.
        scheduled_sampling: probability that a dynamics training frame is replaced, as
            context, by the model's own prediction of it (0 = teacher forcing only; see
            :func:`training.loops.dynamics_loss_fn`).
        scheduled_sampling_passes: rounds of that replacement; from the second on, frames are
            also predicted from contexts holding the model's own frames (>= 1).
        stale_pixels: probability that a pixel of a dynamics training input shows what it
            showed 1-3 frames earlier, targets unchanged (0 = off; see
            :func:`training.loops.dynamics_loss_fn`).
        focal_gamma: with a palette, the dynamics loss of each pixel is scaled by ``(1 -
            p)^focal_gamma``, ``p`` the model's probability of the right colour (focal loss;
            0 = plain cross-entropy).
        hard_pixel_weight: with a palette, extra dynamics loss weight of each pixel whose most
            likely colour is wrong at that step (online hard example mining; 0 = off; see
            :func:`training.loops.dynamics_loss_fn`).
        event_diversity: for a dynamics model with event codes, the weight of the loss that keeps
            the posterior using all of them (0 = off; see :func:`training.loops.dynamics_loss_fn`).
        rollout_frames: at most this many frames at the end of each dynamics training window
            are replaced, as input, by the model's own free-running rollout, made as the dream
            makes its frames; targets unchanged (0 = off; below the window's
            ``context_frames``; see :func:`training.loops.dynamics_loss_fn`).
        clock_dropout: for a dynamics model with a reward clock, probability that a training
            window's clock reads "none seen" throughout (0 = off; see
            :func:`training.loops.dynamics_loss_fn`).
        teacher_forcing: probability that a dynamics training window is noised as the dream
            samples, every frame but the last at a context level (0 = off; see
            :func:`training.loops.dynamics_loss_fn`).
        moving_radius: pixels around a changed pixel that also get the dynamics loss's
            ``moving_weight`` (1: the tokenizer's and the LAM's; see
            :func:`training.loops.dynamics_loss_fn`).
        conditioning: what the dynamics model is conditioned on: ``"actions"`` (the recorded
            actions) or ``"latent"`` (the LAM's codes of the frames, no action labels; Genie's
            set-up). A latent bundle also gets a key-to-code map fitted on ``labelled_steps``
            labelled training transitions, so that it is played with the game's keys. It has no
            reward model (that one takes the game's actions), and from an ``init_from`` bundle
            conditioned on actions it takes only the tokenizer and the LAM: the dynamics train
            from scratch.
        labelled_steps: labelled transitions the key-to-code map is fitted on (``"latent"``).
        start_windows: real start windows stored in the bundle.
        init_from: warm start: a bundle (shipped name or directory) whose weights initialise
            each stage that has no snapshot of its own yet, so quality can grow over several
            runs (the model configs must match the bundle's); a stage that is not run and
            has no snapshot takes the bundle's model unchanged. A bundle of another game
            initialises only the stages run here, with fresh action embeddings and this
            game's palette (transfer).
        weights_dtype: how the bundle stores its weights: ``float32``, or ``float16`` (half the
            size; the shipped checkpoints, whose dreams match float32's step for step until
            one pixel flips after tens of steps) or ``bfloat16``; loading casts back to float32.
        progress: progress bars.
    """

    game: str = "pong"
    preset: str = "cpu"
    out: str = "runs/pong-cpu"
    dataset: str = "data/pong"
    heldout: str = "data/pong-heldout"
    device: str = "auto"
    amp: str = "auto"
    seed: int = 0
    export: str | None = None
    stages: tuple[str, ...] = STAGES
    moving_weight: float = 20.0
    scheduled_sampling: float = 0.0
    scheduled_sampling_passes: int = 1
    stale_pixels: float = 0.0
    focal_gamma: float = 0.0
    hard_pixel_weight: float = 0.0
    event_diversity: float = 0.0
    rollout_frames: int = 0
    clock_dropout: float = 0.0
    teacher_forcing: float = 0.0
    moving_radius: int = 1
    conditioning: str = "actions"
    labelled_steps: int = 200
    start_windows: int = 32
    init_from: str | None = None
    weights_dtype: str = "float32"
    progress: bool = True
    model: ModelPreset = field(default_factory=ModelPreset)
    budget: TrainBudget = field(default_factory=TrainBudget)


def build_config(values: dict) -> PipelineConfig:
    """Turn a plain dict (from Hydra) into a :class:`PipelineConfig`, applying preset overrides.

    Raises:
        ValueError: unknown game, preset, stage or setting name.
    """
    values = dict(values)
    model_over = values.pop("model", None) or {}
    budget_over = values.pop("budget", None) or {}
    known = {f for f in PipelineConfig.__dataclass_fields__} - {"model", "budget"}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    if isinstance(values.get("stages"), str):  # stages=dynamics on the command line
        values["stages"] = [values["stages"]]
    cfg = PipelineConfig(**values)
    get_game(cfg.game)
    cfg.stages = tuple(cfg.stages)
    bad = set(cfg.stages) - set(STAGES)
    if bad:
        raise ValueError(f"unknown stage(s) {sorted(bad)}; stages: {STAGES}")
    for name in ("scheduled_sampling", "stale_pixels", "clock_dropout", "teacher_forcing"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(cfg, name)!r}")
    for name in ("focal_gamma", "hard_pixel_weight", "event_diversity", "moving_radius"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
    if cfg.scheduled_sampling_passes < 1:
        raise ValueError(f"scheduled_sampling_passes must be >= 1, got {cfg.scheduled_sampling_passes!r}")
    if cfg.conditioning not in ("actions", "latent"):
        raise ValueError(f"conditioning must be 'actions' or 'latent', got {cfg.conditioning!r}")
    if cfg.weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {sorted(WEIGHT_DTYPES)}, got {cfg.weights_dtype!r}")
    if cfg.labelled_steps < 1:
        raise ValueError(f"labelled_steps must be >= 1, got {cfg.labelled_steps}")
    model = get_preset(cfg.preset)
    parts = ("tokenizer", "lam", "reward", "dynamics", "sampler")
    for part in parts:
        setattr(model, part, update_dataclass(getattr(model, part), model_over.get(part), where=f"model.{part}"))
    unknown = set(model_over) - set(parts)
    if unknown:
        raise ValueError(f"unknown model part(s) {sorted(unknown)}")
    budget = get_budget(cfg.preset)
    for part in ("record", "tokenizer", "lam", "reward", "dynamics"):
        setattr(budget, part, update_dataclass(getattr(budget, part), budget_over.get(part), where=f"budget.{part}"))
    if "eval_windows" in budget_over:
        budget.eval_windows = int(budget_over["eval_windows"])
    cfg.model, cfg.budget = model, budget
    if not 0 <= cfg.rollout_frames < model.dynamics.context_frames:
        raise ValueError(f"rollout_frames must be in [0, {model.dynamics.context_frames - 1}] (below the training "
                         f"window's context_frames; a real frame starts each rollout), got {cfg.rollout_frames!r}")
    for name in ("focal_gamma", "hard_pixel_weight"):
        if getattr(cfg, name) and not model.dynamics.palette_size:
            raise ValueError(f"{name}={getattr(cfg, name)!r} needs the palette output: set "
                             f"+model.dynamics.palette_size (the shipped models use 32)")
    if cfg.clock_dropout and not model.dynamics.reward_clock:
        raise ValueError(f"clock_dropout={cfg.clock_dropout!r} needs a reward clock: set +model.dynamics.reward_clock")
    if cfg.event_diversity and not model.dynamics.event_codes:
        raise ValueError(f"event_diversity={cfg.event_diversity!r} needs event codes: set +model.dynamics.event_codes")
    return cfg


def _amp(setting, device: torch.device) -> bool:
    setting = str(setting).lower()
    if setting == "auto":
        return device.type == "cuda" or cpu_supports_bf16()
    return setting in ("true", "1", "yes")


RECORDING_MARKER = ".pipeline-recording"
"""File the pipeline keeps in a dataset directory while it records that dataset."""


def ensure_datasets(cfg: PipelineConfig, *, record_missing: bool = True) -> tuple[EpisodeDataset, EpisodeDataset]:
    """Load the training and held-out datasets, recording what is missing (if ``record_missing``).

    A missing dataset is recorded with the preset's budget (mixed policy). While it records,
    the pipeline keeps a :data:`RECORDING_MARKER` file in the directory, so a rerun after an
    interruption tops the dataset up with new seeds (:func:`recorders.collect.record`
    resumes). A dataset the pipeline did not record is used as it is, however many episodes
    it holds: topping it up would mix the preset's policy into someone else's recording.

    Raises:
        DatasetError: a dataset is unreadable or of another game.
    """
    rb = cfg.budget.record
    for path, episodes, seed in ((cfg.dataset, rb.episodes, cfg.seed), (cfg.heldout, rb.heldout_episodes,
                                                                        cfg.seed + 100_000)):
        marker = Path(path) / RECORDING_MARKER
        have = len(episode_paths(path))
        if have >= episodes or not record_missing:
            continue
        if have > 0 and not marker.exists():
            print(f"using the {have} episodes of {path} as they are (the preset records {episodes}; "
                  "the pipeline tops up only datasets it recorded itself)")
            continue
        print(f"recording {episodes - have} {cfg.game} episodes into {path}")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        record(RecordConfig(game=cfg.game, out=path, episodes=episodes, max_steps=rb.max_steps,
                            num_envs=rb.num_envs, policy="mixed", seed=seed), progress=cfg.progress)
        marker.unlink()
    train, held = EpisodeDataset(cfg.dataset), EpisodeDataset(cfg.heldout)
    for ds in (train, held):
        if ds.metadata["game"] != cfg.game:
            raise DatasetError(f"{ds.root} holds {ds.metadata['game']!r} episodes, not {cfg.game!r}")
    return train, held


def _start_windows(held: EpisodeDataset, length: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` real held-out windows of ``length`` frames to start dreams from."""
    data = sample_windows([held[i] for i in range(len(held))], length, count, seed)
    return torch.as_tensor(np.stack([f for f, _ in data])), torch.as_tensor(np.stack([a for _, a in data]))


def run(cfg: PipelineConfig, *, distributed: Distributed = Distributed()) -> dict:
    """Run the pipeline; returns the metrics written to ``<out>/metrics.json``.

    Args:
        cfg: the run's settings.
        distributed: this process's rank in a data-parallel run (default: one process); the
            caller starts the processes (``torchrun``) and :meth:`Distributed.setup` joins them.
            Ranks other than 0 return after the last training stage, with their training logs.
    """
    t_start = time.time()
    main = distributed.is_main
    log = print if main else (lambda *args, **kwargs: None)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    device = distributed.setup(resolve_device(cfg.device))
    amp = _amp(cfg.amp, device)
    conv_amp = amp and device.type == "cuda"  # bf16 convolutions are slower than fp32 on CPUs (measured)
    spec = get_game(cfg.game)
    if main:
        train, held = ensure_datasets(cfg)
    distributed.barrier()         # the other ranks wait while rank 0 records what is missing
    if not main:
        train, held = ensure_datasets(cfg, record_missing=False)
    episodes = [train[i] for i in range(len(train))]
    held_eps = [held[i] for i in range(len(held))]
    m, b = cfg.model, cfg.budget
    m.dynamics = update_dataclass(m.dynamics, dict(num_actions=spec.num_actions, token_dim=m.tokenizer.token_dim,
                                                   tokens_per_frame=m.tokenizer.tokens_per_frame), where="model.dynamics")
    m.reward = update_dataclass(m.reward, dict(num_actions=spec.num_actions), where="model.reward")
    if main:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    metrics: dict = {"dataset": {"path": str(cfg.dataset), "episodes": len(train), "transitions": train.num_transitions,
                                 "heldout_episodes": len(held), "heldout_transitions": held.num_transitions},
                     "device": str(device), "amp": amp, "world_size": distributed.world_size}
    log(f"dataset: {len(train)} episodes, {train.num_transitions} transitions; held out: {len(held)} episodes")

    def stage(name: str, module, module_cfg, loss_for, budget, window: int, seed: int, stage_amp: bool,
              generators=None, data=None):
        """Train ``module`` if the stage is selected (resuming), else load its last snapshot if any.

        It trains on ``data``, the training episodes as this stage sees them (default: as recorded).

        Returns the trained (EMA) module, or None when it was neither trained, found nor in ``init_from``."""
        from_scratch = name == "dynamics" and fresh_dynamics     # a latent run's dynamics inherit no labels
        if name in cfg.stages:
            if from_scratch and not has_state(out / name):
                print(f"[{name}] trained from scratch: the init_from bundle's {name} model learnt from action "
                      f"labels (conditioning={warm.conditioning!r})")
            elif (warm is not None and not has_state(out / name)
                    and not _warm_start(module, module_cfg, warm, name, other_game=other_game)):
                print(f"[{name}] the init_from bundle has no {name} model: training it from scratch")
            sampler = WindowSampler(episodes if data is None else data, window,
                                    seed=distributed.seed(seed))                    # each rank its own windows
            module, logs = run_stage(name, module, loss_for(sampler), budget, out / name, sampler.rng, device=device,
                                     amp=stage_amp, frames_per_step=window * budget.batch_size * distributed.world_size,
                                     progress=cfg.progress, generators=generators, config=to_dict(module_cfg),
                                     distributed=distributed)
            metrics[name] = logs
            return module
        if has_state(out / name):
            return load_trained(out / name, module).eval()
        if warm is not None and not other_game and not from_scratch:
            # Not retrained here: the bundle's model as it is, with its own config (it may predate the preset's).
            source, source_cfg = _bundle_part(warm, name)
            if source is not None:
                setattr(m, name, source_cfg)
                return source.to(device).eval()
        return None

    warm = load(cfg.init_from) if cfg.init_from else None
    other_game = warm is not None and warm.game != cfg.game   # transfer: only the stages run here start from it
    latent = cfg.conditioning == "latent"
    # Dynamics trained without labels inherit nothing that learnt from them: from an actions
    # bundle, a latent run takes the tokenizer and the LAM only (and it has no reward model).
    fresh_dynamics = latent and warm is not None and warm.conditioning != "latent"
    tokenizer = build_tokenizer(m.tokenizer).to(device)
    if m.tokenizer.kind != "patch":
        tokenizer = stage("tokenizer", tokenizer, m.tokenizer,
                          lambda smp: tokenizer_loss_fn(smp, b.tokenizer.batch_size, device, cfg.moving_weight),
                          b.tokenizer, 2, cfg.seed + 1, conv_amp)
        if tokenizer is None:
            raise ValueError(f"the conv tokenizer is not trained: run the tokenizer stage first (no snapshot in {out})")
    tokenizer.requires_grad_(False).eval()
    metrics["tokenizer_params"] = sum(p.numel() for p in tokenizer.parameters())
    if main:
        metrics["tokenizer_reconstruction"] = tokenizer_reconstruction(tokenizer, held_eps, seed=cfg.seed)
        print(f"tokenizer ({m.tokenizer.kind}) reconstruction: {metrics['tokenizer_reconstruction']}")

    lam = stage("lam", LatentActionModel(m.lam).to(device), m.lam,
                lambda smp: lam_loss_fn(smp, b.lam.batch_size, device, cfg.moving_weight),
                b.lam, m.lam.history + 2, cfg.seed + 2, conv_amp)
    if lam is not None:
        metrics["lam_params"] = sum(p.numel() for p in lam.parameters())

    if latent and "reward" in cfg.stages:
        log("conditioning=latent: the reward stage is skipped (the reward model takes the game's actions, which "
            "a latent bundle does not step with); the bundle has no reward model")
    reward_model = None if latent else stage(
        "reward", RewardEndModel(m.reward).to(device), m.reward,
        lambda smp: reward_loss_fn(smp, b.reward.batch_size, device), b.reward, 2, cfg.seed + 5, conv_amp,
        data=[replace(e, terminated=game_over_targets(e.frames, e.terminated)) for e in episodes]
        if "reward" in cfg.stages else None)

    if latent:
        if lam is None:
            raise ValueError("conditioning=latent needs a latent-action model: run the lam stage first, or init_from "
                             f"a bundle that has one (no snapshot in {out / 'lam'})")
        lam.requires_grad_(False).eval()
        m.dynamics = update_dataclass(m.dynamics, dict(num_actions=lam.fsq.num_codes), where="model.dynamics")
    dynamics = DynamicsModel(m.dynamics).to(device)
    if m.dynamics.palette_size:   # a warm start or a snapshot brings its own palette
        if m.tokenizer.kind != "patch":
            raise ValueError(f"model.dynamics.palette_size needs the patch tokenizer, not {m.tokenizer.kind!r}")
        dynamics.set_palette(most_common_colours(np.concatenate([e.frames[::10] for e in episodes]),
                                                 m.dynamics.palette_size))
    metrics["dynamics_params"] = sum(p.numel() for p in dynamics.parameters())
    log(f"dynamics model: {metrics['dynamics_params'] / 1e6:.2f}M parameters; bf16 autocast: {amp}")
    gen = torch.Generator(device).manual_seed(distributed.seed(cfg.seed + 4))
    trained = stage("dynamics", dynamics, m.dynamics,
                    lambda smp: dynamics_loss_fn(smp, b.dynamics.batch_size, device, tokenizer,
                                                 moving_weight=cfg.moving_weight, noise_shift=m.sampler.noise_shift,
                                                 generator=gen, scheduled_sampling=cfg.scheduled_sampling,
                                                 scheduled_sampling_passes=cfg.scheduled_sampling_passes,
                                                 stale_pixels=cfg.stale_pixels, focal_gamma=cfg.focal_gamma,
                                                 hard_pixel_weight=cfg.hard_pixel_weight,
                                                 event_diversity=cfg.event_diversity,
                                                 rollout_frames=cfg.rollout_frames,
                                                 clock_dropout=cfg.clock_dropout,
                                                 teacher_forcing=cfg.teacher_forcing,
                                                 moving_radius=cfg.moving_radius,
                                                 action_source=latent_codes(lam) if latent else None),
                    b.dynamics, m.dynamics.context_frames, cfg.seed + 3, amp, generators={"noise": gen})
    if trained is None:
        if cfg.export or "evaluate" in cfg.stages:
            raise ValueError(f"the dynamics model is not trained: run the dynamics stage first (no snapshot in "
                             f"{out / 'dynamics'})")
        return _finish(out, metrics, t_start) if main else metrics  # only earlier stages: no bundle to write
    dynamics = trained
    if not main:
        return metrics            # rank 0 evaluates and writes the bundle

    frames, actions = _start_windows(held, m.dynamics.context_frames - 1, cfg.start_windows, cfg.seed)
    command = "python -m training.pipeline " + shlex.join(sys.argv[1:])
    lineage = [*bundle_commands(warm), command] if warm is not None else [command]
    action_codes = None
    if latent:
        with torch.no_grad():
            actions = lam.infer(frames_to_tensor(frames.to(device))).cpu()
        action_codes = fit_key_to_code_map(lam, episodes, spec.num_actions, cfg.labelled_steps, cfg.seed, device)
        metrics["action_codes"] = {spec.action_meanings[a]: c for a, c in enumerate(action_codes)}
        log(f"key-to-code map from {cfg.labelled_steps} labelled steps: {metrics['action_codes']}")
    bundle = ModelBundle(
        game=spec.name, action_meanings=list(spec.action_meanings), keymap=dict(spec.keymap),
        key_aliases=dict(spec.key_aliases), fps=spec.fps, conditioning=cfg.conditioning, action_codes=action_codes,
        tokenizer_config=m.tokenizer,
        dynamics_config=m.dynamics, sampler=m.sampler, tokenizer=tokenizer, dynamics=dynamics.float(),
        start_frames=frames, start_actions=actions, lam_config=m.lam if lam is not None else None,
        lam=lam.float() if lam is not None else None, reward_config=m.reward,
        reward_model=reward_model.float() if reward_model is not None else None,
        info={"command": command, "commands": lineage, "preset": cfg.preset, "dataset": metrics["dataset"]})

    if "evaluate" in cfg.stages:
        bundle.eval()
        log("evaluating on held-out episodes ...")
        metrics["teacher_forced"] = teacher_forced(bundle, held_eps, windows=b.eval_windows, seed=cfg.seed)
        if readout_for(cfg.game) is not None:
            metrics["paddle_control"] = paddle_control(bundle, seed=cfg.seed)
        horizon = min(32, min(len(e.frames) for e in held_eps) - m.dynamics.context_frames)
        if horizon >= 1:
            metrics["video"] = str(write_video(bundle, held_eps, out / "real_vs_dream.gif", horizon=horizon,
                                               windows=min(4, b.eval_windows), seed=cfg.seed))
    bundle.info["metrics"] = {k: metrics[k] for k in ("teacher_forced", "paddle_control") if k in metrics}
    bundle.save(out / "bundle", weights_dtype=WEIGHT_DTYPES[cfg.weights_dtype])
    if cfg.export:
        bundle.save(cfg.export, weights_dtype=WEIGHT_DTYPES[cfg.weights_dtype])
        print(f"exported the bundle to {cfg.export}")
    return _finish(out, metrics, t_start)


def latent_codes(lam: LatentActionModel):
    """The dynamics loss's action source for ``conditioning=latent``: the LAM's codes of a batch of
    windows ``(B, T, 3, H, W)`` in [-1, 1] -> ``(B, T)`` int64, slot ``j`` labelled by the code of
    the transition ``j-1 -> j`` (as slot ``j`` holds the action that produced frame ``j``), and
    slots whose recorded action is the null action (before an episode's start) kept null."""

    def source(frames: torch.Tensor, actions) -> torch.Tensor:
        actions = torch.as_tensor(actions, device=frames.device)
        with torch.no_grad(), torch.autocast(frames.device.type, enabled=False):   # codes as at inference
            codes = lam.infer(frames.float())                                    # (B, T-1)
        codes = torch.cat([torch.full_like(codes[:, :1], NULL_ACTION), codes], dim=1)
        return torch.where(actions == NULL_ACTION, actions, codes)
    return source


def fit_key_to_code_map(lam: LatentActionModel, episodes, num_actions: int, labelled_steps: int, seed: int,
                        device) -> list[int]:
    """The game's action -> latent code map of a ``conditioning=latent`` bundle, fitted on
    ``labelled_steps`` random labelled transitions of the training episodes
    (:func:`worldmodel.latent_actions.fit_action_codes`)."""
    rng = np.random.default_rng(seed)
    ends = np.cumsum([len(e.actions) for e in episodes])
    picks = rng.choice(ends[-1], size=min(labelled_steps, int(ends[-1])), replace=False)
    ep_of = np.searchsorted(ends, picks, side="right")
    steps = picks - np.concatenate([[0], ends[:-1]])[ep_of]
    # Each transition x_i -> x_{i+1} as the encoder's window, its history with the first frame
    # repeated before an episode's start (as LatentActionModel.infer pads): one batch, one pass.
    offsets = np.arange(-lam.cfg.history, 2)
    windows = np.stack([episodes[e].frames[np.clip(i + offsets, 0, None)] for e, i in zip(ep_of, steps)])
    with torch.no_grad():
        codes = lam.encode(frames_to_tensor(torch.as_tensor(windows, device=device)))[1].cpu().numpy()
    actions = [episodes[e].actions[i] for e, i in zip(ep_of, steps)]
    return fit_action_codes(codes, actions, num_actions=num_actions, num_codes=lam.fsq.num_codes).tolist()


def bundle_commands(bundle: ModelBundle) -> list[str]:
    """The commands that made a bundle, oldest first (``info["commands"]``, or its one ``command``)."""
    info = bundle.info or {}
    return list(info.get("commands") or ([info["command"]] if "command" in info else []))


def _bundle_part(bundle: ModelBundle, name: str) -> tuple[torch.nn.Module | None, object]:
    """The model of stage ``name`` in a bundle (None if it has none) and its config."""
    return {"tokenizer": (bundle.tokenizer, bundle.tokenizer_config), "lam": (bundle.lam, bundle.lam_config),
            "reward": (bundle.reward_model, bundle.reward_config),
            "dynamics": (bundle.dynamics, bundle.dynamics_config)}[name]


HEAD_FIELDS = {"dynamics": {"palette_size"}}
"""Config fields that change only a model's output head: a warm start across them copies the
rest of the weights and starts the head fresh."""

GAME_FIELDS = {"dynamics": {"num_actions"}, "reward": {"num_actions"}}
"""Config fields that may differ on a warm start from another game's bundle: the tensors whose
shape they change (the action embeddings) start fresh."""

ADDED_FIELDS = {"dynamics": {"local_mixing", "reward_clock", "event_codes"}}
"""Config fields that add layers whose output starts at zero: a warm start from a bundle without
them (the field off there) copies every weight it has, and the added layers start at zero, so
the run starts from the bundle's model exactly."""

GAME_TENSORS = {"palette"}
"""Tensors fitted to a game's frames: a warm start from another game's bundle keeps this run's."""


def _warm_start(module: torch.nn.Module, module_cfg, bundle: ModelBundle, name: str, *,
                other_game: bool = False) -> bool:
    """Copy a bundle's weights of stage ``name`` into ``module``.

    Args:
        other_game: the bundle is of another game (transfer): its action embeddings and palette
            are not copied (:data:`GAME_FIELDS`, :data:`GAME_TENSORS`).

    Returns:
        Whether the bundle has that model (one written before the stage existed has not, and
        ``module`` is left as it is).

    Raises:
        ValueError: the model's config differs from the bundle's (naming the field).
    """
    source, source_cfg = _bundle_part(bundle, name)
    if source is None:
        return False
    mine, theirs = to_dict(module_cfg), to_dict(source_cfg)
    diff = sorted(k for k in mine if mine[k] != theirs.get(k))
    allowed = HEAD_FIELDS.get(name, set()) | (GAME_FIELDS.get(name, set()) if other_game else set())
    allowed |= {k for k in ADDED_FIELDS.get(name, set()) if not theirs.get(k)}
    beyond = sorted(set(diff) - allowed)
    if beyond:
        bad = beyond[0]
        raise ValueError(f"init_from: the bundle's {name} differs in {bad} ({theirs.get(bad)!r} there, "
                         f"{mine[bad]!r} here)")
    own, given = module.state_dict(), source.state_dict()
    fresh = sorted(k for k in own if k not in given or given[k].shape != own[k].shape
                   or (other_game and k in GAME_TENSORS))
    module.load_state_dict({k: own[k] if k in fresh else given[k] for k in own})
    source_name = f"the init_from bundle ({bundle.game})" if other_game else "the init_from bundle"
    if fresh:
        print(f"[{name}] warm start from {source_name}; {', '.join(fresh)} start fresh"
              + (f" ({', '.join(diff)} differ)" if diff else ""))
    else:
        print(f"[{name}] warm start from {source_name}")
    return True


def _finish(out: Path, metrics: dict, t_start: float) -> dict:
    metrics["wall_minutes"] = (time.time() - t_start) / 60
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    shown = ("tokenizer_reconstruction", "teacher_forced", "paddle_control", "wall_minutes")
    print(json.dumps({k: metrics[k] for k in shown if k in metrics}, indent=2, default=str))
    return metrics


def main() -> None:
    """Hydra entry point (see the module docstring); under ``torchrun``, one data-parallel rank."""
    from worldmodel.cli import hydra_command

    def _run(cfg: dict) -> None:
        distributed = Distributed.from_env()  # RANK, WORLD_SIZE, LOCAL_RANK from torchrun (absent: 1 process)
        try:
            run(build_config(cfg), distributed=distributed)
            distributed.barrier()   # every rank done before any leaves: gloo aborts a rank whose peer closes first
        finally:
            distributed.shutdown()

    hydra_command(__file__, "pipeline", _run, (ValueError, DatasetError))


if __name__ == "__main__":
    main()
