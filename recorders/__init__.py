"""Recording real games: policies, vectorized collection and the dataset format."""

from recorders.collect import RecordConfig, record
from recorders.dataset import (DatasetError, DatasetWriter, Episode, EpisodeDataset, WindowSampler, episode_paths,
                               load_episode, save_episode, validate_dataset)

__all__ = ["RecordConfig", "record", "DatasetError", "DatasetWriter", "Episode", "EpisodeDataset", "WindowSampler",
           "episode_paths", "load_episode", "save_episode", "validate_dataset"]
