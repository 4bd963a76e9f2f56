"""Rollout engine: noise-diverse groups from a shared init state, deterministic per seed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from grpo_cli.config import RolloutConfig, parse_tiers
from grpo_cli.envs.slots import LocalEnvSlots
from grpo_cli.errors import UserError
from grpo_cli.rollout import episode_seed, group_episodes, run_episodes


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
    seeds = {episode_seed(0, "rollout", t, i, m) for t in range(3) for i in range(3) for m in range(6)}
    assert len(seeds) == 54
    assert episode_seed(7, "train", 1, 2, 3) == episode_seed(7, "train", 1, 2, 3) != episode_seed(8, "train", 1, 2, 3)
    assert episode_seed(7, "eval", 1, 2) == 4241080595448180200  # recorded files name these seeds: never change them


def test_eval_noise_never_coincides_with_training_noise() -> None:
    # SeedSequence pads entropy with zeros: untagged, (s, a, b) == (s, a, b, 0), so eval episode i of
    # task t shared its noise with training step t, group i, member 0 of a run with the same seed.
    assert episode_seed(0, "eval", 3, 5) != episode_seed(0, "eval", 3, 5, 0)
    for seed in (0, 1):
        evals = {episode_seed(seed, "eval", t, i) for t in range(10) for i in range(200)}
        train = {episode_seed(seed, "train", s, g, m) for s in range(60) for g in range(4) for m in range(17)}
        rollouts = {episode_seed(seed, "rollout", t, i, m) for t in range(10) for i in range(50) for m in range(4)}
        assert len(evals) == 2000 and len(train) == 60 * 4 * 17 and len(rollouts) == 2000
        assert not evals & train and not evals & rollouts and not train & rollouts


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

    from grpo_cli.envs.slots import ProcessEnvSlots

    episodes, inline, _ = group
    slots = ProcessEnvSlots(3, image_size=64)
    pids = [p.pid for p in slots._procs]
    try:
        parallel = run_episodes(tiny, slots, episodes, max_steps=25, n_action_steps=10)
        rss = slots.worker_rss_mb()
        # a worker holds one env, not a second torch (~470 MiB each; grpo_cli/envs/slots.py)
        assert not any("libtorch" in Path(f"/proc/{pid}/maps").read_text() for pid in pids)
        assert "libtorch" in Path(f"/proc/{os.getpid()}/maps").read_text()  # the check can see torch
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

    from grpo_cli.envs.slots import ProcessEnvSlots

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
    from grpo_cli.envs.slots import ProcessEnvSlots

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


def test_held_out_split_training_and_eval_draw_only_their_init_states() -> None:
    from types import SimpleNamespace

    from grpo_cli.config import EvalConfig
    from grpo_cli.evaluate import eval_episodes
    from grpo_cli.groups import SolvedInitStates

    task = SimpleNamespace(task_id=2, num_init_states=50, language="x")
    train_states, eval_states = tuple(range(30)), tuple(range(30, 50))
    episodes = eval_episodes(EvalConfig(episodes_per_task=100, init_states=eval_states), [task])
    assert [e.init_state for e in episodes] == [30 + i % 20 for i in range(100)]  # 20 states x 5 noise seeds
    assert len({e.noise_seed for e in episodes}) == 100
    for k in (0, 2):  # with and without dynamic sampling
        solved = SolvedInitStates(k, init_states=train_states)
        rng = np.random.default_rng(0)
        drawn = {solved.draw([task], rng)[1] for _ in range(2000)}
        assert drawn == set(train_states)
    with pytest.raises(UserError, match="task 2 has init states 0..49"):
        eval_episodes(EvalConfig(init_states=(49, 50)), [task])
    with pytest.raises(UserError, match="listed twice"):
        eval_episodes(EvalConfig(init_states=(3, 3)), [task])
