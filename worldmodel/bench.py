"""Simulator benchmark: speed, latency, long-run stability, memory and start-up time per backend.

Run it with Hydra::

    python -m worldmodel.bench                                  # shipped Pong, torch and onnx
    python -m worldmodel.bench backends=[onnx] long_steps=1000 sampling_steps=1

It prints one JSON object. Each backend runs in its own fresh Python process, so its start-up
time and peak memory are those a player's process would see:

- ``launch_to_first_frame_s``: from starting the process to the first dream frame (imports,
  loading the checkpoint, building the Simulator, priming, one step). The onnx graph is
  exported beforehand (``export_s``, once per checkpoint, cached).
- per batch size: ``env_steps_per_s`` (dream frames per second over all dreams; at batch 1
  the game's frames per second), step latency ``p50_ms`` and ``p99_ms``. A step is one frame
  per dream, generated and decoded to uint8 numpy.
- ``step_ms_at_100`` and ``step_ms_at_<long_steps>``: mean step time over the 100 steps around
  step 100 and the last 100 steps of one long batch-1 run (a bounded KV cache keeps them
  equal); ``step_p50_ms_at_...``: the same as medians, which one-off stalls do not move.
- ``peak_rss_mb_batch1``: peak resident memory after the batch-1 runs (a play process);
  ``peak_rss_mb``: after every batch size.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

FIRST_FRAME = "BENCH-FIRST-FRAME"


@dataclass
class BenchConfig:
    """What to measure (the Hydra config maps onto it).

    Attributes:
        checkpoint: a shipped name or a bundle directory.
        backends: Simulator backends to compare.
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_sizes: dreams stepped together (``auto`` device on a GPU adds 256 and 1024).
        steps: timed steps per batch size (after ``warmup``).
        warmup: untimed steps per batch size.
        long_steps: length of the batch-1 run whose step time is compared at step 100 and at
            its end (0 skips it).
        sampling_steps: denoising steps per frame (default: the checkpoint's).
        threads: torch / onnxruntime intra-op threads (default: torch's default).
        precision: the Simulator's arithmetic (``auto``: bfloat16 for torch where the device
            multiplies it natively, else float32; ``float32``; ``bfloat16``, torch only).
    """

    checkpoint: str = "pong"
    backends: list[str] = field(default_factory=lambda: ["torch", "onnx"])
    device: str = "cpu"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 64])
    steps: int = 200
    warmup: int = 10
    long_steps: int = 10_000
    sampling_steps: int | None = None
    threads: int | None = None
    precision: str = "auto"

    def __post_init__(self):
        from worldmodel.simulator import BACKENDS, check_precision

        check_precision(self.precision)

        bad = [b for b in self.backends if b not in BACKENDS or b == "auto"]
        if bad or not self.backends:
            raise ValueError(f"backends must be a non-empty list of torch/onnx, got {self.backends!r}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be positive integers, got {self.batch_sizes!r}")
        if self.steps < 1 or self.warmup < 0 or self.long_steps < 0:
            raise ValueError("steps must be >= 1, warmup and long_steps >= 0")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(cfg: dict, backend: str) -> None:
    """Runs in the child process: prints the first-frame marker, then one JSON line of results."""
    import numpy as np
    import torch

    from worldmodel.bundle import load
    from worldmodel.device import resolve_device
    from worldmodel.simulator import Simulator

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = resolve_device(cfg["device"])
    model = load(cfg["checkpoint"], device=device)
    start_f, start_a = model.start_frames.numpy(), model.start_actions.numpy()

    def simulator(batch: int) -> Simulator:
        sim = Simulator(model, batch_size=batch, backend=backend, seed=0, sampling_steps=cfg["sampling_steps"],
                        precision="auto" if backend == "onnx" else cfg["precision"])
        idx = np.arange(batch) % len(start_f)
        sim.reset(start_f[idx], start_a[idx])
        return sim

    rng = np.random.default_rng(0)
    sim = simulator(1)
    sim.step(np.zeros(1, np.int64))
    print(FIRST_FRAME, flush=True)
    result: dict = {"backend": backend, "simulator_backend": sim.backend, "device": str(device),
                    "provider": getattr(sim._onnx, "provider", None), "precision": sim.precision,
                    "sampling_steps": sim.steps,
                    "threads": torch.get_num_threads(), "batch": {}}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for batch in cfg["batch_sizes"]:
        sim = simulator(batch)
        for _ in range(cfg["warmup"]):
            sim.step(rng.integers(model.dynamics_config.num_actions, size=batch))
        times = []
        for _ in range(cfg["steps"]):
            actions = rng.integers(model.dynamics_config.num_actions, size=batch)
            sync()
            t0 = time.perf_counter()
            sim.step(actions)
            sync()
            times.append(time.perf_counter() - t0)
        t = np.asarray(times)
        result["batch"][str(batch)] = {"env_steps_per_s": round(batch / t.mean(), 1),
                                       "p50_ms": round(1000 * float(np.percentile(t, 50)), 2),
                                       "p99_ms": round(1000 * float(np.percentile(t, 99)), 2)}
        if batch == 1:
            result["peak_rss_mb_batch1"] = round(_peak_rss_mb(), 1)
        del sim
    if cfg["long_steps"]:
        n = cfg["long_steps"]
        sim = simulator(1)
        times = np.zeros(n)
        for i in range(n):
            a = rng.integers(model.dynamics_config.num_actions, size=1)
            t0 = time.perf_counter()
            sim.step(a)
            times[i] = time.perf_counter() - t0
        early, late = times[:150][-100:], times[-100:]
        for stat, fn in (("", np.mean), ("p50_", np.median)):     # the median ignores one-off stalls
            result[f"step_{stat}ms_at_100"] = round(1000 * float(fn(early)), 2)
            result[f"step_{stat}ms_at_{n}"] = round(1000 * float(fn(late)), 2)
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    print(json.dumps(result), flush=True)


def machine() -> dict:
    """The machine the figures come from."""
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def run(cfg: BenchConfig) -> dict:
    """Benchmark every backend in a fresh process; returns (and prints) the report."""
    from worldmodel.device import resolve_device

    device = resolve_device(cfg.device)
    batches = list(cfg.batch_sizes)
    if cfg.device == "auto" and device.type == "cuda":
        batches += [b for b in (256, 1024) if b not in batches]
    report: dict = {"machine": machine(), "config": {**asdict(cfg), "batch_sizes": batches}, "results": []}
    worker_cfg = {**asdict(cfg), "device": str(device), "batch_sizes": batches}
    for backend in cfg.backends:
        entry: dict = {}
        if backend == "onnx":
            from worldmodel.bundle import load
            from worldmodel.onnx_backend import cached_step_graph, graph_path

            dyn = load(cfg.checkpoint).dynamics
            fresh = not graph_path(dyn).exists()
            t0 = time.perf_counter()
            cached_step_graph(dyn, verbose=False)
            entry["export_s"] = round(time.perf_counter() - t0, 1) if fresh else "cached"
        code = "import json, sys; from worldmodel.bench import _worker; _worker(json.loads(sys.argv[1]), sys.argv[2])"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(worker_cfg), backend], stdout=subprocess.PIPE,
                                text=True)
        first = None
        lines = []
        for line in proc.stdout:
            if line.startswith(FIRST_FRAME) and first is None:
                first = time.perf_counter() - t0
            else:
                lines.append(line)
        if proc.wait() != 0:
            raise RuntimeError(f"the {backend} benchmark process failed (exit {proc.returncode})")
        entry.update(json.loads(lines[-1]))
        entry["launch_to_first_frame_s"] = round(first, 2)
        report["results"].append(entry)
        print(f"{backend}: done", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    return report


def main() -> None:
    """Hydra entry point (see the module docstring)."""
    from worldmodel.cli import hydra_command

    hydra_command(__file__, "bench", lambda cfg: run(BenchConfig(**cfg)), (ValueError, TypeError, RuntimeError))


if __name__ == "__main__":
    main()
