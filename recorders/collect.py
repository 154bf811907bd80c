"""Vectorized episode collection from real games into the dataset format."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait

import gymnasium as gym
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from envs.games import get_game
from recorders.dataset import DatasetWriter, Episode, encode_episode
from recorders.policies import (SCRIPTED, CallablePolicy, KeyboardPolicy, MixedPolicy, Policy, RandomRepeatPolicy,
                                ScriptedPongPolicy)


@dataclass
class RecordConfig:
    """What to record and how.

    Attributes:
        game: game name (``pong``, ``breakout``, ``cartpole``).
        out: dataset directory (created, or appended to).
        episodes: episodes the dataset holds when the recording is done. Episodes already in
            ``out`` count, so rerunning a killed (or finished) command records only what is
            missing; with ``append`` this many new episodes are recorded on top instead.
        append: record ``episodes`` new episodes whatever ``out`` already holds.
        max_steps: cut each episode after this many steps (it is written as truncated).
        num_envs: sub-environments in all, shared out among the workers.
        vector: ``"async"`` (one process per env) or ``"sync"``; with one worker only (each of
            several workers steps its envs in its own process, synchronously).
        workers: recording processes, each with its share of the envs and its own policy,
            whose finished episodes this process writes; ``0``: one per CPU core this process
            may use. At most ``num_envs`` and at most one per episode to record;
            ``policy=human`` and a policy passed to :func:`record` record in this process.
        policy: ``random``, ``scripted`` (Pong and Breakout), ``mixed`` (random and scripted
            for Pong, random for the others) or ``human`` (keyboard; forces one env).
        max_repeat: longest hold of the random policy, in steps.
        frame_skip: emulator frames per step (ALE; ``None``: the game's default).
        sticky_actions: ALE's repeat-action probability.
        size: frame height and width.
        seed: seeds the envs (env ``i`` gets ``seed + i``) and the policy. When ``out``
            already holds episodes, the recording continues from a seed derived from
            ``(seed, episodes already there)``, so a resumed run does not replay the same games.
        compress_level: zlib level of the episode files, 1 (fastest) to 9; 0: uncompressed.
    """

    game: str = "pong"
    out: str = "data/pong"
    episodes: int = 10
    append: bool = False
    max_steps: int = 2000
    num_envs: int = 2
    vector: str = "async"
    workers: int = 0
    policy: str = "mixed"
    max_repeat: int = 8
    frame_skip: int | None = None
    sticky_actions: float = 0.0
    size: int = 64
    seed: int = 0
    compress_level: int = 1

    POLICIES = ("random", "scripted", "mixed", "human")

    def __post_init__(self):
        get_game(self.game)
        for name in ("episodes", "max_steps", "num_envs", "max_repeat", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be a non-negative integer (0: one per CPU core), got {self.workers!r}")
        if self.vector not in ("async", "sync"):
            raise ValueError(f"vector must be 'async' or 'sync', got {self.vector!r}")
        if self.policy not in self.POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {self.POLICIES}")
        if self.frame_skip is not None and (not isinstance(self.frame_skip, int) or self.frame_skip < 1):
            raise ValueError(f"frame_skip must be a positive integer or null, got {self.frame_skip!r}")
        if not isinstance(self.sticky_actions, (int, float)) or not 0.0 <= self.sticky_actions <= 1.0:
            raise ValueError(f"sticky_actions must be in [0, 1], got {self.sticky_actions!r}")
        if isinstance(self.compress_level, bool) or self.compress_level not in range(10):
            raise ValueError(f"compress_level must be in 0..9 (0: uncompressed), got {self.compress_level!r}")


def make_policy(cfg: RecordConfig, num_envs: int, *, seed: int | None = None) -> Policy:
    """Build the policy named by ``cfg.policy``, seeded with ``seed`` (``None``: ``cfg.seed``).

    Raises:
        ValueError: unknown policy name, or ``scripted`` for a game without a scripted player.
    """
    spec = get_game(cfg.game)
    seed = cfg.seed if seed is None else seed
    rand = RandomRepeatPolicy(num_envs, spec.num_actions, max_repeat=cfg.max_repeat, seed=seed)
    if cfg.policy == "random":
        return rand
    if cfg.policy == "scripted":
        if cfg.game not in SCRIPTED:
            raise ValueError(f"there is no scripted player for {cfg.game!r}; scripted games: {sorted(SCRIPTED)}")
        return SCRIPTED[cfg.game](num_envs, seed=seed)
    # "mixed" mixes in the scripted player for Pong only: the shipped Breakout checkpoint was
    # trained on the random play that "mixed" recorded for it, and its command must record the same.
    if cfg.policy == "mixed" and cfg.game != "pong":
        return rand
    if cfg.policy == "mixed":
        return MixedPolicy([rand, ScriptedPongPolicy(num_envs, seed=seed + 1)], num_envs=num_envs, seed=seed)
    if cfg.policy == "human":
        return KeyboardPolicy(spec)
    raise ValueError(f"unknown policy {cfg.policy!r}; choose random, scripted, mixed or human")


def _env_factory(cfg: RecordConfig):
    from envs.real import make

    def thunk():
        # One BLAS thread per worker: the frame resize is a small matrix product, and
        # several workers each spinning a full thread pool starve each other (5x slower).
        threadpool_limits(1, user_api="blas")
        return make(cfg.game, frame_skip=cfg.frame_skip, sticky_actions=cfg.sticky_actions, size=cfg.size,
                    max_episode_steps=cfg.max_steps)
    return thunk


def resumed_seed(seed: int, episodes_before: int) -> int:
    """The seed a recording starts from when its dataset already holds ``episodes_before`` episodes.

    ``seed`` itself for a new dataset; otherwise a 31-bit seed drawn from
    ``SeedSequence([seed, episodes_before])``, so that resuming replays no earlier game.
    """
    if episodes_before == 0:
        return seed
    return int(np.random.SeedSequence([seed, episodes_before]).generate_state(1)[0] >> 1)


def worker_count(cfg: RecordConfig, episodes: int) -> int:
    """Recording processes :func:`record` uses for ``episodes`` episodes (see ``RecordConfig.workers``)."""
    if cfg.policy == "human":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cfg.workers or cores, cfg.num_envs, episodes))


def record(cfg: RecordConfig, policy: Policy | None = None, *, progress: bool = True) -> DatasetWriter:
    """Play whole episodes until ``cfg.out`` holds ``cfg.episodes`` of them (or, with
    ``cfg.append``, ``cfg.episodes`` more), writing each as soon as it ends.

    Each episode file is written atomically, so a killed recorder loses only the episodes in
    flight, and running the same command again finishes the job. Recording into an existing
    dataset of the same game appends.

    With several workers (``cfg.workers``; one per CPU core by default), each worker process
    plays its share of the episodes with its share of the envs and its own policy (env ``i``
    of all is seeded ``seed + i`` as in one process; worker ``w``'s policy is seeded by
    :func:`worker_policy_seed`) and sends each finished episode,
    compressed, to this process, which alone writes the dataset. Which episodes are recorded
    does not depend on timing; their order in the dataset does. With one worker, the file of
    an episode that just ended is written while the envs play the next step (Gymnasium's
    ``step_async``), so disk and compression time overlap with emulation.

    The workers are started with ``multiprocessing``'s spawn method, so a script that calls
    this function must do so under ``if __name__ == "__main__":``.

    Args:
        cfg: what to record.
        policy: a policy object or a callable ``policy(obs (H, W, 3)) -> action``, played in
            this process; ``None`` builds the one ``cfg.policy`` names.
        progress: show a progress bar with frames per second.

    Returns:
        The writer, whose ``frames_written`` and ``episodes_written`` count what was written
        and ``episodes_before`` what was there before.

    Raises:
        DatasetError: ``cfg.out`` holds a dataset of another game, frame size or action set.
        RecordingError: a worker process failed or died (the episodes written so far stay).
        KeyboardInterrupt: the human player quit (Esc), or Ctrl-C; finished episodes are written first.
    """
    spec = get_game(cfg.game)
    frame_skip = spec.frame_skip if cfg.frame_skip is None else cfg.frame_skip
    writer = DatasetWriter(cfg.out, dict(
        game=spec.name, frame_size=[cfg.size, cfg.size], frame_skip=frame_skip, sticky_actions=cfg.sticky_actions,
        action_meanings=list(spec.action_meanings), fps=spec.fps, env_id=spec.env_id),
        compress_level=cfg.compress_level)
    target = cfg.episodes if cfg.append else max(0, cfg.episodes - writer.episodes_before)
    if target == 0:
        return writer
    seed = resumed_seed(cfg.seed, writer.episodes_before)
    workers = 1 if policy is not None else worker_count(cfg, target)
    bar = tqdm(total=target, unit="ep", disable=not progress, desc=f"recording {spec.name}")
    start = time.perf_counter()

    def written() -> None:
        bar.update(1)
        bar.set_postfix(fps=f"{writer.frames_written / (time.perf_counter() - start):.0f}")

    try:
        if workers == 1:
            num_envs = 1 if cfg.policy == "human" else cfg.num_envs
            if policy is None:
                policy = make_policy(cfg, num_envs, seed=seed)
            elif not hasattr(policy, "episode_start"):
                policy = CallablePolicy(policy)
            _play(cfg, policy, num_envs, cfg.vector, target, seed,
                  lambda episode: (writer.write(episode), written()))
        else:
            _play_in_workers(cfg, workers, target, seed, writer, written)
    finally:
        bar.close()
    return writer


class RecordingError(RuntimeError):
    """A recording worker process failed or died."""


def _play(cfg: RecordConfig, policy: Policy, num_envs: int, vector: str, episodes: int, seed: int,
          sink: Callable[[Episode], object], *, first_env: int = 0) -> None:
    """Play until ``episodes`` episodes have ended, handing each to ``sink`` (in the order they end).

    The envs are envs ``first_env ...`` of the recording; env ``i`` is seeded with ``seed + i``.
    An episode cut short by an exception is lost; the ones that ended before are handed over first.
    """
    vec_cls = gym.vector.AsyncVectorEnv if (vector == "async" and num_envs > 1) else gym.vector.SyncVectorEnv
    envs = vec_cls([_env_factory(cfg)] * num_envs, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    overlap = hasattr(envs, "step_async")
    blas = threadpool_limits(1, user_api="blas")
    finished: list[Episode] = []          # ended, not yet handed over
    handed = 0

    def flush() -> None:
        nonlocal handed
        while finished:
            sink(finished.pop(0))
            handed += 1

    try:
        env_seeds = [seed + first_env + i for i in range(num_envs)]
        obs, _ = envs.reset(seed=env_seeds)
        buffers = [_Buffer(obs[i]) for i in range(num_envs)]
        for i in range(num_envs):
            policy.episode_start(i)
        done = np.zeros(num_envs, bool)
        while handed + len(finished) < episodes:
            actions = policy(obs)
            if overlap:
                envs.step_async(actions)
                flush()                   # compress and write while the env workers step
                obs, rewards, term, trunc, _ = envs.step_wait()
            else:
                flush()
                obs, rewards, term, trunc, _ = envs.step(actions)
            for i in range(num_envs):
                if done[i]:  # NEXT_STEP autoreset: this step only reset env i
                    buffers[i] = _Buffer(obs[i])
                    policy.episode_start(i)
                    continue
                buffers[i].add(actions[i], rewards[i], term[i], trunc[i], obs[i])
                if (term[i] or trunc[i]) and handed + len(finished) < episodes:
                    info = dict(policy=getattr(policy, "current_name", lambda _: policy.name)(i),
                                vector_seed=env_seeds[i], env_index=first_env + i, recorded_at=time.time())
                    finished.append(buffers[i].episode(info))
            done = term | trunc
        flush()
    except KeyboardInterrupt:
        flush()
        raise
    finally:
        blas.restore_original_limits()
        envs.close()


def _play_in_workers(cfg: RecordConfig, workers: int, episodes: int, seed: int, writer: DatasetWriter,
                     written: Callable[[], None]) -> None:
    """Record ``episodes`` episodes in ``workers`` processes; this process writes them as they come.

    Each worker has its own pipe. A worker that ends its pipe without saying it is done (it
    raised, was killed, or exited early) stops the recording with a :class:`RecordingError`.
    """
    ctx = mp.get_context("spawn")         # no forked copies of this process's threads or torch state
    shares, envs = _split(episodes, workers), _split(cfg.num_envs, workers)
    first_env = np.cumsum([0] + envs[:-1]).tolist()
    pending: dict = {}                    # read end -> its worker, for the workers not done yet
    procs = []
    # Workers start with SIGINT ignored (inherited), so a Ctrl-C during their start-up reaches
    # only this process, which then stops them.
    main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        for w in range(workers):
            reader, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(cfg, w, shares[w], envs[w], first_env[w], seed, sender),
                               daemon=True, name=f"recorder-{w}")
            proc.start()
            sender.close()                # the worker holds the only write end: its exit ends the pipe
            pending[reader] = proc
            procs.append(proc)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, old_handler)
    try:
        while pending:
            for reader in wait(list(pending)):
                proc = pending[reader]
                try:
                    kind, payload = reader.recv()
                except EOFError:
                    proc.join(timeout=10)
                    raise RecordingError(f"recording worker {proc.name} stopped before its episodes were done "
                                         f"(exit code {proc.exitcode}); the {writer.episodes_written} episodes "
                                         "written so far are kept") from None
                if kind == "episode":
                    data, frames = payload
                    writer.write_encoded(data, frames=frames)
                    written()
                elif kind == "done":
                    del pending[reader]
                    reader.close()
                else:
                    raise RecordingError(f"recording {payload}; the {writer.episodes_written} episodes written so "
                                         "far are kept")
    finally:                              # done, failed or interrupted: the episodes in flight are lost
        for reader, proc in pending.items():
            reader.close()
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=10)


def _split(total: int, parts: int) -> list[int]:
    """``total`` shared out as evenly as possible, the first parts taking one more."""
    return [total // parts + (w < total % parts) for w in range(parts)]


def worker_policy_seed(seed: int, worker: int) -> int:
    """The seed of worker ``worker``'s policy: drawn from ``SeedSequence([seed, worker])``."""
    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0] >> 1)


def _worker(cfg: RecordConfig, index: int, episodes: int, num_envs: int, first_env: int, seed: int, sender) -> None:
    """A recording worker: plays ``episodes`` episodes on envs ``first_env ...`` of the recording
    (env ``i`` seeded ``seed + i``), sending each one encoded to the parent through ``sender``."""
    parent = os.getppid()
    level = max(cfg.compress_level, 1)

    def send(episode: Episode) -> None:
        if os.getppid() != parent:        # the recorder was killed: stop instead of playing on
            os._exit(0)
        data = encode_episode(episode, compress=cfg.compress_level > 0, level=level,
                              where=f"{cfg.out}: an episode of recording worker {index}")
        sender.send(("episode", (data, len(episode.frames))))

    try:
        policy = make_policy(cfg, num_envs, seed=worker_policy_seed(seed, index))
        _play(cfg, policy, num_envs, "sync", episodes, seed, send, first_env=first_env)
        sender.send(("done", index))
    except (BrokenPipeError, EOFError):   # the parent is gone
        os._exit(0)
    except BaseException as e:            # noqa: BLE001 - reported to the parent, which raises it
        sender.send(("error", f"worker recorder-{index} failed: {type(e).__name__}: {e}"))
    finally:
        sender.close()


class _Buffer:
    """One episode in flight."""

    def __init__(self, first_obs: np.ndarray):
        self.frames = [first_obs]
        self.actions, self.rewards, self.terminated, self.truncated = [], [], [], []

    def add(self, action, reward, terminated, truncated, obs) -> None:
        self.actions.append(action)
        self.rewards.append(reward)
        self.terminated.append(terminated)
        self.truncated.append(truncated)
        self.frames.append(obs)

    def episode(self, info: dict) -> Episode:
        return Episode(frames=np.stack(self.frames).astype(np.uint8),
                       actions=np.asarray(self.actions, np.int64),
                       rewards=np.asarray(self.rewards, np.float32),
                       terminated=np.asarray(self.terminated, bool),
                       truncated=np.asarray(self.truncated, bool), info=info)
