"""recorders.merge: several recordings become one dataset, byte for byte, or nothing is written."""

from __future__ import annotations

import re

import pytest

from recorders.dataset import DatasetError, DatasetWriter, EpisodeDataset, episode_paths, read_metadata
from recorders.merge import main, merge_datasets
from tests.test_dataset import META, assert_episodes_equal, make_episode


def _dataset(root, seeds, meta=META):
    writer = DatasetWriter(root, meta)
    for s in seeds:
        writer.write(make_episode(4 + s, seed=s, size=meta["frame_size"][0]))
    return root


def test_merge_copies_every_episode_in_order(tmp_path):
    a, b = _dataset(tmp_path / "a", [0, 1]), _dataset(tmp_path / "b", [2, 3, 4])
    writer = merge_datasets([a, b], tmp_path / "ab")
    assert (writer.episodes_before, writer.episodes_written) == (0, 5)
    assert writer.frames_written == sum(5 + s for s in range(5))
    merged = EpisodeDataset(tmp_path / "ab")
    sources = [*episode_paths(a), *episode_paths(b)]
    assert [p.read_bytes() for p in merged.paths] == [p.read_bytes() for p in sources]
    for i, s in enumerate(range(5)):
        assert_episodes_equal(merged[i], make_episode(4 + s, seed=s))
    assert {k: read_metadata(tmp_path / "ab")[k] for k in META} == META
    # Into a dataset that exists: appended, numbering goes on.
    again = merge_datasets([b], tmp_path / "ab")
    assert (again.episodes_before, again.episodes_written) == (5, 3)
    assert [p.name for p in EpisodeDataset(tmp_path / "ab").paths][-1] == "episode_000007.npz"


@pytest.mark.parametrize("key,value", [("frame_size", [16, 16]), ("sticky_actions", 0.25), ("game", "breakout")])
def test_merge_refuses_datasets_that_differ(tmp_path, key, value):
    a = _dataset(tmp_path / "a", [0])
    b = _dataset(tmp_path / "b", [1], meta=dict(META, **{key: value}))
    with pytest.raises(DatasetError, match=re.escape(f"{key}={value!r}")):
        merge_datasets([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_names_a_damaged_source_and_writes_nothing(tmp_path):
    a, b = _dataset(tmp_path / "a", [0]), _dataset(tmp_path / "b", [1, 2])
    bad = episode_paths(b)[1]
    bad.write_bytes(b"not an archive")
    out = _dataset(tmp_path / "out", [3])
    with pytest.raises(DatasetError, match="episode_000001.npz"):
        merge_datasets([a, b], out)
    assert len(EpisodeDataset(out)) == 1
    with pytest.raises(DatasetError, match="both a source and the output"):
        merge_datasets([a, out], out)
    with pytest.raises(DatasetError, match="named twice"):
        merge_datasets([a, b, tmp_path / "a"], tmp_path / "twice")
    assert not (tmp_path / "twice").exists()
    with pytest.raises(DatasetError, match="no source"):
        merge_datasets([], tmp_path / "new")


def test_merge_command(tmp_path, capsys):
    a, b = _dataset(tmp_path / "a", [0]), _dataset(tmp_path / "b", [1])
    assert main([str(a), str(b), "--out", str(tmp_path / "ab")]) == 0
    assert "2 episodes" in capsys.readouterr().out
    assert len(EpisodeDataset(tmp_path / "ab")) == 2
    assert main([str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 1
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
