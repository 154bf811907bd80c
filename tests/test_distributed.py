"""Data-parallel training: two CPU processes (gloo) take the steps one process takes on their
batches combined, resume like an uninterrupted run, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from training.loops import Distributed, StageBudget, run_stage
from training.train_state import _read

REPO = Path(__file__).resolve().parents[1]
SEED = 11
PER_RANK_BATCH = 4


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 6, generator=g)
    return x, torch.sin(x[:, :3] * 2) + x[:, 3:] ** 2


def _draw(rng: np.random.Generator, gen: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch like a window sampler's: rows picked by the NumPy generator, input noise from the torch one."""
    x, y = _data()
    idx = torch.as_tensor(rng.integers(len(x), size=batch))
    return x[idx] + 0.1 * torch.randn(batch, 6, generator=gen), y[idx]


def _loss_fn(streams: list[tuple[np.random.Generator, torch.Generator]]):
    """Mean squared error over the concatenated batches of one or more (rng, generator) streams."""

    def loss_fn(model):
        xs, ys = zip(*(_draw(rng, gen, PER_RANK_BATCH) for rng, gen in streams))
        x, y = torch.cat(xs), torch.cat(ys)
        return torch.nn.functional.mse_loss(model(x), y), {"batch": float(len(x))}
    return loss_fn


def _streams(rank: int, world_size: int) -> tuple[np.random.Generator, torch.Generator]:
    d = Distributed(rank=rank, world_size=world_size)
    return np.random.default_rng(d.seed(SEED)), torch.Generator().manual_seed(d.seed(SEED + 1))


def _budget(steps: int, pause_at: int | None = None) -> StageBudget:
    return StageBudget(steps=steps, batch_size=PER_RANK_BATCH, lr=3e-2, warmup=1, ema=0.5, pause_at=pause_at)


def _worker(rank: int, world_size: int, port: int, out_dirs: list[str], steps: int, pause_at: int | None,
            result_dir: str) -> None:
    # What torchrun sets, read the way the pipeline's entry point reads it.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed = Distributed.from_env()
    device = distributed.setup(torch.device("cpu"))
    try:
        rng, gen = _streams(rank, world_size)
        model = _tiny_model()
        ema, logs = run_stage("tiny", model, _loss_fn([(rng, gen)]), _budget(steps, pause_at), Path(out_dirs[rank]),
                              rng, device=device, amp=False, frames_per_step=PER_RANK_BATCH * world_size,
                              progress=False, generators={"noise": gen}, distributed=distributed)
        save_file({**{f"model.{k}": v.contiguous() for k, v in model.state_dict().items()},
                   **{f"ema.{k}": v.contiguous() for k, v in ema.state_dict().items()}},
                  str(Path(result_dir) / f"rank{rank}.safetensors"))
        (Path(result_dir) / f"rank{rank}.json").write_text(json.dumps(logs))
        distributed.barrier()   # as the pipeline's entry point leaves
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp_path: Path, name: str, out_dirs: list[Path], steps: int, pause_at: int | None = None):
    result_dir = tmp_path / f"{name}-results"
    result_dir.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), [str(d) for d in out_dirs], steps, pause_at, str(result_dir)),
             nprocs=2, join=True)
    return [(json.loads((result_dir / f"rank{r}.json").read_text()), load_file(str(result_dir / f"rank{r}.safetensors")))
            for r in range(2)]


def _single_process(tmp_path: Path, steps: int):
    """One process, one step per step on both ranks' batches concatenated (2 x PER_RANK_BATCH)."""
    streams = [_streams(0, 2), _streams(1, 2)]
    model = _tiny_model()
    ema, logs = run_stage("tiny", model, _loss_fn(streams), _budget(steps), tmp_path / "single", streams[0][0],
                          device=torch.device("cpu"), amp=False, frames_per_step=2 * PER_RANK_BATCH, progress=False)
    return logs, model, ema


def test_two_ranks_step_like_one_process_on_the_combined_batch(tmp_path):
    (r0, w0), (r1, w1) = _spawn(tmp_path, "ddp", [tmp_path / "run", tmp_path / "rank1-out"], steps=3)
    logs, model, ema = _single_process(tmp_path, steps=3)
    # Each rank drew its own batch, so the ranks' streams differ ...
    (a0, g0), (a1, g1) = _streams(0, 2), _streams(1, 2)
    assert not torch.equal(_draw(a0, g0, PER_RANK_BATCH)[0], _draw(a1, g1, PER_RANK_BATCH)[0])
    # ... yet the logged loss is the combined batch's, and every update was the combined batch's.
    assert r0["step"] == r1["step"] == logs["step"] == 3
    assert r0["batch"] == r1["batch"] == PER_RANK_BATCH                 # per rank; the step saw 2x that
    assert r0["loss"] == pytest.approx(logs["loss"], rel=1e-5)
    assert r1["loss"] == pytest.approx(r0["loss"], rel=1e-12)           # logs are all-reduced
    assert r0["grad_norm"] == pytest.approx(logs["grad_norm"], rel=1e-5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(w0[f"model.{k}"], v, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(w1[f"model.{k}"], v, rtol=1e-5, atol=1e-6, msg=k)
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(w0[f"ema.{k}"], v, rtol=1e-5, atol=1e-6, msg=k)
    # The single process, by contrast, differs from a process that saw rank 0's batch only.
    rng, gen = _streams(0, 2)
    alone = _tiny_model()
    run_stage("tiny", alone, _loss_fn([(rng, gen)]), _budget(3), tmp_path / "alone", rng,
              device=torch.device("cpu"), amp=False, frames_per_step=PER_RANK_BATCH, progress=False)
    assert not torch.allclose(alone[0].weight, model[0].weight, rtol=1e-4, atol=1e-6)
    # Rank 0 wrote the snapshot and history; rank 1 wrote nothing, not even its out_dir.
    assert (tmp_path / "run" / "last.safetensors").exists()
    assert not (tmp_path / "rank1-out").exists()


def test_two_ranks_resume_like_an_uninterrupted_run(tmp_path):
    whole = _spawn(tmp_path, "whole", [tmp_path / "whole"] * 2, steps=4)
    _spawn(tmp_path, "first-half", [tmp_path / "split"] * 2, steps=4, pause_at=2)
    tensors, meta = _read(tmp_path / "split")
    assert meta["step"] == 2 and meta["world_size"] == 2 and set(meta["rank_sampler_rng"]) == {"1"}
    assert "rank1.rng.torch" in tensors and "rank1.rng.gen.noise" in tensors
    resumed = _spawn(tmp_path, "second-half", [tmp_path / "split"] * 2, steps=4)
    for (logs_w, w), (logs_r, r) in zip(whole, resumed):
        assert logs_r["step"] == logs_w["step"] == 4
        assert logs_r["loss"] == pytest.approx(logs_w["loss"], rel=1e-6)
        for k in w:
            torch.testing.assert_close(r[k], w[k], rtol=1e-6, atol=1e-7, msg=k)


def test_distributed_from_env_and_per_rank_seeds():
    assert Distributed.from_env({}) == Distributed(rank=0, world_size=1, local_rank=0)
    d = Distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (d.rank, d.world_size, d.local_rank, d.enabled, d.is_main) == (3, 4, 1, True, False)
    with pytest.raises(ValueError, match="rank=5, world_size=2"):
        Distributed.from_env({"RANK": "5", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="'two'"):
        Distributed.from_env({"WORLD_SIZE": "two"})
    seeds = [Distributed(rank=r, world_size=8).seed(7) for r in range(8)]
    assert seeds[0] == 7 and len(set(seeds)) == 8                     # rank 0 draws what one process draws
    assert Distributed().setup(torch.device("cpu")) == torch.device("cpu")   # one process: nothing to join


def test_pipeline_under_torchrun(tmp_path):
    """``torchrun --nproc-per-node 2 -m training.pipeline``: rank 0 records, both train, rank 0 writes."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "training.pipeline", "preset=tiny", f"out={out}", f"dataset={tmp_path / 'data'}",
           f"heldout={tmp_path / 'heldout'}", "stages=[dynamics]", "progress=false", "start_windows=2", "device=cpu"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["dynamics"]["step"] == 6
    assert (out / "bundle").is_dir() and (out / "dynamics" / "last.safetensors").exists()
    _, meta = _read(out / "dynamics")
    assert meta["world_size"] == 2
    assert done.stdout.count("dataset:") == 1                           # rank 0 alone logs
