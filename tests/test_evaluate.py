"""The fidelity evaluation: its measures on known inputs, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.evaluate import (
    MISSING_PX,
    PARTS,
    EvalConfig,
    broken_frames,
    checks_real_play_fails,
    colour_histogram,
    count_onsets,
    ensure_heldout,
    evaluate,
    failed_any,
    heldout_path,
    long_run,
    longest_run,
    one_step_structure,
    position_error,
    reward_model_quality,
    rollout_curves,
    saturated_limit_of,
    screen_checks,
    true_runs,
)
from worldmodel.reward_model import game_over_targets


def test_position_error_charges_a_missing_object():
    real = np.array([[10.0, 20.0], [5.0, 5.0], [np.nan, np.nan], [np.nan, np.nan]])
    fake = np.array([[13.0, 24.0], [np.nan, np.nan], [1.0, 1.0], [np.nan, np.nan]])
    err = position_error(real, fake)
    assert err[0] == pytest.approx(5.0)
    assert err[1] == MISSING_PX and err[2] == MISSING_PX
    assert np.isnan(err[3])
    # 1-D read-outs (paddle rows) work the same way.
    np.testing.assert_allclose(position_error(np.array([3.0, np.nan]), np.array([1.0, 2.0])), [2.0, MISSING_PX])


def test_broken_frames_flags_blank_saturated_and_missing_paddles(pong_trajectory):
    from envs.readout import paddle_y

    frames, _ = pong_trajectory
    real = frames[18:22]                                     # both paddles on screen
    assert not broken_frames(real, "pong").any()
    black = np.zeros_like(real[:1])
    white = np.full_like(real[:1], 255)
    no_paddle = real[:1].copy()
    no_paddle[..., 52:, :] = no_paddle[0, 30, 30]             # paint the player's paddle column with background
    assert np.isnan(paddle_y(no_paddle)).all()
    assert broken_frames(np.concatenate([black, white, no_paddle]), "pong").all()
    assert not broken_frames(no_paddle, "cartpole").any()   # the Pong screen check is Pong's only


def test_checks_that_real_play_fails_itself_are_named(pong_trajectory):
    """Pong hides the opponent's paddle over the top wall after each point: a frame without it is
    broken by the screen checks, but not beyond what real play shows when real frames lack it too."""
    from envs.readout import paddle_y

    frames, _ = pong_trajectory
    real = frames[18:22]
    hidden = real.copy()
    hidden[:, 12:60, :12] = real[0, 30, 30]                     # background over the opponent's paddle
    assert np.isnan(paddle_y(hidden, player=False)).all() and not np.isnan(paddle_y(hidden)).any()
    checks = screen_checks(hidden, "pong")
    assert checks["no_opponent_paddle"].all()
    assert not any(v.any() for k, v in checks.items() if k != "no_opponent_paddle")
    assert broken_frames(hidden, "pong").all()
    mixed = screen_checks(np.concatenate([real] * 4 + [hidden[:1]]), "pong")   # 1 frame in 17 hides it
    assert checks_real_play_fails(mixed) == ["no_opponent_paddle"]
    assert checks_real_play_fails(mixed, share=0.1) == []
    assert checks_real_play_fails(screen_checks(real, "pong")) == []
    # Drawn twice is another failure, one real play never shows: it stays broken beyond real play.
    twice = real[:1].copy()
    y = int(round(float(paddle_y(twice, player=False)[0])))
    twice[0, 12:60, :12] = real[0, 30, 30]
    twice[0, 14:20, :12] = real[0, y - 3:y + 3, :12]
    twice[0, 50:56, :12] = real[0, y - 3:y + 3, :12]
    checks = screen_checks(twice, "pong")
    assert checks["no_opponent_paddle_shape"].all() and not checks["no_opponent_paddle"].any()
    excused = checks_real_play_fails(mixed)
    assert failed_any(checks, excused=excused).all()                         # drawn twice: still broken
    assert not failed_any(screen_checks(hidden, "pong"), excused=excused).any()   # absent: as in real play
    assert failed_any(screen_checks(hidden, "pong")).all()


def test_a_paddle_smeared_along_its_column_is_broken(pong_trajectory):
    """The dream's typical failure: the player's paddle column turns into a streak of its colour
    (or noise). The paddle's colour is still there, so only its shape tells it is no paddle."""
    from envs.readout import PLAYER_GREEN, paddle_is_bar, paddle_y

    frames, _ = pong_trajectory
    real = frames[18:22]
    assert paddle_is_bar(real).all() and paddle_is_bar(real, player=False).all()
    streak = real[:1].copy()
    green = (np.abs(streak[0, 12:60].astype(int) - PLAYER_GREEN).sum(-1) < 30).sum(0)   # between the walls
    column = int(np.argmax(green))
    rows = np.arange(12, 60, 2)                                  # every other row: a dotted green streak
    streak[0, rows, column] = PLAYER_GREEN.astype(np.uint8)
    assert not np.isnan(paddle_y(streak)).any()                  # "visible" by colour alone
    assert not paddle_is_bar(streak).any()
    assert broken_frames(streak, "pong").all()
    # A paddle moved elsewhere in its column is still a paddle.
    moved = real[:1].copy()
    moved[0, 12:60, 52:] = real[0, 30, 30]                      # background over the old paddle
    moved[0, 40:45, column] = PLAYER_GREEN.astype(np.uint8)
    assert paddle_is_bar(moved).all() and not broken_frames(moved, "pong").any()


def test_colour_histogram_is_normalised_and_separates_frames(pong_trajectory):
    frames, _ = pong_trajectory
    h = colour_histogram(frames[:3])
    assert h.shape == (3, 512)
    np.testing.assert_allclose(h.sum(-1), 1.0)
    other = colour_histogram(np.zeros_like(frames[:1]))
    assert 0.5 * np.abs(h[0] - other[0]).sum() > 0.5


def test_rollout_curves_of_a_perfect_and_a_copying_dream(pong_trajectory):
    frames, _ = pong_trajectory
    real = np.stack([frames[10:16], frames[14:20]])          # (W=2, horizon+1=6, H, W, 3)
    perfect = rollout_curves(real, real[:, 1:], "pong")
    assert (perfect["psnr"] == 100.0).all() and np.allclose(perfect["ssim"], 1.0)
    assert np.nanmax(perfect["paddle_error_px"]) == 0.0
    seen = ~np.isnan(perfect["ball_within_1px"])                # horizons with a ball in some window
    assert seen.any() and (perfect["ball_within_1px"][seen] == 1.0).all()
    copying = rollout_curves(real, np.repeat(real[:, :1], 5, axis=1), "pong")
    np.testing.assert_allclose(copying["psnr"], copying["copy_last_psnr"])
    assert copying["psnr"][-1] < 100.0
    # A ball left where it was is off by more than 3 px once it has flown a few frames.
    assert np.nanmin(copying["ball_within_3px"]) < 1.0
    assert (copying["ball_within_1px"] <= copying["ball_within_3px"])[~np.isnan(copying["ball_within_3px"])].all()


def test_reward_model_quality_counts_every_transition(tiny_bundle, pong_dataset):
    from recorders.dataset import EpisodeDataset

    ds = EpisodeDataset(pong_dataset)
    episodes = [ds[i] for i in range(len(ds))]
    assert tiny_bundle.reward_model is not None
    res = reward_model_quality(tiny_bundle, episodes, batch=3)
    assert res["reward"]["true"] == sum(int((e.rewards != 0).sum()) for e in episodes)
    assert res["end"]["true"] == sum(int(game_over_targets(e.frames, e.terminated).sum()) for e in episodes)
    for head in res.values():
        for key in ("precision", "recall"):
            assert head[key] is None or 0.0 <= head[key] <= 1.0


def test_the_end_model_is_scored_against_the_still_screen_before_a_game_end(tiny_bundle, pong_trajectory):
    """A game that stops on a still screen is over from its first still frame: each of those
    transitions is a game-over target, and a model flagging any of them is not wrong."""
    from recorders.dataset import Episode

    frames, actions = pong_trajectory
    still = np.concatenate([frames, frames[-1:].repeat(3, axis=0)])         # 3 more steps on the last screen
    t = len(still) - 1
    ended = np.zeros(t, bool)
    ended[-1] = True
    episode = Episode(frames=still, actions=np.concatenate([actions, np.zeros(3, np.int64)]),
                      rewards=np.zeros(t, np.float32), terminated=ended, truncated=np.zeros(t, bool))
    assert not np.array_equal(frames[-2], frames[-1])
    res = reward_model_quality(tiny_bundle, [episode])
    assert res["end"]["true"] == 4          # into the still screen, and the 3 steps on it


def test_long_run_counts_a_run_of_end_flags_as_one_game_end():
    flags = np.array([[0, 1], [1, 1], [1, 0], [0, 0], [1, 1]], bool)    # (steps, dreams)
    assert count_onsets(flags) == 4          # dream 0: steps 1 and 4; dream 1: steps 0 and 4
    assert count_onsets(np.zeros((0, 2), bool)) == 0


def test_long_run_keeps_the_frames_that_led_to_each_breakdown(tiny_bundle, pong_dataset):
    """One example per run of frames broken beyond real play (first dream), up to the cap,
    its last frame the broken one: it fails every check the example names."""
    episodes = ensure_heldout(EvalConfig(heldout=str(pong_dataset)), "pong")
    examples: list = []
    summary, series = long_run(tiny_bundle, episodes, steps=12, progress=False, examples=examples, lead=3,
                               sim_options={"backend": "torch"})
    broken = series["broken_beyond_real"] > 0
    assert broken.any(), "an untrained model should break frames"
    assert len(examples) == min(6, count_onsets(broken[:, None]))
    real = np.concatenate([e.frames for e in episodes])
    for e in examples:
        assert broken[e["step"]] and (e["step"] == 0 or not broken[e["step"] - 1])
        assert e["frames"].dtype == np.uint8 and e["frames"].shape[1:] == (64, 64, 3)
        assert len(e["frames"]) == min(3, e["step"] + 1)
        checks = screen_checks(e["frames"][-1], "pong", saturated_limit=saturated_limit_of(real))
        assert e["failed"] and all(checks[c] for c in e["failed"])
        runs = summary["longest_run"]                # a check real play fails counts only past its longest run
        assert all(runs[c]["dream"] > runs[c]["real"] for c in set(e["failed"]) & set(summary["checks_real_play_fails"]))


def test_longest_run():
    assert longest_run(np.array([0, 1, 1, 0, 1, 1, 1, 0], bool)) == 3
    assert longest_run(np.ones(4, bool)) == 4 and longest_run(np.zeros(4, bool)) == 0


def test_true_runs_are_the_runs_of_true():
    assert true_runs(np.array([1, 1, 0, 0, 1, 0, 1, 1, 1], bool)) == [(0, 2), (4, 1), (6, 3)]
    assert true_runs(np.zeros(4, bool)) == []


def test_a_part_real_play_hides_is_broken_once_the_dream_hides_it_for_longer_than_real_play_does(
        tiny_bundle, pong_dataset, pong_trajectory, monkeypatch):
    """Pong hides the opponent's paddle for a while after a point; a dream that never brings
    it back is broken from the frame its absence outlasts every held-out episode's longest."""
    import training.evaluate as ev

    episodes = ensure_heldout(EvalConfig(heldout=str(pong_dataset)), "pong")
    frames, _ = pong_trajectory
    only_paddle_hidden = [f for f in frames
                          if [k for k, v in screen_checks(f, "pong").items() if v] == ["no_opponent_paddle"]]
    hidden = only_paddle_hidden[0]

    class StillDream:
        def step(self, actions):
            return hidden[None], np.zeros(1, np.float32), np.zeros(1, bool)

    monkeypatch.setattr(ev, "free_play", lambda model, **kw: (StillDream(), lambda obs: np.zeros(1, np.int64)))
    summary, series = long_run(tiny_bundle, episodes, steps=60, progress=False)
    real = summary["longest_run"]["no_opponent_paddle"]["real"]
    assert "no_opponent_paddle" in summary["checks_real_play_fails"] and 0 < real < 60
    assert summary["longest_run"]["no_opponent_paddle"]["dream"] == 60
    beyond = series["broken_beyond_real"]
    assert not beyond[:real].any() and beyond[real:].all()


def test_one_step_counts_each_predicted_frame_broken_where_the_real_one_is_not(tiny_bundle, pong_dataset,
                                                                               monkeypatch):
    """Every transition is predicted once; a dream frame counts when it fails a check its real
    frame passes, and the examples name the episode, the predicted frame and the checks."""
    import training.evaluate as ev

    episodes = ensure_heldout(EvalConfig(heldout=str(pong_dataset)), "pong")
    ctx = tiny_bundle.dynamics_config.context_frames
    seen = []

    def blank_every_third(model, eps, *, horizon, windows, seed, sim_options=None, starts=None):
        assert horizon == 1 and len(starts) == windows <= 5
        real = np.stack([e.frames[s + ctx - 1:s + ctx + 1] for e, s in starts])      # (W, 2, H, W, 3)
        dream = real[:, 1:].copy()
        for j, (e, s) in enumerate(starts):
            seen.append((id(e), s))
            if (s + ctx) % 3 == 0:
                dream[j] = 0                                                           # a blank frame
        return real, dream

    monkeypatch.setattr(ev, "teacher_forced_rollout", blank_every_third)
    out = one_step_structure(tiny_bundle, episodes, batch=5, max_examples=3)
    every = [(id(e), s) for e in episodes for s in range(len(e.frames) - ctx)]
    assert seen == every and out["transitions"] == len(every)
    blanked = sum((s + ctx) % 3 == 0 for _, s in every)
    assert out["broken_where_real_is_not"] == pytest.approx(blanked / len(every))
    assert out["failed_where_real_passes"]["blank"] == pytest.approx(blanked / len(every))
    assert len(out["examples"]) == 3
    assert all(x["frame"] % 3 == 0 and "blank" in x["failed"] for x in out["examples"])


def test_evaluate_command_writes_report_plots_and_video(tiny_bundle, pong_dataset, tmp_path):
    tiny_bundle.save(tmp_path / "bundle")
    out = tmp_path / "eval"
    cfg = EvalConfig(checkpoint=str(tmp_path / "bundle"), heldout=str(pong_dataset), out=str(out), windows=2,
                     horizons=(1, 2), control_horizons=(1,), long_run_steps=4, video_windows=1, progress=False)
    report = evaluate(cfg)
    on_disk = json.loads((out / "report.json").read_text())
    assert set(on_disk["teacher_forced"]["psnr"]) == {"1", "2"}
    assert set(report["teacher_forced"]) >= {"psnr", "ssim", "psnr_moving", "ball_error_px", "paddle_error_px"}
    assert "1" in on_disk["controllability"]["delta_psnr"]
    assert on_disk["long_run"]["steps"] == 4
    dream = on_disk["long_run"]["dream_mean"]
    assert isinstance(on_disk["long_run"]["checks_real_play_fails"], list)
    assert 0.0 <= dream["broken_beyond_real"] <= dream["broken"] <= 1.0
    assert {"fails_blank", "fails_saturated", "fails_no_player_paddle"} <= set(dream)
    assert set(on_disk["simulator"]["backend"].values()) == {"torch"}       # the default: torch at every batch size
    rates = on_disk["long_run"]["rates"]
    assert 0 <= rates["dream_rewards_per_1000"] <= 1000 and 0 <= rates["dream_ends_per_1000"] <= 1000
    assert rates["real_rewards_per_1000"] >= 0 and rates["real_ends_per_1000"] >= 0
    assert set(on_disk["reward_model"]) == {"reward", "end"}
    one = on_disk["one_step"]
    episodes = ensure_heldout(cfg, "pong")
    assert one["transitions"] == sum(len(e.frames) - tiny_bundle.dynamics_config.context_frames for e in episodes)
    assert 0.0 <= one["broken_where_real_is_not"] <= 1.0 and "blank" in one["failed_where_real_passes"]
    for name in ("drift.png", "long_run.png", "real_vs_dream.gif", "curves.npz"):
        assert (out / name).stat().st_size > 0
    assert all(0 <= b["step"] < 4 and b["failed"] for b in on_disk["long_run"]["breakdowns"])
    assert (out / "breakdowns.png").exists() == bool(on_disk["long_run"]["breakdowns"])
    per_dream = on_disk["long_run"]["broken_beyond_real_per_dream"]
    assert len(per_dream) == cfg.long_run_dreams and all(0 <= n <= 4 for n in per_dream)
    assert sum(per_dream) == round(dream["broken_beyond_real"] * 4 * cfg.long_run_dreams)


def test_evaluate_runs_only_the_parts_asked_for(tiny_bundle, pong_dataset, tmp_path):
    """``parts=[long_run]`` (free play on other dreams, without the rest): the report holds
    the long run and nothing the other parts write, and no drift plot, curves or video."""
    tiny_bundle.save(tmp_path / "bundle")
    out = tmp_path / "eval"
    cfg = EvalConfig(checkpoint=str(tmp_path / "bundle"), heldout=str(pong_dataset), out=str(out), long_run_steps=3,
                     long_run_dreams=2, seed=1, parts=["long_run"], progress=False)
    report = evaluate(cfg)
    measured = {"tokenizer", "teacher_forced", "one_step", "controllability", "paddle_control", "latent_actions",
                "reward_model", "long_run"}
    assert measured & set(report) == {"long_run"}
    assert report["long_run"]["dreams"] == 2 and len(report["long_run"]["broken_beyond_real_per_dream"]) == 2
    assert set(report["files"]) <= {"long_run_plot", "breakdowns"} and (out / "long_run.png").exists()
    for name in ("drift.png", "curves.npz", "real_vs_dream.gif"):
        assert not (out / name).exists()


def test_the_shipped_games_are_evaluated_on_the_shipped_held_out_sets(tmp_path, monkeypatch):
    """Pong and Breakout default to the sets in the package, loaded without recording; another
    game, or an explicit ``heldout``, is used as named."""
    from training.evaluate import SHIPPED_HELDOUT

    monkeypatch.chdir(tmp_path)              # nothing under data/ here: loading must not record
    for game, transitions in (("pong", 4699), ("breakout", 1906)):
        assert heldout_path(EvalConfig(), game) == SHIPPED_HELDOUT / game
        episodes = ensure_heldout(EvalConfig(), game)
        assert len(episodes) == 6 and sum(len(e.actions) for e in episodes) == transitions
    assert not (tmp_path / "data").exists()
    assert str(heldout_path(EvalConfig(), "freeway")) == "data/freeway-eval"
    assert str(heldout_path(EvalConfig(heldout="mine"), "pong")) == "mine"


def test_eval_config_rejects_bad_values():
    with pytest.raises(ValueError, match="windows"):
        EvalConfig(windows=0)
    with pytest.raises(ValueError, match="'tensorrt'"):
        EvalConfig(backend="tensorrt")
    with pytest.raises(ValueError, match="horizons"):
        EvalConfig(horizons=(0, 4))
    with pytest.raises(ValueError, match="'long_runs'"):
        EvalConfig(parts=["long_runs"])
    with pytest.raises(ValueError, match="parts"):
        EvalConfig(parts=[])
    import yaml

    conf = yaml.safe_load((Path(__file__).resolve().parents[1] / "training/conf/evaluate.yaml").read_text())
    assert tuple(conf["parts"]) == PARTS == EvalConfig().parts       # the command's default: every part


def test_latent_action_quality_scores_codes_against_effective_actions(pong_dataset, monkeypatch):
    """Codes that name Pong's effective actions exactly score 100%; codes that ignore the
    action score the majority baseline; the confusion matrix counts every transition."""
    from types import SimpleNamespace

    import worldmodel.latent_actions as la
    from envs.games import get_game
    from recorders.dataset import EpisodeDataset
    from training.evaluate import latent_action_quality
    from worldmodel.config import LAMConfig

    ds = EpisodeDataset(pong_dataset)
    episodes = [ds[i] for i in range(len(ds))]
    spec = get_game("pong")
    names, group_of = spec.effective_action_groups()
    assert names == ["stay", "up", "down"] and group_of.tolist() == [0, 0, 1, 2, 1, 2]
    model = SimpleNamespace(lam=object(), game="pong", game_spec=spec, lam_config=LAMConfig(fsq_levels=(3, 3)))
    by_frames = {id(e.frames): e for e in episodes}

    monkeypatch.setattr(la, "infer_latent_actions", lambda m, f: 4 + group_of[by_frames[id(f)].actions])
    exact = latent_action_quality(model, episodes, labelled_steps=20)
    assert exact["accuracy"] == 1.0 and exact["unused_codes"] == 9 - len(set(group_of[np.concatenate(
        [e.actions for e in episodes])]))
    assert np.asarray(exact["confusion"]).sum() == sum(len(e.actions) for e in episodes)

    monkeypatch.setattr(la, "infer_latent_actions", lambda m, f: np.zeros(len(f) - 1, np.int64))
    blind = latent_action_quality(model, episodes, labelled_steps=20)
    assert blind["accuracy"] == pytest.approx(blind["majority_baseline"]) and blind["perplexity"] == 1.0
    with pytest.raises(ValueError, match="no latent-action model"):
        latent_action_quality(SimpleNamespace(lam=None, game="pong"), episodes)


def test_a_black_background_game_is_not_broken_for_being_black():
    """Breakout's real frames are mostly black: the saturation limit comes from them. (Bricks
    alone, no walls or paddle: the game is named "other" so that only the colour checks apply.)"""
    rng = np.random.default_rng(0)
    real = np.zeros((4, 64, 64, 3), np.uint8)
    real[:, 10:20] = rng.integers(60, 200, size=(4, 10, 64, 3))        # bricks on 84% black
    limit = saturated_limit_of(real)
    assert 0.89 < limit < 0.9
    assert broken_frames(real, "other").all()                       # the default limit: all "saturated"
    assert not broken_frames(real, "other", saturated_limit=limit).any()
    black = np.zeros((1, 64, 64, 3), np.uint8)
    black[0, 0, 0] = 200                                                # not blank, but 99.98% black
    assert broken_frames(black, "other", saturated_limit=limit).all()


def test_breakout_frames_missing_a_part_are_broken():
    from envs.readout import BREAKOUT_GREY, BREAKOUT_RED
    from envs.wrappers import area_resize

    f = np.zeros((210, 160, 3), np.uint8)
    f[17:32] = f[32:189, :8] = f[32:189, 152:] = BREAKOUT_GREY.astype(np.uint8)
    f[189:193, 70:86] = BREAKOUT_RED.astype(np.uint8)
    real = area_resize(f, 64, 64)[None]
    limit = saturated_limit_of(real)
    assert not broken_frames(real, "breakout", saturated_limit=limit).any()
    no_paddle, two_paddles = real.copy(), real.copy()
    no_paddle[0, 56:60, 4:60] = 0
    two_paddles[0, 57:59, 10:16] = BREAKOUT_RED.astype(np.uint8)
    assert broken_frames(np.concatenate([no_paddle, two_paddles]), "breakout", saturated_limit=limit).all()
    assert not broken_frames(no_paddle, "other", saturated_limit=limit).any()
