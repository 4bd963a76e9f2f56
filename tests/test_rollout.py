"""Rollout engine: noise-diverse groups from a shared init state, deterministic per seed."""

from __future__ import annotations

import numpy as np
import pytest

from grpo_cli.config import RolloutConfig, parse_tiers
from grpo_cli.errors import UserError
from grpo_cli.rollout import LocalEnvSlots, episode_seed, group_episodes, run_episodes


def test_parse_tiers() -> None:
    assert parse_tiers("1x1,5x10", None) == [1, 10, 10, 10, 10, 10]
    assert parse_tiers("1x8,1x9,1x10", 3) == [8, 9, 10]
    assert parse_tiers("10", 4) == [10] * 4
    assert parse_tiers(None, 2) == [10, 10]
    for bad in ("1x0", "ax3", "2x10,x"):
        with pytest.raises(UserError):
            parse_tiers(bad, None)
    with pytest.raises(UserError, match="num_generations is 5"):
        parse_tiers("1x1,5x10", 5)
    assert RolloutConfig(num_generations=6, denoise_tiers="1x1,5x10").steps_per_member[0] == 1


def test_episode_seeds_are_distinct_and_stable() -> None:
    seeds = {episode_seed(0, t, i, m) for t in range(3) for i in range(3) for m in range(6)}
    assert len(seeds) == 54
    assert episode_seed(7, 1, 2, 3) == episode_seed(7, 1, 2, 3) != episode_seed(8, 1, 2, 3)


@pytest.fixture(scope="module")
def group(tiny, task0):
    episodes = group_episodes([task0], [4], [1, 10, 10], seed=0)
    slots = LocalEnvSlots(3, image_size=64)
    try:
        first = run_episodes(tiny, slots, episodes, max_steps=25, n_action_steps=10)
        again = run_episodes(tiny, slots, episodes, max_steps=25, n_action_steps=10)
    finally:
        slots.close()
    return episodes, first, again


def test_group_members_share_init_state_and_differ_by_noise(group) -> None:
    episodes, trajs, _ = group
    assert {e.init_state for e in episodes} == {4} and {e.group for e in episodes} == {0}
    assert [e.member for e in episodes] == [0, 1, 2]
    np.testing.assert_array_equal(trajs[0].states[0], trajs[1].states[0])
    assert np.abs(np.asarray(trajs[1].actions) - np.asarray(trajs[2].actions)).max() > 1e-3
    for traj, k in zip(trajs, [1, 10, 10], strict=True):
        assert traj.length == 25 and traj.query_steps == [0, 10, 20]
        assert [c.shape for c in traj.chains] == [(k + 1, 50, 32)] * 3
        np.testing.assert_array_equal(traj.chains[0][0], traj.noise[0])
        assert len(traj.states) == len(traj.rewards) == 25
        assert traj.query_images["observation.images.image"][0].shape == (64, 64, 3)
        # executed actions are the first n_action_steps of the chunk each query produced
        np.testing.assert_array_equal(traj.states[10], traj.query_states[1])


def test_rollout_is_deterministic_per_seed(group) -> None:
    _, first, again = group
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(np.asarray(a.actions), np.asarray(b.actions))
        np.testing.assert_array_equal(np.asarray(a.states), np.asarray(b.states))


@pytest.mark.memory_heavy
def test_process_workers_give_the_same_trajectories(tiny, task0, group) -> None:
    import multiprocessing as mp

    from grpo_cli.rollout import ProcessEnvSlots

    episodes, inline, _ = group
    slots = ProcessEnvSlots(3, image_size=64)
    pids = [p.pid for p in slots._procs]
    try:
        parallel = run_episodes(tiny, slots, episodes, max_steps=25, n_action_steps=10)
        rss = slots.worker_rss_mb()
    finally:
        slots.close()
    assert len(rss) == 3 and all(50 < x < 4096 for x in rss)  # an env with MuJoCo + EGL, not the parent
    for a, b in zip(inline, parallel, strict=True):
        np.testing.assert_array_equal(np.asarray(a.actions), np.asarray(b.actions))
        np.testing.assert_array_equal(np.asarray(a.states), np.asarray(b.states))
        np.testing.assert_array_equal(a.query_images["observation.images.image"][-1],
                                      b.query_images["observation.images.image"][-1])
    assert not mp.active_children() and pids  # every worker exited on close


def test_worker_errors_surface_and_workers_shut_down(task0) -> None:
    import multiprocessing as mp

    from grpo_cli.rollout import ProcessEnvSlots

    slots = ProcessEnvSlots(1, image_size=64, images=False)
    try:
        with pytest.raises(RuntimeError, match="init state 99 is out of range"):
            slots.reset(0, task0, 99)
        assert slots.reset(0, task0, 1)["observation.state"].shape == (8,)  # the worker keeps serving
        slots._procs[0].kill()
        with pytest.raises(RuntimeError, match="env worker 0 died"):
            slots.reset(0, task0, 1)
    finally:
        slots.close()
    assert not mp.active_children()


def test_eval_samples_with_the_sde_sampler_when_asked(tiny, task0) -> None:
    """`eval --sde-noise a` evaluates the stochastic policy an sde run trains: other actions than the
    deterministic sampler from the same initial noise (per-seed determinism: test_rollout_is_deterministic)."""
    from grpo_cli.config import EvalConfig
    from grpo_cli.evaluate import run_eval

    def first_chunk(sde_noise: float) -> np.ndarray:
        seen = []
        cfg = EvalConfig(suite="libero_10", tasks=(0,), episodes_per_task=1, max_steps=10, n_action_steps=10,
                         image_size=64, sde_noise=sde_noise)
        run_eval(cfg, tiny, [task0], on_episode=seen.append)
        np.testing.assert_array_equal(seen[0].chains[0][0], seen[0].noise[0])
        return seen[0].chains[0][-1]

    assert np.abs(first_chunk(0.0) - first_chunk(0.3)).max() > 1e-3


@pytest.mark.memory_heavy
def test_overlap_lanes_step_while_the_policy_works(tiny, task0) -> None:
    """With overlap, one lane's chunks are submitted before the other lane's are gathered (the policy
    computes while envs step), and worker processes give the same trajectories as inline slots."""
    from grpo_cli.rollout import ProcessEnvSlots

    class Recording(LocalEnvSlots):
        calls: list[tuple[str, tuple[int, ...]]] = []

        def submit_chunks(self, items):
            self.calls.append(("submit", tuple(slot for slot, _, _ in items)))
            super().submit_chunks(items)

        def gather_chunks(self, slots):
            self.calls.append(("gather", tuple(slots)))
            return super().gather_chunks(slots)

    episodes = group_episodes([task0], [4], [10, 10], seed=0)
    slots = Recording(2, image_size=64)
    try:
        inline = run_episodes(tiny, slots, episodes, max_steps=20, n_action_steps=10, overlap=True)
    finally:
        slots.close()
    assert Recording.calls[:4] == [("submit", (0,)), ("submit", (1,)), ("gather", (0,)), ("submit", (0,))]
    slots = ProcessEnvSlots(2, image_size=64)
    try:
        parallel = run_episodes(tiny, slots, episodes, max_steps=20, n_action_steps=10, overlap=True)
    finally:
        slots.close()
    for a, b in zip(inline, parallel, strict=True):
        assert a.length == b.length == 20
        np.testing.assert_array_equal(np.asarray(a.actions), np.asarray(b.actions))
        np.testing.assert_array_equal(np.asarray(a.states), np.asarray(b.states))
