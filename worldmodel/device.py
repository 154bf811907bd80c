"""Choosing the torch device from a user's setting."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a device.

    Raises:
        ValueError: an unknown device name, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but no CUDA device is available")
    return device


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """This CPU's feature flags, read from ``/proc/cpuinfo`` once per process (every Simulator
    asks); empty where that file is unreadable (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags") for word in line.split())


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16 or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tile units for bfloat16 (``amx_bf16``): there torch's bfloat16
    beat the onnx backend's float32 at every batch size; with AVX512-BF16 alone it did not at
    batch 1 (README, "Speed")."""
    return "amx_bf16" in _cpu_flags()


def fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively on ``device``: a CUDA GPU of compute
    capability 8.0 or later (Ampere on; older ones only emulate them), or a CPU with AVX512-BF16
    or AMX (:func:`cpu_supports_bf16`)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and cpu_supports_bf16()
