"""Agents in the dream: the real game and the dream through the same Gymnasium contract,
the batched ``DreamVectorEnv`` (next-step autoreset, seeding, torch observations), the
registry, Gymnasium's wrappers, and Stable-Baselines3's PPO training in the dream.

Everything runs on the tiny random-weight bundle (``tiny_bundle``) and the Simulator's torch
backend; the shipped ``pong`` checkpoint is loaded once, to check its registration.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import envs
from envs.dream_env import DreamEnv
from envs.dream_vector_env import DreamVectorEnv

BACKEND = "torch"   # no per-checkpoint export step; the backends agree within a tolerance
PONG_OBS = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
PONG_ACTIONS = gym.spaces.Discrete(6)


# -- makers --------------------------------------------------------------------------------------
def make_real() -> gym.Env:
    return envs.make("pong")


@pytest.fixture()
def make_dream(tiny_bundle):
    def make(**kwargs) -> DreamEnv:
        return DreamEnv(tiny_bundle, backend=BACKEND, **kwargs)
    return make


@pytest.fixture()
def make_vec(tiny_bundle):
    def make(num_envs: int = 3, **kwargs) -> DreamVectorEnv:
        return DreamVectorEnv(tiny_bundle, num_envs=num_envs, backend=BACKEND, **kwargs)
    return make


@pytest.fixture(params=["real", "dream"])
def any_env(request, tiny_bundle):
    """The real game and the dream, for the contract both must keep."""
    env = make_real() if request.param == "real" else DreamEnv(tiny_bundle, backend=BACKEND)
    yield env
    env.close()


@pytest.fixture(params=["real", "dream"])
def any_vec_env(request, tiny_bundle):
    """A Gymnasium vector env of the real game, and the dream's own vector env (3 sub-envs)."""
    if request.param == "real":
        env = gym.vector.SyncVectorEnv([make_real] * 3)
    else:
        env = DreamVectorEnv(tiny_bundle, num_envs=3, backend=BACKEND)
    yield env
    env.close()


def force_terminations(env: DreamVectorEnv, schedule: dict[int, list[int]]) -> None:
    """Make the Simulator's end model report ``terminated`` for sub-envs ``schedule[k]`` on its
    k-th step (counted from 1), and never otherwise: the env's autoreset logic is tested
    against a known signal instead of a random model's guesses."""
    step = env.sim.step
    calls = [0]

    def forced(actions):
        frames, rewards, _ = step(actions)
        calls[0] += 1
        terminated = np.zeros(env.num_envs, bool)
        terminated[schedule.get(calls[0], [])] = True
        return frames, rewards, terminated

    env.sim.step = forced


# -- the contract: real game and dream, single env ------------------------------------------------
def test_contract_check_env(any_env):
    # The close check remakes the env from env.spec, which envs.make's wrappers cannot give
    # (AreaResizeObservation does not record its constructor arguments).
    check_env(any_env, skip_render_check=True, skip_close_check=True)


def test_contract_spaces_are_the_real_games(any_env):
    assert any_env.observation_space == PONG_OBS
    assert any_env.action_space == PONG_ACTIONS
    real = make_real()
    assert any_env.observation_space == real.observation_space and any_env.action_space == real.action_space


def test_contract_reset_and_step_shapes(any_env):
    obs, info = any_env.reset(seed=1)
    assert isinstance(info, dict)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and any_env.observation_space.contains(obs)
    for action in range(any_env.action_space.n):
        obs, reward, terminated, truncated, info = any_env.step(action)
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and any_env.observation_space.contains(obs)
        assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
        assert isinstance(info, dict)


def test_contract_same_seed_same_start(any_env):
    first, _ = any_env.reset(seed=11)
    any_env.step(2)
    again, _ = any_env.reset(seed=11)
    np.testing.assert_array_equal(first, again)


def test_contract_one_policy_runs_on_both(any_env):
    """A policy written against the real game's spaces runs unchanged."""
    real = make_real()
    rng = np.random.default_rng(0)

    def policy(obs: np.ndarray) -> int:
        assert real.observation_space.contains(obs)
        return int(rng.integers(real.action_space.n))

    obs, _ = any_env.reset(seed=0)
    for _ in range(4):
        obs, *_ = any_env.step(policy(obs))


def test_dream_start_is_a_real_start_frame(make_dream, tiny_bundle):
    env = make_dream()
    obs, info = env.reset(seed=4)
    np.testing.assert_array_equal(obs, tiny_bundle.start_frames[info["start"], -1].numpy())


# -- the contract: vector envs ---------------------------------------------------------------------
def test_vector_contract_spaces_and_shapes(any_vec_env):
    env = any_vec_env
    assert env.num_envs == 3
    assert env.single_observation_space == PONG_OBS and env.single_action_space == PONG_ACTIONS
    assert env.observation_space == gym.vector.utils.batch_space(PONG_OBS, 3)
    assert env.action_space == gym.spaces.MultiDiscrete([6, 6, 6])
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, infos = env.reset(seed=0)
    assert obs.shape == (3, 64, 64, 3) and obs.dtype == np.uint8 and isinstance(infos, dict)
    obs, rewards, terminations, truncations, infos = env.step(np.array([0, 2, 3]))
    assert obs.shape == (3, 64, 64, 3) and obs.dtype == np.uint8
    assert rewards.shape == (3,) and rewards.dtype == np.float64
    assert terminations.shape == truncations.shape == (3,)
    assert terminations.dtype == truncations.dtype == np.bool_
    assert isinstance(infos, dict)


def test_vector_contract_same_seed_same_starts(any_vec_env):
    a, _ = any_vec_env.reset(seed=21)
    any_vec_env.step(np.array([1, 2, 3]))
    b, _ = any_vec_env.reset(seed=21)
    np.testing.assert_array_equal(a, b)


# -- DreamVectorEnv -------------------------------------------------------------------------------
def test_vector_starts_match_dream_env_seeds(make_vec, make_dream):
    """Sub-env i seeded s + i starts where DreamEnv seeded s + i starts, episode after episode."""
    vec, single = make_vec(3, max_episode_steps=1), make_dream()
    _, infos = vec.reset(seed=30)
    expected = [[single.reset(seed=30 + i)[1]["start"] for i in range(3)]]
    assert infos["start"].tolist() == expected[0]
    vec.step(np.zeros(3, np.int64))                               # every sub-env truncates
    _, _, _, _, infos = vec.step(np.zeros(3, np.int64))           # ... and starts again
    singles = [make_dream() for _ in range(3)]
    for i, env in enumerate(singles):
        env.reset(seed=30 + i)
    assert infos["start"].tolist() == [env.reset()[1]["start"] for env in singles]


def test_one_sub_env_dreams_what_dream_env_dreams(make_vec, make_dream):
    vec, single = make_vec(1), make_dream()
    ours = [vec.reset(seed=8)[0][0]]
    theirs = [single.reset(seed=8)[0]]
    for a in (2, 2, 3, 0, 1):
        ours.append(vec.step(np.array([a]))[0][0])
        theirs.append(single.step(a)[0])
    np.testing.assert_array_equal(np.stack(ours), np.stack(theirs))


def test_vector_same_seed_same_dreams_across_autoresets(make_vec):
    actions = np.random.default_rng(0).integers(0, 6, (8, 3))

    def roll():
        env = make_vec(3, max_episode_steps=3)
        out = [env.reset(seed=5)[0]]
        for a in actions:
            obs, rewards, terminations, truncations, _ = env.step(a)
            out += [obs, rewards, terminations, truncations]
        return out

    for x, y in zip(roll(), roll()):
        np.testing.assert_array_equal(x, y)


def test_next_step_autoreset_after_termination(make_vec, tiny_bundle):
    env = make_vec(3)
    force_terminations(env, {2: [1]})
    env.reset(seed=0)
    acts = np.array([2, 3, 0])
    _, _, terminations, truncations, infos = env.step(acts)
    assert not terminations.any() and not truncations.any() and infos == {}
    before, _, terminations, _, _ = env.step(acts)
    assert terminations.tolist() == [False, True, False]
    obs, rewards, terminations, truncations, infos = env.step(acts)
    # Only sub-env 1 starts again: its first frame is a real start frame, reward 0, not ended.
    assert infos["_start"].tolist() == [False, True, False]
    np.testing.assert_array_equal(obs[1], tiny_bundle.start_frames[infos["start"][1], -1].numpy())
    assert rewards[1] == 0.0 and not terminations[1] and not truncations[1]
    assert env._elapsed.tolist() == [3, 0, 3]
    obs, rewards, terminations, truncations, infos = env.step(acts)
    assert infos == {} and not terminations.any() and not truncations.any()
    assert env._elapsed.tolist() == [4, 1, 4]


def test_truncation_by_max_episode_steps(make_vec):
    env = make_vec(2, max_episode_steps=2)
    force_terminations(env, {})
    env.reset(seed=0)
    zeros = np.zeros(2, np.int64)
    truncs = [env.step(zeros)[3].tolist() for _ in range(5)]
    # steps 1, 2 | autoreset | steps 1, 2
    assert truncs == [[False, False], [True, True], [False, False], [False, False], [True, True]]


def test_reset_mask_resets_only_those(make_vec):
    env = make_vec(3)
    env.reset(seed=0)
    obs, *_ = env.step(np.array([2, 2, 2]))
    new, infos = env.reset(options={"reset_mask": np.array([False, True, False])})
    np.testing.assert_array_equal(new[[0, 2]], obs[[0, 2]])
    assert infos["_start"].tolist() == [False, True, False]
    env.step(np.array([0, 0, 0]))   # the others go on from where they were
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.array([1, 0, 0])})


def test_start_option_picks_windows(make_vec, tiny_bundle):
    env = make_vec(2)
    obs, infos = env.reset(seed=0, options={"start": [1, 0]})
    assert infos["start"].tolist() == [1, 0]
    np.testing.assert_array_equal(obs, tiny_bundle.start_frames[[1, 0], -1].numpy())
    with pytest.raises(ValueError, match="start window 5"):
        env.reset(options={"start": 5})


def test_torch_observations(make_vec):
    as_numpy, as_torch = make_vec(2), make_vec(2, torch_observations=True)
    a, _ = as_numpy.reset(seed=3)
    t, _ = as_torch.reset(seed=3)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.shape == (2, 64, 64, 3)
    assert t.device == next(as_torch.model.dynamics.parameters()).device
    np.testing.assert_array_equal(t.cpu().numpy(), a)
    a, *_ = as_numpy.step(np.array([2, 3]))
    t, rewards, *_ = as_torch.step(torch.tensor([2, 3]))
    np.testing.assert_array_equal(t.cpu().numpy(), a)
    assert isinstance(rewards, np.ndarray)


def test_render_returns_every_sub_envs_frame(make_vec):
    env = make_vec(2, render_mode="rgb_array")
    assert env.render() is None
    obs, _ = env.reset(seed=0)
    frames = env.render()
    assert isinstance(frames, tuple) and len(frames) == 2
    np.testing.assert_array_equal(np.stack(frames), obs)
    quiet = make_vec(2)
    quiet.reset(seed=0)
    assert quiet.render() is None


def test_bad_input_names_the_value(make_vec):
    env = make_vec(2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0, 0]))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action 7 of sub-env 1"):
        env.step(np.array([0, 7]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step(np.array([0, 0, 0]))
    with pytest.raises(ValueError, match="integers"):
        env.step(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="num_envs"):
        make_vec(0)
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_vec(2, max_episode_steps=0)
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.array([0, 0]))


# -- the registry ---------------------------------------------------------------------------------
@pytest.fixture()
def tiny_id(tiny_bundle, tmp_path):
    """``worldmodel/DreamTinyAgents-v0``: the tiny bundle registered as the shipped dreams are."""
    path = tiny_bundle.save(tmp_path / "bundle")
    env_id = "worldmodel/DreamTinyAgents-v0"
    gym.register(id=env_id, entry_point="envs.dream_env:DreamEnv",
                 vector_entry_point="envs.dream_vector_env:DreamVectorEnv",
                 kwargs={"checkpoint": str(path), "backend": BACKEND}, max_episode_steps=4)
    yield env_id
    gym.registry.pop(env_id, None)


def test_make_and_make_vec_through_the_registry(tiny_id):
    env = gym.make(tiny_id)
    assert isinstance(env.unwrapped, DreamEnv)
    env.reset(seed=0)
    assert [env.step(0)[3] for _ in range(4)] == [False, False, False, True]

    vec = gym.make_vec(tiny_id, num_envs=3)                       # picks the vector entry point
    assert isinstance(vec, DreamVectorEnv) and vec.num_envs == 3 and vec.max_episode_steps == 4
    assert vec.spec.id == tiny_id
    vec.reset(seed=0)
    assert [vec.step(np.zeros(3, np.int64))[3].all() for _ in range(4)] == [False, False, False, True]

    explicit = gym.make_vec(tiny_id, num_envs=2, vectorization_mode="vector_entry_point", max_episode_steps=9)
    assert isinstance(explicit, DreamVectorEnv) and explicit.max_episode_steps == 9

    sync = gym.make_vec(tiny_id, num_envs=2, vectorization_mode="sync")
    assert isinstance(sync, gym.vector.SyncVectorEnv)
    assert sync.single_observation_space == vec.single_observation_space
    a, _ = sync.reset(seed=6)
    b, _ = gym.make_vec(tiny_id, num_envs=2).reset(seed=6)
    np.testing.assert_array_equal(a, b)                            # same seeds, same starts


def test_shipped_pong_registers_both_entry_points():
    env_id = envs.dream_id("pong")
    spec = gym.spec(env_id)
    assert spec.entry_point == "envs.dream_env:DreamEnv"
    assert spec.vector_entry_point == "envs.dream_vector_env:DreamVectorEnv"
    vec = gym.make_vec(env_id, num_envs=2, backend=BACKEND)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 64, 64, 3) and vec.single_observation_space == make_real().observation_space
    vec.step(np.array([2, 3]))
    vec.close()


# -- Gymnasium wrappers ---------------------------------------------------------------------------
def test_frame_stack_observation(make_dream):
    env = gym.wrappers.FrameStackObservation(make_dream(), stack_size=4)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 64, 64, 3) and obs.dtype == np.uint8
    obs, *_ = env.step(2)
    assert env.observation_space.contains(obs)


def test_render_collection(make_dream):
    env = gym.wrappers.RenderCollection(make_dream(render_mode="rgb_array"))
    env.reset(seed=0)
    for _ in range(3):
        env.step(0)
    frames = env.render()
    assert len(frames) == 4 and all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)


def test_record_video(make_dream, make_vec, tmp_path):
    pytest.importorskip("moviepy", reason="gymnasium's RecordVideo writes with moviepy (gymnasium[other])")
    env = gym.wrappers.RecordVideo(make_dream(render_mode="rgb_array"), str(tmp_path / "single"),
                                   episode_trigger=lambda _: True)
    env.reset(seed=0)
    for _ in range(5):
        env.step(0)
    env.close()
    vec = gym.wrappers.vector.RecordVideo(make_vec(2, render_mode="rgb_array", max_episode_steps=3),
                                          str(tmp_path / "vector"), episode_trigger=lambda _: True)
    vec.reset(seed=0)
    for _ in range(5):
        vec.step(np.zeros(2, np.int64))
    vec.close()
    assert list((tmp_path / "single").glob("*.mp4")) and list((tmp_path / "vector").glob("*.mp4"))


def test_vector_record_episode_statistics(make_vec):
    env = make_vec(2, max_episode_steps=3)
    force_terminations(env, {2: [0]})
    env = gym.wrappers.vector.RecordEpisodeStatistics(env)
    env.reset(seed=0)
    ends = []
    for _ in range(7):
        _, _, _, _, infos = env.step(np.zeros(2, np.int64))
        if "episode" in infos:
            ends.append((infos["_episode"].tolist(), infos["episode"]["l"].tolist()))
    # sub-env 0: terminates at step 2, restarts at 3, truncates at 6; sub-env 1 truncates at 3, 7
    assert ends[0] == ([True, False], [2, 0])
    assert [mask for mask, _ in ends] == [[True, False], [False, True], [True, False], [False, True]]
    assert [lengths[mask.index(True)] for mask, lengths in ends] == [2, 3, 3, 3]


# -- Stable-Baselines3 ----------------------------------------------------------------------------
def sb3_vec_env(env: gym.vector.VectorEnv):
    """Stable-Baselines3's ``VecEnv`` face of a Gymnasium 1.x ``VectorEnv``.

    SB3 (2.x) takes a ``gymnasium.Env`` or its own ``VecEnv`` but not a Gymnasium
    ``VectorEnv``, and its ``VecEnv`` resets a finished sub-env within the same step: the
    step that ends an episode returns the next episode's first observation, with the last
    one in ``infos[i]["terminal_observation"]``. This adapter gives that on top of a
    next-step-autoreset vector env that takes ``options={"reset_mask": ...}`` (as
    ``DreamVectorEnv`` and ``SyncVectorEnv`` do): after a step with finished sub-envs it
    resets just those, so the vector env never autoresets on its own.

    Args:
        env: a Gymnasium ``VectorEnv`` with ``Discrete`` actions, numpy observations and
            ``metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP``.

    Returns:
        A ``stable_baselines3.common.vec_env.VecEnv``: observations ``(B, *obs_shape)``,
        rewards ``(B,) float32``, dones ``(B,) bool``, infos a list of B dicts with
        ``"TimeLimit.truncated"`` (and ``"terminal_observation"`` where done).

    Raises:
        ValueError: the env's autoreset mode is not next-step.
    """
    from stable_baselines3.common.vec_env import VecEnv

    if env.metadata.get("autoreset_mode") != AutoresetMode.NEXT_STEP:
        raise ValueError(f"needs a next-step autoreset vector env, got {env.metadata.get('autoreset_mode')!r}")

    class GymnasiumVectorEnvAdapter(VecEnv):
        def __init__(self):
            self.venv = env
            self._actions: np.ndarray | None = None
            super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

        def reset(self):
            seeds = None if all(s is None for s in self._seeds) else self._seeds
            options = self._options[0] if any(self._options) else None
            obs, infos = self.venv.reset(seed=seeds, options=options)
            self.reset_infos = [{} for _ in range(self.num_envs)]
            self._reset_seeds()
            self._reset_options()
            return obs

        def step_async(self, actions):
            self._actions = np.asarray(actions, np.int64).reshape(self.num_envs)

        def step_wait(self):
            obs, rewards, terminations, truncations, _ = self.venv.step(self._actions)
            dones = terminations | truncations
            infos: list[dict[str, Any]] = [{"TimeLimit.truncated": bool(truncations[i] and not terminations[i])}
                                           for i in range(self.num_envs)]
            if dones.any():
                for i in np.flatnonzero(dones):
                    infos[i]["terminal_observation"] = obs[i].copy()
                fresh, _ = self.venv.reset(options={"reset_mask": dones})
                obs[dones] = fresh[dones]
            return obs, rewards.astype(np.float32), dones, infos

        def close(self):
            self.venv.close()

        def get_attr(self, attr_name, indices=None):
            return [getattr(self.venv, attr_name)] * len(list(self._get_indices(indices)))

        def set_attr(self, attr_name, value, indices=None):
            setattr(self.venv, attr_name, value)

        def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
            result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
            return [result] * len(list(self._get_indices(indices)))

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * len(list(self._get_indices(indices)))

        def get_images(self):
            return list(self.venv.render() or [None] * self.num_envs)

    return GymnasiumVectorEnvAdapter()


def test_sb3_adapter_resets_in_the_same_step(make_vec, tiny_bundle):
    env = make_vec(2, max_episode_steps=2)
    force_terminations(env, {})
    venv = sb3_vec_env(env)
    venv.seed(3)
    obs = venv.reset()
    assert obs.shape == (2, 64, 64, 3)
    venv.step(np.array([0, 0]))
    obs, rewards, dones, infos = venv.step(np.array([0, 0]))
    assert dones.tolist() == [True, True] and rewards.dtype == np.float32
    assert all(info["TimeLimit.truncated"] and info["terminal_observation"].shape == (64, 64, 3) for info in infos)
    starts = tiny_bundle.start_frames[:, -1].numpy()
    assert all(any((o == s).all() for s in starts) for o in obs)   # already the next episode's first frames
    obs, rewards, dones, infos = venv.step(np.array([1, 2]))
    assert not dones.any()


def test_sb3_check_env_on_dream_env(make_dream):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    sb3_check_env(make_dream(), warn=True)


def train_ppo(tiny_bundle, total_timesteps: int):
    from stable_baselines3 import PPO

    torch.manual_seed(0)
    venv = sb3_vec_env(DreamVectorEnv(tiny_bundle, num_envs=4, max_episode_steps=32, backend=BACKEND))
    model = PPO("CnnPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"features_extractor_kwargs": {"features_dim": 64}})
    model.learn(total_timesteps=total_timesteps)
    return model


def test_sb3_ppo_trains_in_the_dream(tiny_bundle):
    """A few thousand PPO steps on the tiny dream (about 20 s on one busy core)."""
    model = train_ppo(tiny_bundle, total_timesteps=4096)
    assert model.num_timesteps >= 4096
    obs, _ = DreamEnv(tiny_bundle, backend=BACKEND).reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert PONG_ACTIONS.contains(int(action))


# -- the benchmark --------------------------------------------------------------------------------
def test_bench_prints_one_json_object(tiny_bundle, tmp_path, capsys):
    import json

    from envs.bench import main

    path = tiny_bundle.save(tmp_path / "bundle")
    assert main(["--checkpoint", str(path), "--num-envs", "1", "2", "--seconds", "0.05", "--backend", BACKEND]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["num_envs"] for row in report["configs"]] == [1, 2]
    assert all(row["dream_steps_per_s"] > 0 and row["real_steps_per_s"] > 0 for row in report["configs"])
