"""scripts/end_flags.py: runs a short dream of a shipped bundle, counts the end flag's onsets, refuses bad steps."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "end_flags.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=SCRIPT.parents[1], timeout=300)


def test_counts_onsets_of_a_short_dream(tmp_path):
    out = run("breakout", "--steps", "6", "--png", str(tmp_path / "ends.png"))
    assert out.returncode == 0, out.stderr
    m = re.search(r"breakout: (\d+) end-flag onsets in 6 steps \(([\d.]+) per 1,000\), flag up on (\d+) steps", out.stdout)
    assert m, out.stdout
    onsets, per_k, up = int(m[1]), float(m[2]), int(m[3])
    assert onsets <= up <= 6 and per_k == round(1000 * onsets / 6, 1)
    assert len(re.findall(r"^  step \d+:", out.stdout, re.M)) == onsets
    assert (tmp_path / "ends.png").exists() == (onsets > 0)


def test_refuses_zero_steps():
    out = run("breakout", "--steps", "0")
    assert out.returncode != 0 and "--steps must be >= 1, got 0" in out.stderr
