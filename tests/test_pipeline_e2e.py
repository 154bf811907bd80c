"""End to end: record real Pong, train the tiny preset, evaluate, export a bundle, load it, dream."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import worldmodel
from recorders.dataset import EpisodeDataset, validate_dataset
from recorders.policies import ScriptedPongPolicy
from training.pipeline import build_config, run
from worldmodel import Simulator


def test_build_config_tiny():
    cfg = build_config(dict(preset="tiny", out="x", progress=False))
    assert cfg.model.dynamics.context_frames == 4 and cfg.model.dynamics.width == 64
    assert cfg.budget.record.episodes == 2 and cfg.budget.dynamics.steps == 6
    over = build_config(dict(preset="tiny", model={"dynamics": {"depth": 1}}, budget={"dynamics": {"steps": 2}}))
    assert over.model.dynamics.depth == 1 and over.budget.dynamics.steps == 2
    # Overrides do not leak into the shared presets.
    assert build_config(dict(preset="tiny")).model.dynamics.depth == 2


@pytest.mark.parametrize("values,name", [
    (dict(preset="enormous"), "enormous"),
    (dict(preset="tiny", no_such_setting=1), "no_such_setting"),
    (dict(preset="tiny", game="tetris"), "tetris"),
    (dict(preset="tiny", stages=["dynamics", "polish"]), "polish"),
    (dict(preset="tiny", model={"dynamics": {"wdith": 32}}), "wdith"),
    (dict(preset="tiny", model={"decoder": {}}), "decoder"),
    (dict(preset="tiny", budget={"dynamics": {"stpes": 3}}), "stpes"),
])
def test_build_config_rejects_unknown_names(values, name):
    with pytest.raises(ValueError, match=name):
        build_config(values)


def test_pipeline_recorded_real_datasets(pipeline_run):
    root, cfg, metrics = pipeline_run
    for path, episodes in ((root / "data", cfg.budget.record.episodes),
                           (root / "heldout", cfg.budget.record.heldout_episodes)):
        assert validate_dataset(path) == []
        ds = EpisodeDataset(path)
        assert len(ds) == episodes and ds.metadata["game"] == "pong"
        assert ds[0].frames.shape[1:] == (64, 64, 3)
    assert metrics["dataset"]["episodes"] == cfg.budget.record.episodes
    # The held-out set is recorded with other seeds: its first frames may match (Pong always
    # starts the same) but its actions differ from the training set's.
    train, held = EpisodeDataset(root / "data")[0], EpisodeDataset(root / "heldout")[0]
    n = min(len(train), len(held))
    assert not np.array_equal(train.actions[:n], held.actions[:n])


def test_pipeline_metrics_and_artifacts(pipeline_run):
    root, cfg, metrics = pipeline_run
    out = root / "run"
    on_disk = json.loads((out / "metrics.json").read_text())
    tf = on_disk["teacher_forced"]
    for key in ("psnr", "psnr_moving", "copy_last_psnr", "copy_last_psnr_moving"):
        assert set(tf[key]) == {"1", "4", "16"}, key
    for h in ("1", "4", "16"):
        assert np.isfinite(tf["psnr"][h]) and 0 < tf["psnr"][h] <= 100
        assert np.isfinite(tf["copy_last_psnr"][h])
    assert tf["windows"] == cfg.budget.eval_windows
    assert 0.0 <= on_disk["paddle_control"]["pass_rate"] <= 1.0
    assert on_disk["dynamics"]["step"] == cfg.budget.dynamics.steps
    assert np.isfinite(on_disk["dynamics"]["loss"])
    assert on_disk["lam"]["step"] == cfg.budget.lam.steps
    assert on_disk["reward"]["step"] == cfg.budget.reward.steps and np.isfinite(on_disk["reward"]["loss"])
    assert metrics["teacher_forced"]["psnr"][1] == pytest.approx(tf["psnr"]["1"])
    gif = out / "real_vs_dream.gif"
    assert gif.exists() and gif.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    assert on_disk["video"] == str(gif)
    import imageio.v3 as iio

    video = iio.imread(gif)
    windows = min(4, cfg.budget.eval_windows)
    assert video.ndim == 4 and video.shape[1:3] == (windows * 64 * 4, 3 * 64 * 4)
    assert len(video) > 1
    files = sorted(p.name for p in (out / "bundle").iterdir())
    assert "reward.safetensors" in files and "dynamics.safetensors" in files
    assert all(name.endswith((".json", ".safetensors")) for name in files), files
    assert (out / "dynamics" / "last.safetensors").exists() and not (out / "dynamics" / "last.json").exists()
    history = [json.loads(line) for line in (out / "dynamics" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == cfg.budget.dynamics.steps and np.isfinite(history[-1]["loss"])


def test_trained_bundle_dreams(pipeline_run):
    root, cfg, _ = pipeline_run
    bundle = worldmodel.load(root / "run" / "bundle")
    ctx = cfg.model.dynamics.context_frames
    assert bundle.game == "pong" and bundle.num_actions == 6
    assert bundle.start_frames.shape == (4, ctx - 1, 64, 64, 3) and bundle.start_frames.dtype == torch.uint8
    assert bundle.start_actions.shape == (4, ctx - 2) and bundle.start_actions.dtype == torch.int64
    assert bundle.info["metrics"]["teacher_forced"]["psnr"]
    assert bundle.lam is not None
    sim = Simulator(bundle, batch_size=1, seed=0)
    frame = sim.reset(bundle.start_frames[:1].numpy(), bundle.start_actions[:1].numpy())
    assert frame.shape == (1, 64, 64, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[0], bundle.start_frames[0, -1].numpy())
    policy = ScriptedPongPolicy(1, seed=0)
    dream = []
    for _ in range(20):
        action = policy(frame)
        assert action.shape == (1,) and 0 <= action[0] < 6
        frame, reward, terminated = sim.step(action)
        assert frame.shape == (1, 64, 64, 3) and frame.dtype == np.uint8
        assert reward.shape == (1,) and reward.dtype == np.float32 and reward[0] in (-1.0, 0.0, 1.0)
        assert terminated.shape == (1,) and terminated.dtype == np.bool_
        dream.append(frame[0])
    assert sim.step_count.tolist() == [20]
    assert sim.positions.item() == ctx - 2 + 20
    dream = np.stack(dream)
    assert len({d.tobytes() for d in dream}) > 1, "the dream should not be frozen"


def test_pipeline_resumes_without_retraining(pipeline_run, tmp_path):
    """Running the same command again resumes the finished stages instead of training them anew."""
    root, cfg, _ = pipeline_run
    first = worldmodel.load(root / "run" / "bundle")
    again = build_config(dict(preset="tiny", out=str(root / "run"), dataset=str(root / "data"),
                              heldout=str(root / "heldout"), progress=False, start_windows=4,
                              stages=["lam", "dynamics"]))
    metrics = run(again)
    assert metrics["dynamics"]["step"] == cfg.budget.dynamics.steps
    assert "teacher_forced" not in metrics
    second = worldmodel.load(root / "run" / "bundle")
    for (k, a), (_, b) in zip(first.dynamics.state_dict().items(), second.dynamics.state_dict().items()):
        assert torch.equal(a, b), k


def test_resume_gives_the_same_loss_as_an_uninterrupted_run(pipeline_run, tmp_path):
    root, _, _ = pipeline_run
    common = dict(preset="tiny", dataset=str(root / "data"), heldout=str(root / "heldout"), progress=False,
                  stages=["dynamics"], start_windows=2)
    whole = run(build_config(dict(common, out=str(tmp_path / "whole"), budget={"dynamics": {"steps": 4}})))
    run(build_config(dict(common, out=str(tmp_path / "split"), budget={"dynamics": {"steps": 4, "pause_at": 2}})))
    resumed = run(build_config(dict(common, out=str(tmp_path / "split"), budget={"dynamics": {"steps": 4}})))
    assert resumed["dynamics"]["step"] == whole["dynamics"]["step"] == 4
    assert resumed["dynamics"]["loss"] == pytest.approx(whole["dynamics"]["loss"], rel=1e-5)


def test_resume_with_another_model_is_refused(pipeline_run, tmp_path):
    root, _, _ = pipeline_run
    common = dict(preset="tiny", dataset=str(root / "data"), heldout=str(root / "heldout"), progress=False,
                  stages=["dynamics"], out=str(tmp_path / "run"), start_windows=2)
    run(build_config(dict(common, budget={"dynamics": {"steps": 1}})))
    with pytest.raises(ValueError, match="width"):
        run(build_config(dict(common, model={"dynamics": {"width": 32}})))


def test_export_without_a_trained_dynamics_model_is_refused(pipeline_run, tmp_path):
    root, _, _ = pipeline_run
    cfg = build_config(dict(preset="tiny", dataset=str(root / "data"), heldout=str(root / "heldout"),
                            progress=False, stages=["evaluate"], out=str(tmp_path / "fresh"),
                            export=str(tmp_path / "exported")))
    with pytest.raises(ValueError, match="not trained"):
        run(cfg)
    assert not (tmp_path / "exported").exists()


def test_tokenizer_only_run_measures_the_conv_tokenizer(pipeline_run, tmp_path):
    root, _, _ = pipeline_run
    cfg = build_config(dict(preset="tiny", dataset=str(root / "data"), heldout=str(root / "heldout"),
                            progress=False, stages=["tokenizer"], out=str(tmp_path / "tok"),
                            model={"tokenizer": {"kind": "conv"}}))
    metrics = run(cfg)
    rec = metrics["tokenizer_reconstruction"]
    assert 0 < rec["psnr"] < 100 and np.isfinite(rec["psnr_moving"])   # lossy, unlike patchify
    assert metrics["tokenizer"]["step"] == cfg.budget.tokenizer.steps
    assert (tmp_path / "tok" / "metrics.json").exists() and not (tmp_path / "tok" / "bundle").exists()


def test_warm_start_from_a_bundle(pipeline_run, tmp_path):
    root, cfg, _ = pipeline_run
    common = dict(preset="tiny", dataset=str(root / "data"), heldout=str(root / "heldout"), progress=False,
                  start_windows=2, stages=["dynamics"], budget={"dynamics": {"steps": 1}})
    source = worldmodel.load(root / "run" / "bundle")
    metrics = run(build_config(dict(common, out=str(tmp_path / "warm"), init_from=str(root / "run" / "bundle"),
                                    budget={"dynamics": {"steps": 0}})))
    assert metrics["dynamics"]["step"] == 0
    from training.train_state import load_trained
    from worldmodel.dynamics import DynamicsModel

    warm = load_trained(tmp_path / "warm" / "dynamics", DynamicsModel(source.dynamics_config))
    for (k, a), b in zip(warm.state_dict().items(), source.dynamics.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    with pytest.raises(ValueError, match="width"):
        run(build_config(dict(common, out=str(tmp_path / "bad"), init_from=str(root / "run" / "bundle"),
                              model={"dynamics": {"width": 32}})))
    # A bundle from before the reward model: that stage trains from scratch, the others keep the bundle's models.
    import dataclasses

    dataclasses.replace(source, reward_model=None, reward_config=None).save(tmp_path / "old")
    metrics = run(build_config(dict(common, out=str(tmp_path / "grow"), init_from=str(tmp_path / "old"),
                                    stages=["reward"], budget={"reward": {"steps": 2}}, export=str(tmp_path / "new"),
                                    weights_dtype="float16")))
    assert metrics["reward"]["step"] == 2
    grown = worldmodel.load(tmp_path / "new")
    assert grown.reward_model is not None
    for (k, a), b in zip(grown.dynamics.state_dict().items(), source.dynamics.state_dict().values()):
        torch.testing.assert_close(a, b.half().float(), rtol=0, atol=0, msg=k)   # stored as float16
    # A stage not run keeps the bundle's model with the bundle's own config, even where this
    # preset builds that model otherwise (here: a LAM of an older design).
    from worldmodel.config import LAMConfig
    from worldmodel.lam import LatentActionModel

    old_cfg = LAMConfig(history=1, channels=(8, 8, 8, 8), frame_differences=False, spatial_readout=False,
                        normalize_latent=False)
    dataclasses.replace(source, lam=LatentActionModel(old_cfg), lam_config=old_cfg).save(tmp_path / "old-lam")
    run(build_config(dict(common, out=str(tmp_path / "keep"), init_from=str(tmp_path / "old-lam"),
                          budget={"dynamics": {"steps": 0}}, export=str(tmp_path / "kept"))))
    assert worldmodel.load(tmp_path / "kept").lam_config == old_cfg
    # The bundle names every command it grew from, oldest first.
    assert grown.info["commands"][:-1] == [source.info["command"]] == source.info["commands"]
    assert grown.info["commands"][-1] == grown.info["command"]
    with pytest.raises(ValueError, match="weights_dtype"):
        build_config(dict(common, weights_dtype="int8"))


def test_warm_start_from_another_games_bundle_transfers_the_dynamics_trunk(pipeline_run, tmp_path):
    """Breakout from the Pong bundle: the dynamics trunk carries over; the action embeddings and
    the models of stages not run here (LAM, reward) do not (the palette: tests/test_palette.py)."""
    root, _, _ = pipeline_run
    pong = worldmodel.load(root / "run" / "bundle")
    metrics = run(build_config(dict(
        preset="tiny", game="breakout", out=str(tmp_path / "run"), dataset=str(tmp_path / "data"),
        heldout=str(tmp_path / "heldout"), progress=False, start_windows=2, stages=["dynamics"],
        init_from=str(root / "run" / "bundle"), export=str(tmp_path / "bundle"), budget={"dynamics": {"steps": 0}})))
    assert metrics["dynamics"]["step"] == 0
    breakout = worldmodel.load(tmp_path / "bundle")
    assert breakout.game == "breakout" and breakout.dynamics_config.num_actions == 4
    assert breakout.lam is None and breakout.reward_model is None
    theirs = pong.dynamics.state_dict()
    for k, v in breakout.dynamics.state_dict().items():
        if k.startswith("blocks.") or k.startswith("final."):
            torch.testing.assert_close(v, theirs[k], msg=k)
    assert breakout.dynamics.action_emb.weight.shape != pong.dynamics.action_emb.weight.shape


@pytest.mark.parametrize("conf,config_class", [
    ("training/conf/pipeline.yaml", "training.pipeline:PipelineConfig"),
    ("training/conf/evaluate.yaml", "training.evaluate:EvalConfig"),
    ("worldmodel/conf/bench.yaml", "worldmodel.bench:BenchConfig"),
])
def test_every_setting_has_a_hydra_default(conf, config_class):
    """Hydra refuses ``key=value`` for a key its yaml lacks: each CLI's yaml must name every field."""
    import dataclasses
    import importlib
    from pathlib import Path

    import yaml

    module, name = config_class.split(":")
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    keys = set(yaml.safe_load((Path(__file__).resolve().parents[1] / conf).read_text())) - {"defaults", "hydra"}
    assert fields == keys, f"{conf}: missing {sorted(fields - keys)}, extra {sorted(keys - fields)}"


def test_the_pipeline_tops_up_only_datasets_it_records(tmp_path, monkeypatch):
    """A short dataset someone else recorded is used as it is; one the pipeline was recording
    (its marker file is there: an interrupted run) is topped up to the preset's budget."""
    import training.pipeline as pipeline
    from recorders.dataset import DatasetWriter
    from tests.test_dataset import make_episode

    calls = []
    monkeypatch.setattr(pipeline, "record", lambda rc, progress: calls.append((rc.out, rc.episodes)))
    meta = dict(game="pong", frame_size=[8, 8], frame_skip=4, sticky_actions=0.0,
                action_meanings=["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"], fps=15)
    for name in ("mine", "held"):
        DatasetWriter(tmp_path / name, meta).write(make_episode(seed=1))
    cfg = build_config(dict(preset="tiny", dataset=str(tmp_path / "mine"), heldout=str(tmp_path / "held"),
                            budget={"record": {"episodes": 3, "heldout_episodes": 2}}, progress=False))
    pipeline.ensure_datasets(cfg)
    assert calls == []                                    # neither was recorded by the pipeline

    (tmp_path / "held" / pipeline.RECORDING_MARKER).touch()
    pipeline.ensure_datasets(cfg)
    assert calls == [(str(tmp_path / "held"), 2)]         # an interrupted pipeline recording resumes
    assert not (tmp_path / "held" / pipeline.RECORDING_MARKER).exists()

    def killed(rc, progress):
        calls.append((rc.out, rc.episodes))
        raise KeyboardInterrupt

    calls.clear()
    monkeypatch.setattr(pipeline, "record", killed)
    fresh = build_config(dict(preset="tiny", dataset=str(tmp_path / "new"), heldout=str(tmp_path / "held"),
                              budget={"record": {"episodes": 3, "heldout_episodes": 1}}, progress=False))
    with pytest.raises(KeyboardInterrupt):
        pipeline.ensure_datasets(fresh)
    assert calls == [(str(tmp_path / "new"), 3)]          # a missing dataset is recorded,
    assert (tmp_path / "new" / pipeline.RECORDING_MARKER).exists()   # and stays marked ours if interrupted
