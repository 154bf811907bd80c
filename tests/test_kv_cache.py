"""The KV cache and the Simulator on top of it: cached == uncached, bounded memory,
reproducible sampling, subset resets, and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_tiny_bundle
from worldmodel import Simulator
from worldmodel.kv_cache import KVCache

ATOL = 1e-4


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "local_mixing"])
def dyn(request, tiny_bundle):
    """The tiny bundle's dynamics, and the same preset with :class:`LocalMixing` in its blocks
    (which must mix within a frame only, or the cached and full forwards differ)."""
    if not request.param:
        return tiny_bundle.dynamics
    frames, actions = tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy()
    return make_tiny_bundle(frames, actions, seed=3, local_mixing=True).dynamics


def _inputs(dyn, frames: int, *, seed: int = 0, batch: int = 2):
    cfg = dyn.cfg
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, frames, cfg.tokens_per_frame, cfg.token_dim, generator=g)
    levels = torch.rand(batch, frames, generator=g) * 0.5
    actions = torch.randint(0, cfg.num_actions, (batch, frames), generator=g)
    actions[:, 0] = -1
    return tokens, levels, actions


@pytest.mark.parametrize("k", [1, 2, 3])
def test_cached_forward_equals_full_forward(dyn, k):
    assert k + 1 <= dyn.cfg.context_frames
    tokens, levels, actions = _inputs(dyn, k + 1, seed=k)
    skip = torch.randn_like(tokens)                     # the previous frames' clean tokens
    with torch.no_grad():
        full = dyn(tokens, levels, actions, skip_tokens=skip)
        cache = dyn.new_cache(2)
        primed = dyn(tokens[:, :k], levels[:, :k], actions[:, :k], cache=cache, write=k, skip_tokens=skip[:, :k])
        last = dyn(tokens[:, k:], levels[:, k:], actions[:, k:], positions=torch.full((2, 1), k), cache=cache,
                   prev_tokens=tokens[:, k - 1:k], skip_tokens=skip[:, k:])
    torch.testing.assert_close(primed, full[:, :k], atol=ATOL, rtol=0)
    torch.testing.assert_close(last, full[:, k:], atol=ATOL, rtol=0)
    # Without the cache the last frame alone is something else: the test can fail.
    with torch.no_grad():
        alone = dyn(tokens[:, k:], levels[:, k:], actions[:, k:], positions=torch.full((2, 1), k),
                    prev_tokens=tokens[:, k - 1:k], skip_tokens=skip[:, k:])
    assert (alone - full[:, k:]).abs().max() > 100 * ATOL


def test_frame_by_frame_writes_equal_full_forward(dyn):
    f = dyn.cfg.context_frames
    tokens, levels, actions = _inputs(dyn, f, seed=5)
    skip = torch.randn_like(tokens)
    with torch.no_grad():
        full = dyn(tokens, levels, actions, skip_tokens=skip)
        cache = dyn.new_cache(2)
        outs = [dyn(tokens[:, i:i + 1], levels[:, i:i + 1], actions[:, i:i + 1], positions=torch.full((2, 1), i),
                    cache=cache, write=1, prev_tokens=tokens[:, i - 1:i] if i else None,
                    skip_tokens=skip[:, i:i + 1]) for i in range(f)]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=ATOL, rtol=0)


def test_commit_and_denoise_in_one_pass_equals_two_passes(dyn):
    """With the cache full, one pass over [finished frame (written), next frame] gives the next
    frame what writing the finished frame first and then denoising the next one alone gives:
    the next frame's window drops the oldest cached frame, which the finished frame still sees."""
    c = dyn.cfg.context_frames
    tokens, levels, actions = _inputs(dyn, c + 1, seed=9)       # frames 0..c; 0..c-2 cached
    skip = torch.randn_like(tokens)
    pos = torch.arange(c + 1).expand(2, -1)
    with torch.no_grad():
        one, two = dyn.new_cache(2), dyn.new_cache(2)
        for cache in (one, two):
            dyn(tokens[:, :c - 1], levels[:, :c - 1], actions[:, :c - 1], cache=cache, write=c - 1)
        merged = dyn(tokens[:, c - 1:], levels[:, c - 1:], actions[:, c - 1:], pos[:, c - 1:], cache=one, write=1,
                     prev_tokens=tokens[:, c - 2:c - 1], skip_tokens=skip[:, c - 1:])
        dyn(tokens[:, c - 1:c], levels[:, c - 1:c], actions[:, c - 1:c], pos[:, c - 1:c], cache=two, write=1,
            prev_tokens=tokens[:, c - 2:c - 1])
        alone = dyn(tokens[:, c:], levels[:, c:], actions[:, c:], pos[:, c:], cache=two,
                    prev_tokens=tokens[:, c - 1:c], skip_tokens=skip[:, c:])
    torch.testing.assert_close(merged[:, 1:], alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(one.k, two.k, atol=ATOL, rtol=0)
    assert torch.equal(one.frame_pos, two.frame_pos)
    assert sorted(one.frame_pos[0].tolist()) == list(range(1, c))


def test_committing_pass_is_unmasked_only_over_a_full_window(tiny_bundle, monkeypatch):
    """The committing pass takes its unmasked form (two attentions per block, none masked, the
    last block's first frame skipped) only where every ring holds the frames just before it,
    at any ring offset; the result then is the masked form's."""
    dyn = tiny_bundle.dynamics
    c, depth = dyn.cfg.context_frames, dyn.cfg.depth
    slots = c - 1
    tokens, levels, actions = _inputs(dyn, c + 6, seed=4)
    skip = torch.randn_like(tokens)
    pos = torch.arange(c + 6).expand(2, -1)
    cache = dyn.new_cache(2)
    with torch.no_grad():
        dyn(tokens[:, :slots - 1], levels[:, :slots - 1], actions[:, :slots - 1], cache=cache, write=slots - 1)
        assert not cache.holds_window_before(pos[:, slots - 1:slots + 1])   # one slot still empty
        dyn(tokens[:, slots - 1:slots], levels[:, slots - 1:slots], actions[:, slots - 1:slots], pos[:, slots - 1:slots],
            cache=cache, write=1)
        for t in range(slots, slots + 5):                                # the ring wraps: next_slot 0, 1, ...
            assert cache.holds_window_before(pos[:, t:t + 2])
            assert not cache.holds_window_before(pos[:, t:t + 2] + 1)
            assert not cache.holds_window_before(pos[:, [t, t + 2]])          # frames not consecutive
            masks = []
            sdpa = torch.nn.functional.scaled_dot_product_attention

            def spy(*args, attn_mask=None, **kwargs):
                masks.append(attn_mask)
                return sdpa(*args, attn_mask=attn_mask, **kwargs)

            monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
            before = (cache.k.clone(), cache.v.clone(), cache.frame_pos.clone(), cache.next_slot)
            fast = dyn(tokens[:, t:t + 2], levels[:, t:t + 2], actions[:, t:t + 2], pos[:, t:t + 2], cache=cache,
                       write=1, prev_tokens=tokens[:, t - 1:t], skip_tokens=skip[:, t + 1:t + 2], predict=1)
            monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
            assert len(masks) == 2 * depth - 1 and all(m is None for m in masks)
            after = (cache.k.clone(), cache.v.clone(), cache.frame_pos.clone(), cache.next_slot)
            cache.k.copy_(before[0]), cache.v.copy_(before[1]), cache.frame_pos.copy_(before[2])
            cache.next_slot = before[3]
            monkeypatch.setattr(KVCache, "holds_window_before", lambda self, p: False)
            masked = dyn(tokens[:, t:t + 2], levels[:, t:t + 2], actions[:, t:t + 2], pos[:, t:t + 2], cache=cache,
                         write=1, prev_tokens=tokens[:, t - 1:t], skip_tokens=skip[:, t + 1:t + 2], predict=1)
            monkeypatch.undo()
            torch.testing.assert_close(fast, masked, atol=ATOL, rtol=0)
            torch.testing.assert_close(after[0], cache.k, atol=ATOL, rtol=0)
            torch.testing.assert_close(after[1], cache.v, atol=ATOL, rtol=0)
            assert torch.equal(after[2], cache.frame_pos) and after[3] == cache.next_slot
        cache.clear(torch.tensor([True, False]))
        assert not cache.holds_window_before(pos[:, slots + 5:slots + 7])   # one dream starts over


def test_interleaved_rotary_copy_computes_the_same(dyn):
    """A copy whose rotary pairs are interleaved (the Simulator's) gives the model's outputs,
    uncached and cached, and caches the same keys in its own order of each head's dimensions."""
    import copy

    from worldmodel.dynamics import interleaved_order

    fast = copy.deepcopy(dyn).interleave_rotary()
    assert fast.rotary_interleaved and not dyn.rotary_interleaved
    c = dyn.cfg.context_frames
    tokens, levels, actions = _inputs(dyn, c + 1, seed=2)
    skip = torch.randn_like(tokens)
    pos = torch.arange(c + 1).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(fast(tokens, levels, actions, skip_tokens=skip),
                                   dyn(tokens, levels, actions, skip_tokens=skip), atol=ATOL, rtol=0)
        caches = [dyn.new_cache(2), fast.new_cache(2)]
        outs = [m(tokens[:, :c - 1], levels[:, :c - 1], actions[:, :c - 1], cache=cache, write=c - 1)
                for m, cache in zip((dyn, fast), caches)]
        outs += [m(tokens[:, c - 1:], levels[:, c - 1:], actions[:, c - 1:], pos[:, c - 1:], cache=cache, write=1,
                   prev_tokens=tokens[:, c - 2:c - 1], skip_tokens=skip[:, c:], predict=1)
                 for m, cache in zip((dyn, fast), caches)]
    torch.testing.assert_close(outs[1], outs[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(outs[3], outs[2], atol=ATOL, rtol=0)
    order = interleaved_order(dyn.head_dim)
    torch.testing.assert_close(caches[1].k, caches[0].k[..., order], atol=ATOL, rtol=0)
    torch.testing.assert_close(caches[1].v, caches[0].v, atol=ATOL, rtol=0)
    # The keys do differ in order: comparing them unpermuted can fail.
    assert (caches[1].k - caches[0].k).abs().max() > 100 * ATOL
    with pytest.raises(RuntimeError, match="interleaved already"):
        fast.interleave_rotary()


def test_cache_is_bounded(dyn):
    cfg = dyn.cfg
    cache = dyn.new_cache(2)
    shape, nbytes = cache.k.shape, cache.nbytes
    assert shape == (cfg.depth, 2, cfg.heads, (cfg.context_frames - 1) * cfg.tokens_per_frame, dyn.head_dim)
    tokens, levels, actions = _inputs(dyn, 1, seed=1)
    with torch.no_grad():
        for i in range(50):
            dyn(tokens, levels, actions, positions=torch.full((2, 1), i), cache=cache, write=1)
    assert cache.k.shape == shape and cache.v.shape == shape and cache.nbytes == nbytes
    slots = cfg.context_frames - 1
    assert cache.frame_pos.shape == (2, slots)
    for row in cache.frame_pos:
        assert sorted(row.tolist()) == list(range(50 - slots, 50))
    assert cache.last_position().tolist() == [49, 49]
    assert (cache.token_frames() >= 0).all()


def test_kv_cache_write_keeps_last_frames_and_clear():
    cache = KVCache(depth=1, batch=1, heads=1, slots=3, tokens_per_frame=2, head_dim=2)
    # Writing 5 frames at once keeps the newest 3.
    k = torch.arange(5).float().repeat_interleave(2)[None, None, :, None].expand(1, 1, 10, 2).clone()
    cache.write(0, k, k)
    cache.commit(torch.arange(5)[None])
    assert sorted(cache.frame_pos[0].tolist()) == [2, 3, 4]
    assert sorted(set(cache.k[0, 0, 0, :, 0].tolist())) == [2.0, 3.0, 4.0]
    assert cache.last_position().item() == 4
    cache.clear(torch.tensor([True]))
    assert (cache.frame_pos == -1).all() and (cache.token_frames() == -1).all()
    assert cache.last_position().item() == -1


# -- Simulator ---------------------------------------------------------------------------------------

def _rollout(bundle, seed: int, steps: int = 10, batch: int = 2) -> np.ndarray:
    sim = Simulator(bundle, batch_size=batch, seed=seed)
    first = sim.reset(bundle.start_frames[:batch].numpy(), bundle.start_actions[:batch].numpy())
    np.testing.assert_array_equal(first, bundle.start_frames[:batch, -1].numpy())
    actions = np.random.default_rng(0).integers(0, 6, size=(steps, batch))
    return np.stack([sim.step(a)[0] for a in actions])


def test_same_seed_same_dream(tiny_bundle):
    a, b = _rollout(tiny_bundle, seed=1), _rollout(tiny_bundle, seed=1)
    assert a.shape == (10, 2, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    c = _rollout(tiny_bundle, seed=2)
    assert not np.array_equal(a, c)


def test_step_outputs_and_positions(tiny_bundle):
    sim = Simulator(tiny_bundle, batch_size=2, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        sim.step([0, 0])
    sim.reset(tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy())
    t = tiny_bundle.start_frames.shape[1]
    assert sim.positions.tolist() == [t - 1, t - 1]            # the latest frame is pending, not cached yet
    assert sim.cache.last_position().tolist() == [t - 2, t - 2]
    for i in range(10):
        frames, rewards, terminated = sim.step(np.array([2, 3]))
        assert frames.shape == (2, 64, 64, 3) and frames.dtype == np.uint8
        assert rewards.shape == (2,) and rewards.dtype == np.float32 and set(rewards) <= {-1.0, 0.0, 1.0}
        assert terminated.shape == (2,) and terminated.dtype == np.bool_
    assert sim.step_count.tolist() == [10, 10] and sim.positions.tolist() == [t + 9, t + 9]
    slots = sim.cache.slots
    for row in sim.cache.frame_pos:
        assert sorted(row.tolist()) == list(range(t + 9 - slots, t + 9))
    np.testing.assert_array_equal(sim.last_frames, frames)


def test_reset_with_long_history_keeps_the_window(tiny_bundle, pong_trajectory):
    frames, actions = pong_trajectory
    sim = Simulator(tiny_bundle, batch_size=1, seed=0, precision="float32")
    sim.reset(frames[None, :10], actions[None, :9])
    assert sorted(sim.cache.frame_pos[0].tolist()) == [6, 7, 8] and sim.positions.tolist() == [9]
    # Equal to priming with just the last window at the same absolute positions.
    ref = sim.dynamics.new_cache(1)
    from worldmodel.tokenizer import frames_to_tensor

    tokens = tiny_bundle.tokenizer.encode(frames_to_tensor(torch.as_tensor(frames[None, 6:9])))
    with torch.no_grad():
        sim.dynamics(tokens, torch.zeros(1, 3), torch.as_tensor(actions[None, 5:8]),
                             torch.arange(6, 9)[None], cache=ref, write=3)
    torch.testing.assert_close(sim.cache.k, ref.k, atol=1e-5, rtol=0)
    assert torch.equal(sim.cache.frame_pos, ref.frame_pos)


@pytest.mark.parametrize("t", [1, 2, 3])
@pytest.mark.parametrize("pre_steps", [2, 3])
def test_subset_reset_matches_full_reset(tiny_bundle, pong_trajectory, t, pre_steps):
    """Env 1 reset alone mid-rollout (with the shared ring at another offset) must dream exactly as
    env 1 of a simulator reset from scratch with the same frames, given the same sampling noise.

    Both simulators have batch 2, so a re-seeded generator gives env 1 the same noise; env 0
    differs between them but cannot influence env 1. A mis-rotated ring would overwrite the
    wrong slot after a few steps and the dreams would part. Priming with fewer frames than the
    ring holds (t < slots) is where the ring has to be rotated. Frames are not re-quantized, and
    both run in float32 (not bfloat16, which ``precision="auto"`` picks on a CPU with
    AVX512-BF16), so that float rounding (the rings' slot orders differ) is not turned into
    whole uint8 levels and amplified by the random-weight model."""
    import dataclasses

    tiny_bundle = dataclasses.replace(tiny_bundle, sampler=dataclasses.replace(tiny_bundle.sampler,
                                                                               quantize_frames=False))
    frames, actions = pong_trajectory
    start_f, start_a = tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy()
    new_f, new_a = frames[None, 17 - t:17], actions[None, 17 - t:16]

    a = Simulator(tiny_bundle, batch_size=2, seed=0, precision="float32")
    a.reset(start_f, start_a)
    for _ in range(pre_steps):                           # move the shared ring off slot 0
        a.step([1, 4])
    assert a.cache.next_slot != 0
    out = a.reset(new_f, new_a, env_ids=[1])
    np.testing.assert_array_equal(out[1], new_f[0, -1])
    assert a.step_count.tolist() == [pre_steps, 0]
    assert a.positions.tolist() == [start_f.shape[1] + pre_steps - 1, t - 1]

    b = Simulator(tiny_bundle, batch_size=2, seed=0, precision="float32")
    b.reset(np.concatenate([start_f[:1, -t:], new_f]),
            np.concatenate([start_a[:1, start_a.shape[1] - (t - 1):], new_a]))
    torch.testing.assert_close(a.cache.k[:, 1].sort(dim=2).values, b.cache.k[:, 1].sort(dim=2).values,
                               atol=1e-5, rtol=0)

    a.generator.manual_seed(123)
    b.generator.manual_seed(123)
    acts = np.random.default_rng(1).integers(0, 6, size=(8, 2))
    for i, act in enumerate(acts):
        fa, ra, ta = a.step(act)
        fb, rb, tb = b.step(act)
        diff = np.abs(fa[1].astype(int) - fb[1].astype(int)).max()
        assert diff <= 1, f"step {i}: subset-reset dream differs by {diff}"
        assert ra[1] == rb[1] and ta[1] == tb[1]
    assert sorted(a.cache.frame_pos[1].tolist()) == sorted(b.cache.frame_pos[1].tolist())


def test_subset_reset_leaves_other_envs_alone(tiny_bundle, pong_trajectory):
    frames, actions = pong_trajectory
    start_f, start_a = tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy()
    a = Simulator(tiny_bundle, batch_size=2, seed=0)
    c = Simulator(tiny_bundle, batch_size=2, seed=0)
    for s in (a, c):
        s.reset(start_f, start_a)
        s.step([2, 3])
    a.reset(frames[None, 15:17], actions[None, 15:16], env_ids=[1])
    assert a.step_count.tolist() == [1, 0]
    a.generator.manual_seed(7)
    c.generator.manual_seed(7)
    for act in ([2, 3], [0, 1], [5, 4], [3, 3]):
        fa, fc = a.step(act)[0], c.step(act)[0]
        assert np.abs(fa[0].astype(int) - fc[0].astype(int)).max() <= 1
        assert not np.array_equal(fa[1], fc[1])


@pytest.fixture()
def sim(tiny_bundle):
    s = Simulator(tiny_bundle, batch_size=2, seed=0)
    return s


def test_reset_rejects_wrong_frame_shape(sim, tiny_bundle):
    frames = np.zeros((2, 3, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"32, 32"):
        sim.reset(frames, np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"\(1, 3, 64, 64, 3\)"):        # batch of 1 for a batch-2 simulator
        sim.reset(tiny_bundle.start_frames[:1].numpy(), tiny_bundle.start_actions[:1].numpy())


def test_reset_rejects_wrong_dtype(sim, tiny_bundle):
    with pytest.raises(ValueError, match="float32"):
        sim.reset(tiny_bundle.start_frames.numpy().astype(np.float32), tiny_bundle.start_actions.numpy())


def test_reset_rejects_bad_actions(sim, tiny_bundle):
    f, a = tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy()
    bad = a.copy()
    bad[1, 0] = 99
    with pytest.raises(ValueError, match="99"):
        sim.reset(f, bad)
    with pytest.raises(ValueError, match="shape"):
        sim.reset(f, a[:, :1])
    with pytest.raises(ValueError, match="integers"):
        sim.reset(f, a.astype(np.float64))


def test_step_rejects_bad_actions(sim, tiny_bundle):
    with pytest.raises(RuntimeError, match="reset"):
        sim.step([0, 0])
    sim.reset(tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy())
    with pytest.raises(ValueError, match="99"):
        sim.step([0, 99])
    with pytest.raises(ValueError, match="-1"):
        sim.step([-1, 0])
    with pytest.raises(ValueError, match=r"\(2,\)"):
        sim.step([0])
    # A rejected step changes nothing.
    assert sim.step_count.tolist() == [0, 0]
    sim.step([0, 1])
    assert sim.step_count.tolist() == [1, 1]


def test_simulator_constructor_checks(tiny_bundle):
    with pytest.raises(ValueError, match="batch_size"):
        Simulator(tiny_bundle, batch_size=0)
    with pytest.raises(ValueError, match="tensorrt"):
        Simulator(tiny_bundle, backend="tensorrt")


def test_reset_rejects_bad_env_ids_and_empty_frames(tiny_bundle):
    sim = Simulator(tiny_bundle, batch_size=2, seed=0)
    frames = tiny_bundle.start_frames[:1].numpy()
    actions = tiny_bundle.start_actions[:1].numpy()
    with pytest.raises(ValueError, match=r"\[5\]"):
        sim.reset(frames, actions, env_ids=[5])
    with pytest.raises(ValueError, match="distinct"):
        sim.reset(np.concatenate([frames, frames]), np.concatenate([actions, actions]), env_ids=[1, 1])
    with pytest.raises(ValueError, match="T = 0"):
        sim.reset(frames[:, :0], actions[:, :0], env_ids=[0])


def test_step_cost_does_not_grow_with_the_episode(tiny_bundle):
    """The KV cache is a ring: a step at frame 300 does the same work as one at frame 10
    (counted in floating-point operations, so the check does not depend on machine load)."""
    from torch.utils.flop_counter import FlopCounterMode

    sim = Simulator(tiny_bundle, batch_size=2, backend="torch", seed=0)
    sim.reset(tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy())
    ptrs = (sim.cache.k.data_ptr(), sim.cache.v.data_ptr())

    def flops_of_one_step() -> int:
        with FlopCounterMode(display=False) as counter:
            sim.step(np.array([2, 3]))
        return counter.get_total_flops()

    for _ in range(10):
        sim.step(np.array([0, 1]))
    early = flops_of_one_step()
    for _ in range(300):
        sim.step(np.array([2, 3]))
    late = flops_of_one_step()
    assert early > 0 and late == early
    assert (sim.cache.k.data_ptr(), sim.cache.v.data_ptr()) == ptrs     # no reallocation, no growth
    assert sim.positions.tolist() == [tiny_bundle.start_frames.shape[1] - 1 + 312] * 2


def test_change_threshold_keeps_small_changes_out(tiny_bundle):
    """With ``change_threshold`` every pixel of a new frame either keeps the previous frame's
    value or changed by at least the threshold in some channel; without it, small changes occur."""
    import dataclasses

    def rollout(threshold: int) -> np.ndarray:
        sampler = dataclasses.replace(tiny_bundle.sampler, change_threshold=threshold)
        sim = Simulator(dataclasses.replace(tiny_bundle, sampler=sampler), batch_size=2, backend="torch", seed=3)
        frames = [sim.reset(tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy())]
        frames += [sim.step(np.array([2, 3]))[0] for _ in range(6)]
        return np.stack(frames).astype(np.int16)

    def small_changes(frames: np.ndarray, threshold: int) -> int:
        change = np.abs(np.diff(frames, axis=0)).max(-1)
        return int(((change > 0) & (change < threshold)).sum())

    assert small_changes(rollout(0), 40) > 0
    assert small_changes(rollout(40), 40) == 0
    with pytest.raises(ValueError, match="change_threshold"):
        dataclasses.replace(tiny_bundle.sampler, change_threshold=300)


def test_bfloat16_precision_steps_a_bfloat16_copy(tiny_bundle):
    from worldmodel.simulator import resolve_precision

    sim = Simulator(tiny_bundle, batch_size=2, backend="torch", seed=0, precision="bfloat16")
    assert sim.precision == "bfloat16" and sim.cache.k.dtype == torch.bfloat16
    assert next(sim.dynamics.parameters()).dtype == torch.bfloat16
    assert next(tiny_bundle.dynamics.parameters()).dtype == torch.float32     # the bundle's model is untouched
    palette = make_tiny_bundle(tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy(), palette_size=8)
    cast = Simulator(palette, backend="torch", precision="bfloat16").dynamics
    assert cast.palette.dtype == cast.copy_bias.dtype == torch.float32 and cast.in_proj.weight.dtype == torch.bfloat16
    sim.reset(tiny_bundle.start_frames.numpy(), tiny_bundle.start_actions.numpy())
    frames, rewards, ends = sim.step(np.array([2, 3]))
    assert frames.dtype == np.uint8 and frames.shape == (2, *sim.frame_shape) and rewards.shape == ends.shape == (2,)
    plain = Simulator(tiny_bundle, precision="float32").dynamics
    assert next(plain.parameters()).dtype == torch.float32 and plain.rotary_interleaved
    assert not tiny_bundle.dynamics.rotary_interleaved                        # a copy, the bundle untouched
    with pytest.raises(ValueError, match="float64"):
        Simulator(tiny_bundle, precision="float64")
    with pytest.raises(ValueError, match="onnx"):
        resolve_precision("bfloat16", torch.device("cpu"), "onnx")
    assert resolve_precision("auto", torch.device("cpu"), "onnx") == "float32"


def test_shipped_pong_dreams_alike_in_bfloat16_and_float32():
    """The bfloat16 copy of the shipped Pong model draws the float32 model's frames: the same
    start, actions and noise give at least 99% equal pixels over 16 steps."""
    import worldmodel

    model = worldmodel.load("pong")
    frames = {}
    for precision in ("float32", "bfloat16"):
        sim = Simulator(model, batch_size=4, backend="torch", seed=0, precision=precision)
        sim.reset(model.start_frames.numpy()[:4], model.start_actions.numpy()[:4])
        actions = np.random.default_rng(0).integers(6, size=(16, 4))
        frames[precision] = np.stack([sim.step(a)[0] for a in actions])
    same = (frames["float32"] == frames["bfloat16"]).all(-1).mean()
    assert same >= 0.99, same


def test_writing_every_layer_at_once_matches_writing_each_layer():
    """``write(None, ...)`` (the onnx backend's one copy) stores what per-layer writes store, as
    the ring wraps with passes of 1 to 3 frames; keys of the wrong rank are refused."""
    shape = {"depth": 3, "batch": 2, "heads": 2, "slots": 4, "tokens_per_frame": 5, "head_dim": 4}
    whole, layered = KVCache(**shape), KVCache(**shape)
    gen = torch.Generator().manual_seed(0)
    position = 0
    for frames in (1, 2, 3, 1, 3, 2, 1):
        k, v = (torch.randn(3, 2, 2, frames * 5, 4, generator=gen) for _ in range(2))
        positions = torch.arange(position, position + frames).expand(2, -1)
        whole.write(None, k, v)
        for layer in range(3):
            layered.write(layer, k[layer], v[layer])
        for cache in (whole, layered):
            cache.commit(positions)
        position += frames
        assert torch.equal(whole.k, layered.k) and torch.equal(whole.v, layered.v)
        assert torch.equal(whole.frame_pos, layered.frame_pos)
    assert sorted(whole.frame_pos[0].tolist()) == list(range(position - 4, position))
    with pytest.raises(ValueError, match="5-D"):
        whole.write(None, k[0], v[0])
    with pytest.raises(ValueError, match="4-D"):
        whole.write(0, k, v)
