"""The dataset format: round trips, corrupt files, appending, and training-window alignment."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from recorders.dataset import (NULL_ACTION, DatasetError, DatasetWriter, Episode, EpisodeDataset, WindowSampler,
                               load_episode, read_metadata, save_episode, validate_dataset)

META = dict(game="pong", frame_size=[8, 8], frame_skip=4, sticky_actions=0.0,
            action_meanings=["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"], fps=15)


def make_episode(t: int = 10, *, seed: int = 0, size: int = 8) -> Episode:
    """A synthetic episode whose arrays encode their own time index, so alignment is checkable."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(t + 1, size, size, 3), dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(t + 1)                      # frame index stamped into a pixel
    return Episode(frames=frames,
                   actions=rng.integers(0, 6, size=t).astype(np.int64),
                   rewards=(np.arange(t, dtype=np.float32) + 1) * np.where(np.arange(t) % 2, 1, -1).astype(np.float32),
                   terminated=np.arange(t) == t - 1,
                   truncated=np.zeros(t, bool),
                   info={"seed": seed, "policy": "test"})


def assert_episodes_equal(a: Episode, b: Episode) -> None:
    for name in ("frames", "actions", "rewards", "terminated", "truncated"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.info == b.info


@pytest.mark.parametrize("compress", [True, False])
def test_save_load_round_trip(tmp_path, compress):
    ep = make_episode(12)
    path = save_episode(tmp_path / "ep.npz", ep, compress=compress)
    assert path == tmp_path / "ep.npz" and path.exists()
    assert not list(tmp_path.glob("*.tmp"))
    back = load_episode(path)
    assert_episodes_equal(ep, back)
    assert len(back) == 12
    # Plain NumPy reads it too, without pickles.
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["frames"], ep.frames)


def test_writer_and_dataset_round_trip(tmp_path):
    eps = [make_episode(5 + i, seed=i) for i in range(3)]
    writer = DatasetWriter(tmp_path / "ds", META)
    paths = [writer.write(e) for e in eps]
    assert [p.name for p in paths] == ["episode_000000.npz", "episode_000001.npz", "episode_000002.npz"]
    assert writer.episodes_written == 3
    assert writer.frames_written == sum(len(e.frames) for e in eps)
    ds = EpisodeDataset(tmp_path / "ds")
    assert len(ds) == 3 and ds.num_transitions == sum(len(e) for e in eps)
    assert ds.metadata["game"] == "pong" and ds.metadata["format"] == "dreamgame-dataset"
    for a, b in zip(eps, (ds[i] for i in range(len(ds)))):
        assert_episodes_equal(a, b)
    lazy = EpisodeDataset(tmp_path / "ds", load=False)
    assert_episodes_equal(eps[2], lazy[2])
    assert validate_dataset(tmp_path / "ds") == []


def test_recorded_dataset_is_valid(pong_dataset):
    ds = EpisodeDataset(pong_dataset)
    assert len(ds) == 2
    assert validate_dataset(pong_dataset) == []
    for i in range(len(ds)):
        ep = ds[i]
        assert ep.frames.shape[1:] == (64, 64, 3) and ep.frames.dtype == np.uint8
        assert len(ep.frames) == len(ep) + 1 and 1 <= len(ep) <= 30
        assert ep.truncated[-1] or ep.terminated[-1]
        assert not (ep.truncated[:-1] | ep.terminated[:-1]).any()
        assert ep.info["policy"] == "random"


@pytest.mark.parametrize("garbage", [b"", b"not a zip at all" * 10, "truncate"])
def test_corrupt_episode_names_file(tmp_path, garbage):
    path = tmp_path / "episode_000000.npz"
    if garbage == "truncate":
        save_episode(path, make_episode(20, size=16), compress=False)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(garbage)
    with pytest.raises(DatasetError) as err:
        load_episode(path)
    assert str(path) in str(err.value)


def test_missing_episode_file_names_it(tmp_path):
    path = tmp_path / "episode_000042.npz"
    with pytest.raises(DatasetError, match="episode_000042.npz"):
        load_episode(path)


def test_episode_without_an_array_names_it(tmp_path):
    path = tmp_path / "episode_000000.npz"
    ep = make_episode(4)
    np.savez(path, frames=ep.frames, actions=ep.actions, rewards=ep.rewards, terminated=ep.terminated)
    with pytest.raises(DatasetError, match="truncated") as err:
        load_episode(path)
    assert str(path) in str(err.value)


def test_corrupt_episode_in_dataset_names_file(tmp_path):
    root = tmp_path / "ds"
    writer = DatasetWriter(root, META)
    writer.write(make_episode(4))
    bad = writer.write(make_episode(4, seed=1))
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(DatasetError) as err:
        EpisodeDataset(root)
    assert bad.name in str(err.value)
    problems = validate_dataset(root)
    assert len(problems) == 1 and bad.name in problems[0]


def test_missing_metadata(tmp_path):
    root = tmp_path / "ds"
    DatasetWriter(root, META).write(make_episode(4))
    (root / "metadata.json").unlink()
    with pytest.raises(DatasetError, match="metadata.json"):
        EpisodeDataset(root)
    with pytest.raises(DatasetError, match="metadata.json"):
        read_metadata(root)
    problems = validate_dataset(root)
    assert len(problems) == 1 and "metadata.json" in problems[0]


def test_corrupt_or_foreign_metadata(tmp_path):
    root = tmp_path / "ds"
    DatasetWriter(root, META).write(make_episode(4))
    (root / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError, match="metadata"):
        EpisodeDataset(root)
    (root / "metadata.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(DatasetError, match="other"):
        EpisodeDataset(root)


def test_dataset_without_episodes(tmp_path):
    root = tmp_path / "ds"
    DatasetWriter(root, META)
    with pytest.raises(DatasetError, match="no episodes"):
        EpisodeDataset(root)
    assert any("no episodes" in p for p in validate_dataset(root))


def test_append_other_game_rejected(tmp_path):
    root = tmp_path / "ds"
    DatasetWriter(root, META).write(make_episode(4))
    other = dict(META, game="breakout", action_meanings=["NOOP", "FIRE", "RIGHT", "LEFT"])
    with pytest.raises(DatasetError, match="breakout"):
        DatasetWriter(root, other)
    with pytest.raises(DatasetError, match="frame_size"):
        DatasetWriter(root, dict(META, frame_size=[16, 16]))
    # The dataset is untouched.
    assert read_metadata(root)["game"] == "pong"
    assert len(EpisodeDataset(root)) == 1


def test_append_other_game_to_recorded_dataset(tmp_path, pong_dataset):
    from recorders.collect import RecordConfig, record

    root = tmp_path / "copy"
    shutil.copytree(pong_dataset, root)
    with pytest.raises(DatasetError, match="cartpole"):
        record(RecordConfig(game="cartpole", out=str(root), episodes=1, max_steps=5, num_envs=1, vector="sync",
                            policy="random"), progress=False)
    assert len(EpisodeDataset(root)) == 2


def test_validate_lists_bad_episode(tmp_path):
    root = tmp_path / "ds"
    writer = DatasetWriter(root, META)
    writer.write(make_episode(4))
    # An episode with an action outside the dataset's action set, written behind the writer's back.
    ep = make_episode(4, seed=3)
    ep.actions[2] = 9
    bad = save_episode(root / "episodes" / "episode_000001.npz", ep)
    # And one whose frames have the wrong size.
    wrong = save_episode(root / "episodes" / "episode_000002.npz", make_episode(4, size=16))
    problems = validate_dataset(root)
    assert len(problems) == 2
    assert bad.name in problems[0] and "action 9" in problems[0]
    assert wrong.name in problems[1] and "frame size" in problems[1]


def test_episode_validate_rejects_inconsistent_arrays(tmp_path):
    ep = make_episode(5)
    ep.rewards = ep.rewards[:-1]
    with pytest.raises(DatasetError, match="rewards"):
        save_episode(tmp_path / "x.npz", ep)
    assert not (tmp_path / "x.npz").exists()
    ep = make_episode(5)
    ep.frames = ep.frames.astype(np.float32)
    with pytest.raises(DatasetError, match="frames"):
        ep.validate(where="here")
    one = make_episode(1)
    one.frames, one.actions = one.frames[:1], one.actions[:0]
    one.rewards, one.terminated, one.truncated = one.rewards[:0], one.terminated[:0], one.truncated[:0]
    with pytest.raises(DatasetError, match="at least 2 frames"):
        one.validate()


def test_leftover_tmp_removed_and_numbering_continues(tmp_path):
    root = tmp_path / "ds"
    w1 = DatasetWriter(root, META)
    w1.write(make_episode(3))
    w1.write(make_episode(3, seed=1))
    # A killed recorder leaves a half-written file; and numbering has a gap.
    stale = root / "episodes" / "episode_000002.npz.tmp"
    stale.write_bytes(b"half an episode")
    (root / "episodes" / "episode_000001.npz").rename(root / "episodes" / "episode_000005.npz")
    w2 = DatasetWriter(root, META)
    assert not stale.exists()
    assert not list((root / "episodes").glob("*.tmp"))
    path = w2.write(make_episode(3, seed=2))
    assert path.name == "episode_000006.npz"
    assert w2.episodes_written == 1
    names = sorted(p.name for p in (root / "episodes").iterdir())
    assert names == ["episode_000000.npz", "episode_000005.npz", "episode_000006.npz"]
    assert len(EpisodeDataset(root)) == 3


# -- WindowSampler alignment ------------------------------------------------------------------------

@pytest.mark.parametrize("window", [1, 3, 6])
def test_window_alignment(window):
    ep = make_episode(10)
    sampler = WindowSampler([ep], window)
    for s in range(len(ep.frames) - window + 1):
        w = sampler.window_at(0, s)
        assert w["frames"].shape == (window, 8, 8, 3)
        np.testing.assert_array_equal(w["frames"][:, 0, 0, 0], np.arange(s, s + window))
        for i in range(window):
            t = s + i - 1                                      # the transition into frame s+i
            if t < 0:
                assert w["actions"][i] == NULL_ACTION == -1
                assert w["rewards"][i] == 0.0 and not w["terminated"][i]
            else:
                assert w["actions"][i] == ep.actions[t], (s, i)
                assert w["rewards"][i] == ep.rewards[t], (s, i)
                assert w["terminated"][i] == ep.terminated[t], (s, i)
        assert w["actions"].dtype == np.int64 and w["rewards"].dtype == np.float32
        assert w["terminated"].dtype == np.bool_


def test_window_sampler_sample_batch_is_aligned():
    eps = [make_episode(8, seed=0), make_episode(12, seed=1)]
    sampler = WindowSampler(eps, 4, seed=3)
    batch = sampler.sample(16)
    assert batch["frames"].shape == (16, 4, 8, 8, 3) and batch["actions"].shape == (16, 4)
    for b in range(16):
        idx = batch["frames"][b, :, 0, 0, 0].astype(int)
        assert (np.diff(idx) == 1).all()
        ep = next(e for e in eps if idx[-1] < len(e.frames) and (e.frames[idx[0]] == batch["frames"][b, 0]).all())
        for i, t in enumerate(idx - 1):
            assert batch["actions"][b, i] == (NULL_ACTION if t < 0 else ep.actions[t])
    # Reproducible by seed.
    again = WindowSampler(eps, 4, seed=3).sample(16)
    np.testing.assert_array_equal(batch["frames"], again["frames"])


def test_window_sampler_needs_long_enough_episode():
    with pytest.raises(DatasetError, match="12 frames"):
        WindowSampler([make_episode(5)], 12)
    # Short episodes are skipped, long ones kept.
    sampler = WindowSampler([make_episode(3), make_episode(10)], 6)
    assert len(sampler.episodes) == 1 and len(sampler.episodes[0].frames) == 11


def test_window_sampler_on_recorded_data(pong_dataset):
    ds = EpisodeDataset(pong_dataset)
    eps = [ds[i] for i in range(len(ds))]
    sampler = WindowSampler(eps, 4)
    w = sampler.window_at(0, 0)
    assert w["actions"][0] == NULL_ACTION
    np.testing.assert_array_equal(w["actions"][1:], eps[0].actions[:3])
    np.testing.assert_array_equal(w["frames"], eps[0].frames[:4])
    last = len(eps[0].frames) - 4
    w = sampler.window_at(0, last)
    np.testing.assert_array_equal(w["actions"], eps[0].actions[last - 1:last + 3])
    np.testing.assert_array_equal(w["rewards"], eps[0].rewards[last - 1:last + 3])
    np.testing.assert_array_equal(w["terminated"], eps[0].terminated[last - 1:last + 3])


# -- malformed files that once escaped as raw exceptions ----------------------------------------

def test_binary_metadata(tmp_path):
    root = tmp_path / "ds"
    DatasetWriter(root, META).write(make_episode(4))
    (root / "metadata.json").write_bytes(bytes(range(256)))
    problems = validate_dataset(root)
    assert len(problems) == 1 and "metadata.json" in problems[0]
    with pytest.raises(DatasetError, match="metadata.json"):
        EpisodeDataset(root)


def test_metadata_that_is_not_an_object(tmp_path):
    root = tmp_path / "ds"
    DatasetWriter(root, META).write(make_episode(4))
    (root / "metadata.json").write_text("[1]")
    with pytest.raises(DatasetError, match="metadata.json"):
        EpisodeDataset(root)


def test_metadata_without_frame_size(tmp_path):
    root = tmp_path / "ds"
    DatasetWriter(root, META).write(make_episode(4))
    meta = json.loads((root / "metadata.json").read_text())
    del meta["frame_size"]
    (root / "metadata.json").write_text(json.dumps(meta))
    problems = validate_dataset(root)
    assert problems and "frame_size" in problems[0]
    with pytest.raises(DatasetError, match="frame_size"):
        EpisodeDataset(root)
