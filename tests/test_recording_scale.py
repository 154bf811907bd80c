"""Datasets at scale: crash safety and resuming, the validator's messages, compression, the fast
frame resize, human recording by keyboard, and export to Minari."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recorders.collect import RecordConfig, make_policy, record, resumed_seed
from recorders.dataset import (DatasetWriter, Episode, EpisodeDataset, episode_paths, load_episode, save_episode,
                               validate_dataset)
from recorders.validate import main as validate_main

REPO = Path(__file__).resolve().parents[1]
META = dict(game="pong", frame_size=[8, 8], frame_skip=4, sticky_actions=0.0,
            action_meanings=["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"], fps=15)


def _episode(t: int = 6, *, seed: int = 0, size: int = 8) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(frames=rng.integers(0, 256, size=(t + 1, size, size, 3), dtype=np.uint8),
                   actions=rng.integers(0, 6, size=t).astype(np.int64), rewards=np.zeros(t, np.float32),
                   terminated=np.arange(t) == t - 1, truncated=np.zeros(t, bool), info={"seed": seed})


def _pong_cfg(out, **kw) -> RecordConfig:
    values = dict(game="pong", out=str(out), episodes=2, max_steps=12, num_envs=1, vector="sync", policy="random",
                  seed=3, workers=1)
    return RecordConfig(**{**values, **kw})


# -- crash safety ----------------------------------------------------------------------------------

def test_sigkill_loses_only_episodes_in_flight_and_the_same_command_resumes(tmp_path):
    """SIGKILL a recorder once it has written an episode; the dataset stays readable, and running
    the same command again finishes it with exactly the asked number of episodes."""
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "recorders", "game=pong", "episodes=30", "max_steps=100", "policy=random",
           "num_envs=2", "vector=async", f"out={out}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not episode_paths(out):
            assert proc.poll() is None, f"the recorder exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no episode written in 180 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # the recorder only, as `kill -9 PID`; its env workers then exit
    finally:
        proc.kill()
        proc.wait(timeout=30)
    killed_with = len(episode_paths(out))
    assert 1 <= killed_with < 30, "the recorder finished before it could be killed: the test proves nothing"
    # Readable as it is: every episode file is whole; a half-written one is only a *.tmp file.
    ds = EpisodeDataset(out)
    assert len(ds) == killed_with
    problems = validate_dataset(out)
    assert all("leftover temporary file" in p for p in problems), problems
    first_actions = ds[0].actions

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {30 - killed_with} episodes" in done.stdout
    assert validate_dataset(out) == []
    assert not list(out.rglob("*.tmp"))
    ds = EpisodeDataset(out)
    assert len(ds) == 30
    # The resumed part plays new games (a derived seed), not a replay of the first ones.
    assert not np.array_equal(ds[killed_with].actions, first_actions)
    # Once complete, the same command records nothing.
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already holds 30 episodes" in again.stdout
    assert len(episode_paths(out)) == 30


def test_episodes_counts_what_is_there_and_append_adds(tmp_path):
    out = tmp_path / "ds"
    assert record(_pong_cfg(out), progress=False).episodes_written == 2
    w = record(_pong_cfg(out), progress=False)                   # the same command: nothing to do
    assert (w.episodes_before, w.episodes_written) == (2, 0)
    w = record(_pong_cfg(out, episodes=3), progress=False)       # top up to 3
    assert (w.episodes_before, w.episodes_written) == (2, 1)
    w = record(_pong_cfg(out, episodes=2, append=True), progress=False)
    assert (w.episodes_before, w.episodes_written) == (3, 2)
    ds = EpisodeDataset(out)
    assert len(ds) == 5 and validate_dataset(out) == []
    seeds = [ds[i].info["vector_seed"] for i in range(len(ds))]
    assert seeds[0] == 3 and len({seeds[0], seeds[2], seeds[3]}) == 3   # each resumed run has its own seed
    assert resumed_seed(3, 0) == 3 and resumed_seed(3, 2) == seeds[2] and resumed_seed(3, 3) == seeds[3]


def test_an_interrupted_write_leaves_the_previous_episodes_whole(tmp_path, monkeypatch):
    """A write that fails half-way (here: flushing the file to disk raises) leaves the dataset as it was."""
    root = tmp_path / "ds"
    writer = DatasetWriter(root, META)
    writer.write(_episode())

    def boom(*args, **kwargs):
        raise OSError("disk vanished")

    monkeypatch.setattr("recorders.dataset.os.fsync", boom)
    with pytest.raises(OSError):
        writer.write(_episode(seed=1))
    monkeypatch.undo()
    # The finished episode is intact, and the failed write removed its temporary file.
    assert [p.name for p in episode_paths(root)] == ["episode_000000.npz"]
    assert not list(root.rglob("*.tmp"))
    assert len(EpisodeDataset(root)) == 1 and validate_dataset(root) == []
    assert writer.write(_episode(seed=1)).name == "episode_000001.npz"


# -- the validator names what is wrong --------------------------------------------------------------

def _dataset(root: Path) -> Path:
    writer = DatasetWriter(root, META)
    writer.write(_episode())
    return root


def _raw_npz(path: Path, ep: Episode, **replace) -> Path:
    arrays = dict(frames=ep.frames, actions=ep.actions, rewards=ep.rewards, terminated=ep.terminated,
                  truncated=ep.truncated)
    arrays.update(replace)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case,expected", [
    ("corrupt_npz", "corrupt episode file"),
    ("truncated_npz", "corrupt episode file"),
    ("grey_frames", "frames must be uint8 (T+1, H, W, 3)"),
    ("wrong_frame_size", "frame size (16, 16) differs from the dataset's (8, 8)"),
    ("mismatched_lengths", "mismatched lengths: actions has 5 steps but frames has 7 frames"),
    ("missing_array", "missing arrays ['truncated']"),
    ("action_out_of_range", "action 9 out of range [0, 6)"),
    ("missing_metadata", "missing metadata, so"),
    ("leftover_tmp", "leftover temporary file"),
])
def test_validate_cli_names_the_problem(tmp_path, capsys, case, expected):
    root = _dataset(tmp_path / "ds")
    bad = root / "episodes" / "episode_000001.npz"
    ep = _episode(seed=1)
    if case == "corrupt_npz":
        bad.write_bytes(b"this is not a zip archive" * 4)
    elif case == "truncated_npz":
        save_episode(bad, ep)
        bad.write_bytes(bad.read_bytes()[:200])
    elif case == "grey_frames":
        _raw_npz(bad, ep, frames=ep.frames[..., 0])
    elif case == "wrong_frame_size":
        save_episode(bad, _episode(seed=1, size=16))
    elif case == "mismatched_lengths":
        _raw_npz(bad, ep, actions=ep.actions[:-1])
    elif case == "missing_array":
        arrays = dict(frames=ep.frames, actions=ep.actions, rewards=ep.rewards, terminated=ep.terminated)
        np.savez(bad, **arrays)
    elif case == "action_out_of_range":
        ep.actions[1] = 9
        save_episode(bad, ep)
    elif case == "missing_metadata":
        (root / "metadata.json").unlink()
        bad = root / "metadata.json"
    elif case == "leftover_tmp":
        bad = root / "episodes" / "episode_000001.npz.tmp"
        bad.write_bytes(b"half an episode")
    assert validate_main([str(root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {bad}"), err[0]     # the message starts with the bad file's path
    assert expected in err[0], err[0]


def test_validate_cli_on_a_sound_dataset(tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    assert validate_main([str(root)]) == 0
    assert "ok, 1 episodes of pong" in capsys.readouterr().out
    assert validate_main([str(tmp_path / "nowhere")]) == 1
    assert "no such dataset directory" in capsys.readouterr().err


# -- compression ------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [0, 1, 9])
def test_compress_level_round_trips_and_is_plain_npz(tmp_path, level):
    root = tmp_path / "ds"
    ep = _episode(40, size=64)
    ep.frames[:] = 7                               # background, like a game frame,
    ep.frames[:, 30:32, 40:42] = 236               # with a small object
    path = DatasetWriter(root, META, compress_level=level).write(ep)
    with zipfile.ZipFile(path) as zf:
        kinds = {i.compress_type for i in zf.infolist()}
    assert kinds == ({zipfile.ZIP_STORED} if level == 0 else {zipfile.ZIP_DEFLATED})
    with np.load(path, allow_pickle=False) as z:   # plain NumPy reads it
        np.testing.assert_array_equal(z["frames"], ep.frames)
        np.testing.assert_array_equal(z["actions"], ep.actions)
    back = load_episode(path)
    assert back.info == ep.info
    if level:
        assert path.stat().st_size < ep.frames.nbytes / 10


def test_bad_compress_levels_are_refused(tmp_path):
    with pytest.raises(ValueError, match="compress_level"):
        RecordConfig(compress_level=10)
    with pytest.raises(ValueError, match="compress_level"):
        DatasetWriter(tmp_path / "ds", META, compress_level=-1)
    with pytest.raises(ValueError, match="level"):
        save_episode(tmp_path / "x.npz", _episode(), level=0)


# -- the fast resize is the same resize -------------------------------------------------------------

def test_area_resizer_matches_the_einsum_definition(pong_trajectory):
    import envs
    from envs.wrappers import AreaResizer, area_resize_matrix

    env = envs.make("pong")
    try:
        env.reset(seed=1)
        raw = [env.unwrapped.ale.getScreenRGB()]
        rng = np.random.default_rng(0)
        for _ in range(40):
            env.step(int(rng.integers(6)))
            raw.append(env.unwrapped.ale.getScreenRGB())
    finally:
        env.close()
    raw = np.stack(raw)                                                   # (41, 210, 160, 3)
    wy, wx = area_resize_matrix(210, 64), area_resize_matrix(160, 64)
    # The definition the wrapper used before (float32, one einsum).
    ref = np.einsum("yh,bhwc,xw->byxc", wy, raw.astype(np.float32), wx, optimize=True)
    ref = np.clip(np.rint(ref), 0, 255).astype(np.uint8)
    out = AreaResizer(210, 160, 64, 64)(raw)
    assert out.shape == (41, 64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match=r"\(210, 160, 3\)"):
        AreaResizer(210, 160, 64, 64)(raw[:, :200])


# -- a human at the keyboard (headless: SDL's dummy video driver) -----------------------------------

class _ScriptedKeys:
    """Feeds pygame key events to a KeyboardPolicy at given steps, as a person pressing keys would."""

    def __init__(self, policy, events: dict[int, list[tuple[int, int]]]):
        self.policy, self.events, self.calls = policy, events, 0
        self.name = policy.name

    def episode_start(self, index: int) -> None:
        self.policy.episode_start(index)

    def __call__(self, obs):
        pg = self.policy.pygame
        for kind, key in self.events.get(self.calls, []):
            pg.event.post(pg.event.Event(kind, key=key))
        self.calls += 1
        return self.policy(obs)


@pytest.fixture
def pygame_display():
    pygame = pytest.importorskip("pygame")
    assert os.environ.get("SDL_VIDEODRIVER") == "dummy"
    yield pygame
    pygame.display.quit()


def test_human_recording_writes_the_dataset_format(tmp_path, pygame_display):
    from recorders.policies import KeyboardPolicy

    pg = pygame_display
    cfg = _pong_cfg(tmp_path / "human", policy="human", episodes=1, max_steps=6, num_envs=4, vector="async")
    policy = make_policy(cfg, 1)
    assert isinstance(policy, KeyboardPolicy)
    keys = _ScriptedKeys(policy, {0: [(pg.KEYDOWN, pg.K_UP)], 3: [(pg.KEYUP, pg.K_UP), (pg.KEYDOWN, pg.K_s)],
                                  5: [(pg.KEYDOWN, pg.K_SPACE)]})
    writer = record(cfg, keys, progress=False)
    assert writer.episodes_written == 1
    assert validate_dataset(cfg.out) == []
    ep = EpisodeDataset(cfg.out)[0]
    # up = RIGHT (2), s is an alias of down = LEFT (3), down+space = LEFTFIRE (5); one env whatever num_envs says.
    assert ep.actions.tolist() == [2, 2, 2, 3, 3, 5]
    assert ep.frames.shape == (7, 64, 64, 3) and ep.truncated[-1]
    assert ep.info["policy"] == "human" and ep.info["env_index"] == 0


def test_human_escape_stops_and_keeps_finished_episodes(tmp_path, pygame_display):
    pg = pygame_display
    cfg = _pong_cfg(tmp_path / "human", policy="human", episodes=5, max_steps=3)
    # Calls 0-2 play episode 0, call 3 only resets (next-step autoreset), 4-6 play episode 1, 7 resets.
    keys = _ScriptedKeys(make_policy(cfg, 1), {8: [(pg.KEYDOWN, pg.K_ESCAPE)]})
    with pytest.raises(KeyboardInterrupt):
        record(cfg, keys, progress=False)
    ds = EpisodeDataset(cfg.out)
    assert len(ds) == 2 and validate_dataset(cfg.out) == []
    assert [len(ds[i]) for i in range(2)] == [3, 3]


# -- Minari ----------------------------------------------------------------------------------------

def test_export_to_minari_round_trips(tmp_path, pong_dataset, monkeypatch):
    minari = pytest.importorskip("minari")
    from recorders.export_minari import main as export_main

    root = tmp_path / "minari"
    env_before = os.environ.get("MINARI_DATASETS_PATH")
    assert export_main([str(pong_dataset), "dataset_id=dreamgames/pong/test-v0", f"root={root}",
                        "author=tests"]) == 0
    assert os.environ.get("MINARI_DATASETS_PATH") == env_before            # the root was set for the export only
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    loaded = minari.load_dataset("dreamgames/pong/test-v0")
    ours = EpisodeDataset(pong_dataset)
    assert loaded.total_episodes == len(ours) and loaded.total_steps == ours.num_transitions
    assert loaded.observation_space.shape == (64, 64, 3) and loaded.action_space.n == 6
    for i, ep in enumerate(loaded.iterate_episodes()):
        mine = ours[i]
        np.testing.assert_array_equal(ep.observations, mine.frames)        # lossless: no JPEG
        np.testing.assert_array_equal(ep.actions, mine.actions)
        np.testing.assert_array_equal(ep.rewards, mine.rewards)
        np.testing.assert_array_equal(ep.terminations, mine.terminated)
        np.testing.assert_array_equal(ep.truncations, mine.truncated)
    env = loaded.recover_environment()
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    finally:
        env.close()
    # The same id again is refused, naming it; an unknown setting is a usage error.
    assert export_main([str(pong_dataset), "dataset_id=dreamgames/pong/test-v0", f"root={root}"]) == 1
    with pytest.raises(SystemExit):
        export_main([str(pong_dataset), "dataset_id=x-v0", "colour=blue"])


def test_export_to_minari_names_a_broken_dataset(tmp_path, capsys):
    pytest.importorskip("minari")
    from recorders.export_minari import main as export_main

    assert export_main([str(tmp_path / "missing"), "dataset_id=dreamgames/pong/none-v0",
                        f"root={tmp_path / 'm'}"]) == 1
    assert "metadata.json" in capsys.readouterr().err


# -- worker processes ----------------------------------------------------------------------------

def _episode_digests(root) -> list[tuple]:
    ds = EpisodeDataset(root)
    return sorted((ds[i].info["vector_seed"], ds[i].actions.tobytes(), ds[i].frames.tobytes()) for i in range(len(ds)))


def test_workers_record_the_same_episodes_whatever_the_timing(tmp_path, monkeypatch):
    """Two worker processes (three envs in all) record exactly the asked episodes; a second run with
    the same seed records the same episodes (the file order may differ), with every env seeded apart."""
    import recorders.collect as collect

    used = []
    real = collect._play_in_workers
    monkeypatch.setattr(collect, "_play_in_workers", lambda cfg, workers, *a: (used.append(workers), real(cfg, workers, *a)))
    runs = []
    for name in ("a", "b"):
        w = record(_pong_cfg(tmp_path / name, episodes=5, max_steps=15, num_envs=3, workers=2), progress=False)
        assert w.episodes_written == 5 and validate_dataset(tmp_path / name) == []
        runs.append(_episode_digests(tmp_path / name))
    assert used == [2, 2]                                   # recorded by two workers, not in this process
    assert runs[0] == runs[1]
    assert {seed for seed, *_ in runs[0]} == {3, 4, 5}      # seed 3: worker 0 has envs 3, 4; worker 1 has env 5


def test_a_failing_worker_is_reported_by_name(tmp_path):
    from recorders.collect import RecordingError

    cfg = RecordConfig(game="cartpole", out=str(tmp_path / "cp"), episodes=2, max_steps=5, frame_skip=3, workers=2)
    with pytest.raises(RecordingError, match=r"worker recorder-\d failed: ValueError: frame_skip applies to ALE"):
        record(cfg, progress=False)


def test_a_killed_worker_stops_the_recording_and_keeps_what_was_written(tmp_path):
    """SIGKILL one worker process: the recorder raises a RecordingError naming it, instead of
    waiting forever, and the dataset it wrote stays readable."""
    import multiprocessing
    import threading

    from recorders.collect import RecordingError

    out = tmp_path / "ds"
    caught = []

    def run():
        try:
            record(_pong_cfg(out, episodes=400, max_steps=100, num_envs=2, workers=2), progress=False)
        except BaseException as e:  # noqa: BLE001 - inspected below
            caught.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not (episode_paths(out) and multiprocessing.active_children()):
        assert thread.is_alive() and time.monotonic() < deadline, "no worker wrote an episode"
        time.sleep(0.05)
    victim = next(p for p in multiprocessing.active_children() if p.name.startswith("recorder-"))
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive(), "the recorder hung after its worker died"
    assert len(caught) == 1 and isinstance(caught[0], RecordingError), caught
    assert victim.name in str(caught[0]) and "exit code -9" in str(caught[0])
    assert 1 <= len(episode_paths(out)) < 400
    assert validate_dataset(out) == []


def test_bad_worker_counts_are_refused():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            RecordConfig(workers=bad)
