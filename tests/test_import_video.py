"""Action-free video into the dataset format, labelled by the latent-action model."""

from __future__ import annotations

import numpy as np
import pytest

import worldmodel
from recorders.dataset import EpisodeDataset, validate_dataset
from recorders.import_video import ImportConfig, import_video, read_frames


@pytest.fixture(scope="module")
def pong_model():
    return worldmodel.load("pong")


def test_gif_and_image_folder_import_as_latent_labelled_episodes(pong_trajectory, pong_model, tmp_path):
    import imageio.v3 as iio

    frames, _ = pong_trajectory                                       # (25, 64, 64, 3)
    big = frames.repeat(2, axis=1).repeat(2, axis=2)                  # a 128x128 "recording"
    gif = tmp_path / "clip.gif"
    iio.imwrite(gif, big, duration=66, loop=0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(big):
        iio.imwrite(folder / f"{i:04d}.png", f)

    # The GIF writer drops repeated frames, so the GIF holds fewer; each source is checked
    # against its own frames, halved (every 2x2 block is one colour: area averaging is exact).
    for src, out in ((folder, tmp_path / "from_folder"), (gif, tmp_path / "from_gif")):
        expected = read_frames(src)[:, ::2, ::2]
        written = import_video(ImportConfig(src=str(src), checkpoint="pong", out=str(out), episode_frames=10))
        ds = EpisodeDataset(out)
        assert validate_dataset(out) == []
        assert ds.metadata["action_source"] == "latent"
        codes = pong_model.lam_config.num_codes
        assert ds.metadata["action_meanings"] == [f"code{k}" for k in range(codes)]
        t = len(expected) - 1
        assert len(written) == -(-t // 9) and sum(len(ds[i]) for i in range(len(ds))) == t
        ep = ds[0]
        np.testing.assert_array_equal(ep.frames, expected[:10])
        np.testing.assert_array_equal(ep.actions, worldmodel.infer_latent_actions(pong_model, expected[:10]))
        assert ep.truncated[-1] and not ep.terminated.any() and not ep.rewards.any()
    np.testing.assert_array_equal(read_frames(folder)[:, ::2, ::2], frames)


def test_import_errors_name_the_problem(tmp_path, pong_model):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_frames(tmp_path / "nope.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no frames"):
        read_frames(tmp_path / "empty")
    with pytest.raises(ValueError, match="src= is required"):
        ImportConfig()
