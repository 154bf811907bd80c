"""scripts/pong_serves.py: finds serves in a ball track, names their direction, and runs on the shipped held-out set."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pong_serves.py"
spec = importlib.util.spec_from_file_location("pong_serves", SCRIPT)
serves = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serves)


def track(*segments):
    """A (T, 2) ball track from (length, y0, dy) segments; dy None = no ball."""
    rows = []
    for length, y0, dy in segments:
        rows += [[np.nan, np.nan]] * length if dy is None else [[10.0, y0 + dy * k] for k in range(length)]
    return np.array(rows, np.float32)


def test_a_serve_is_a_ball_seen_after_six_frames_without_one():
    ball = track((5, 20, 2), (6, 0, None), (5, 30, -4), (3, 0, None), (4, 10, 1))
    assert serves.serve_frames(ball) == [11]                 # the 3-frame gap does not count
    assert serves.direction(ball, 11) == -1 and serves.direction(ball, 0) == 1
    assert serves.serve_frames(track((2, 0, None), (3, 5, 1))) == [2]   # no ball since the track began
    assert serves.exit_direction(ball, 11) == 1 and serves.exit_direction(ball, 1) == 0


def test_lookup_accuracy_takes_each_keys_majority():
    assert serves.lookup_accuracy(["a", "a", "a", "b"], np.array([1, 1, -1, -1])) == 0.75
    assert serves.lookup_accuracy([0, 0, 0, 0], np.array([1, 1, -1, -1])) == 0.5


def test_runs_on_the_shipped_heldout_set_with_a_checkpoint():
    out = subprocess.run([sys.executable, str(SCRIPT), "training/heldout/pong", "--checkpoint", "pong", "--windows", "3",
                          "--max-serves", "4", "--max-hidden", "20"],
                         capture_output=True, text=True, cwd=SCRIPT.parents[1], timeout=300)
    assert out.returncode == 0, out.stderr
    n = int(re.search(r"^serves: (\d+)$", out.stdout, re.M)[1])
    share = float(re.search(r"^named_by_exit_direction: ([\d.]+)$", out.stdout, re.M)[1])
    assert n > 50 and 0.5 <= share <= 1.0
    m = re.search(r"windows 3, seed 0, with_a_ball_at_h64 (\d+), within_3px (\d+)", out.stdout)
    assert m and int(m[2]) <= int(m[1]) <= 3
    classed = sum(int(c) for c in re.findall(r"^ +(\d+)  ", out.stdout, re.M))
    assert classed == int(m[1])
    m = re.search(r"^serves 4, dream_serves_on_time (\d+), of_which_in_the_games_direction (\d+), "
                  r"computer_paddle_misdrawn_on_the_serve_frame (\d+)$", out.stdout, re.M)
    assert m and int(m[2]) <= int(m[1]) <= 4 and int(m[3]) <= 4, out.stdout
    m = re.search(r"shown by the dream on (\d+) of (\d+) frames; by place in the run: (\{.*\})$", out.stdout, re.M)
    places = eval(m[3])                                      # {place: "shown/frames"}
    assert int(m[1]) <= int(m[2]) == sum(int(v.split("/")[1]) for v in places.values()) and min(places) == 1
    waits = eval(re.search(r"^computer_paddle_shown_again_after_7_frames_without_it_or_a_ball_by_clock: (\{.*\})$",
                           out.stdout, re.M)[1])
    assert waits and all(int(a) <= int(b) for a, b in (v.split("/") for v in waits.values()))


def test_refuses_a_dataset_of_another_game():
    out = subprocess.run([sys.executable, str(SCRIPT), "training/heldout/breakout"], capture_output=True, text=True,
                         cwd=SCRIPT.parents[1], timeout=120)
    assert out.returncode != 0 and "'breakout' episodes, not pong" in out.stderr


def test_refuses_zero_windows():
    out = subprocess.run([sys.executable, str(SCRIPT), "training/heldout/pong", "--windows", "0"], capture_output=True,
                         text=True, cwd=SCRIPT.parents[1], timeout=120)
    assert out.returncode != 0 and "--windows must be >= 1, got 0" in out.stderr
