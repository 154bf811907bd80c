"""Reading the CPU's features that choose the Simulator's precision and ``auto`` backend."""

from pathlib import Path

import pytest

from worldmodel import device

EPYC = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\nbugs\t\t: avx512_bf16_fake\n"
XEON_AMX = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
XEON_OLD = "processor\t: 0\nflags\t\t: fpu avx512f avx512_vnni\n"


@pytest.mark.parametrize(("cpuinfo", "bf16", "amx"), [(EPYC, True, False), (XEON_AMX, True, True),
                                                      (XEON_OLD, False, False), (None, False, False)])
def test_cpu_features_come_from_the_flags_line(cpuinfo, bf16, amx, monkeypatch):
    def read_text(self, *args, **kwargs):
        if cpuinfo is None:
            raise OSError("no /proc here")
        return cpuinfo

    monkeypatch.setattr(Path, "read_text", read_text)
    device._cpu_flags.cache_clear()
    try:
        assert (device.cpu_supports_bf16(), device.cpu_has_amx()) == (bf16, amx)
    finally:
        device._cpu_flags.cache_clear()
