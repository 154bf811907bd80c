"""Named training budgets, paired with the model presets of the same name."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.loops import StageBudget


@dataclass
class RecordBudget:
    """How much real play the pipeline records when the dataset does not exist yet."""

    episodes: int = 60
    heldout_episodes: int = 6
    max_steps: int = 1500
    num_envs: int = 2


@dataclass
class TrainBudget:
    record: RecordBudget = field(default_factory=RecordBudget)
    tokenizer: StageBudget = field(default_factory=StageBudget)
    lam: StageBudget = field(default_factory=StageBudget)
    reward: StageBudget = field(default_factory=StageBudget)
    dynamics: StageBudget = field(default_factory=StageBudget)
    eval_windows: int = 32


BUDGETS: dict[str, TrainBudget] = {
    # Seconds: for tests.
    "tiny": TrainBudget(
        record=RecordBudget(episodes=2, heldout_episodes=1, max_steps=40, num_envs=1),
        tokenizer=StageBudget(steps=4, batch_size=2, warmup=1),
        lam=StageBudget(steps=4, batch_size=2, warmup=1),
        reward=StageBudget(steps=4, batch_size=4, warmup=1),
        dynamics=StageBudget(steps=6, batch_size=2, warmup=1, ema=0.9),
        eval_windows=2,
    ),
    # The shipped checkpoints: about 1 hour on 2 CPU cores.
    "cpu": TrainBudget(
        record=RecordBudget(episodes=70, heldout_episodes=6, max_steps=1500, num_envs=2),
        tokenizer=StageBudget(steps=3000, minutes=10, batch_size=8, lr=1e-3, warmup=100),
        lam=StageBudget(steps=2400, minutes=12, batch_size=32, lr=1e-3, warmup=100),
        reward=StageBudget(steps=3000, minutes=8, batch_size=64, lr=1e-3, warmup=100, ema=0.99),
        dynamics=StageBudget(steps=5500, minutes=55, batch_size=8, lr=4e-4, warmup=200, ema=0.999),
    ),
    # One GPU.
    "gpu": TrainBudget(
        record=RecordBudget(episodes=400, heldout_episodes=10, max_steps=3000, num_envs=8),
        tokenizer=StageBudget(steps=20_000, batch_size=64, lr=1e-3, warmup=500),
        lam=StageBudget(steps=20_000, batch_size=128, lr=1e-3, warmup=500),
        reward=StageBudget(steps=10_000, batch_size=256, lr=1e-3, warmup=500, ema=0.999),
        dynamics=StageBudget(steps=200_000, batch_size=64, lr=3e-4, warmup=1000, ema=0.9995),
        eval_windows=128,
    ),
}


def get_budget(name: str) -> TrainBudget:
    """Raises ValueError for an unknown budget name."""
    if name not in BUDGETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(BUDGETS)}")
    import copy

    return copy.deepcopy(BUDGETS[name])
