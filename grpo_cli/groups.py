"""Groups between rollout and update: E5's fallback and E6's replay for all-fail groups, Eq. 4's rewards,
group filters with bounded resampling, and RIPT-VLA's dynamic sampling of init states.

Dimension legend
    G   groups in a step (tasks_per_step)      n   members of a group (num_generations, +1 with E5/E6)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from grpo_cli import grpo
from grpo_cli.config import TrainConfig
from grpo_cli.envs.libero import TaskSpec
from grpo_cli.episodes import Trajectory


@dataclass
class Member:
    """A trajectory in a group with its reward and origin (natural / fallback / replay)."""

    traj: Trajectory
    reward: float
    origin: str = "natural"
    advantage: float = 0.0
    chunk_advantages: list[float] | None = None  # advantage_baseline = value: one per chunk (else `advantage`)


class ReplayPool:
    """E6: successful trajectories per task, newest kept (the seed does not say when it prunes)."""

    def __init__(self, size: int, entries: dict[str, list[Trajectory]] | None = None):
        self.size = size
        self.entries: dict[str, list[Trajectory]] = entries or {}

    def add(self, traj: Trajectory) -> None:
        bucket = self.entries.setdefault(str(traj.spec.task.task_id), [])
        bucket.append(traj)
        del bucket[: max(0, len(bucket) - self.size)]

    def sample(self, task_id: int, rng: np.random.Generator) -> Trajectory | None:
        bucket = self.entries.get(str(task_id), [])
        return bucket[int(rng.integers(len(bucket)))] if bucket else None


class SolvedInitStates:
    """RIPT-VLA's dynamic sampling: an init state whose last `k` groups were all successes is not drawn
    again. Such groups carry no success signal (at most a dense-reward ranking of equal outcomes) and a
    group filter would drop them after paying for their env steps. k = 0 keeps every init state.

    Streaks are keyed "task_id:init_state" and checkpointed, so a resumed run skips what it skipped.
    """

    def __init__(self, k: int, streaks: dict[str, int] | None = None, init_states: tuple[int, ...] = ()):
        self.k = k
        self.streaks: dict[str, int] = dict(streaks or {})
        self.init_states = init_states  # the ones training may draw (TrainConfig.init_states); () = all

    def allowed(self, task: TaskSpec) -> list[int]:
        return list(self.init_states) or list(range(task.num_init_states))

    def record(self, task_id: int, init_state: int, all_success: bool) -> None:
        key = f"{task_id}:{init_state}"
        self.streaks[key] = self.streaks.get(key, 0) + 1 if all_success else 0

    def skipped(self, task_id: int, init_state: int) -> bool:
        return self.k > 0 and self.streaks.get(f"{task_id}:{init_state}", 0) >= self.k

    def draw(self, tasks: list[TaskSpec], rng: np.random.Generator) -> tuple[TaskSpec, int]:
        """A task uniformly, then one of its init states uniformly, among those not skipped. With k = 0
        the draws are exactly those of a run without the option; once every init state is skipped, all
        are drawn again (the run never stalls)."""
        if not self.k:
            task = tasks[int(rng.integers(len(tasks)))]
            states = self.allowed(task)
            return task, states[int(rng.integers(len(states)))]
        open_states = {t.task_id: [i for i in self.allowed(t) if not self.skipped(t.task_id, i)] for t in tasks}
        candidates = [t for t in tasks if open_states[t.task_id]] or tasks
        task = candidates[int(rng.integers(len(candidates)))]
        states = open_states[task.task_id] or self.allowed(task)
        return task, states[int(rng.integers(len(states)))]

    def frac_skipped(self, tasks: list[TaskSpec]) -> float:
        total = sum(len(self.allowed(t)) for t in tasks)
        return sum(self.skipped(t.task_id, i) for t in tasks for i in self.allowed(t)) / max(total, 1)


def assemble_rewards(groups: list[list[Trajectory]], cfg: TrainConfig,
                     fallback: Callable[[int, Trajectory], Trajectory], pool: ReplayPool, rng: np.random.Generator
                     ) -> tuple[list[list[Member]], dict[str, int]]:
    """Members and rewards of each group: Eq. 4's tier weights, then for all-fail groups E5's fallback
    trajectory (reward 1 on success, 0.05 on failure) or E6's replayed success (reward 1; the group is
    skipped when the pool has none). Natural successes enter the pool. Returns (groups, counts)."""
    weights = cfg.tier_weights or (1.0,) * cfg.num_generations
    counts = {"natural_success": 0, "fallback_success": 0, "fallback_failure": 0, "replay_injected": 0,
              "skipped_groups": 0, "all_fail_groups": 0, "all_success_groups": 0}
    batch: list[list[Member]] = []
    for g, trajs in enumerate(groups):
        base = grpo.base_rewards(torch.tensor([t.success for t in trajs]),
                                 torch.tensor([t.progress for t in trajs]), cfg.reward)
        tiered = grpo.tiered_rewards(base, torch.tensor(weights, dtype=torch.float64))  # Eq. 4
        members = [Member(t, float(r)) for t, r in zip(trajs, tiered, strict=True)]
        counts["natural_success"] += sum(t.success for t in trajs)
        counts["all_success_groups"] += all(t.success for t in trajs)
        if cfg.replay_pool:
            for t in trajs:
                if t.success:
                    pool.add(t)
        if not any(t.success for t in trajs):
            counts["all_fail_groups"] += 1
            if cfg.fallback_steps:
                extra = fallback(g, trajs[0])
                reward = cfg.fallback_success_reward if extra.success else cfg.fallback_failure_reward
                counts["fallback_success" if extra.success else "fallback_failure"] += 1
                members.append(Member(extra, reward, "fallback"))
            elif cfg.replay_pool:
                cached = pool.sample(trajs[0].spec.task.task_id, rng)
                if cached is None:
                    counts["skipped_groups"] += 1
                    continue
                counts["replay_injected"] += 1
                members.append(Member(cached, 1.0, "replay"))
        batch.append(members)
    return batch, counts


def filtered_groups(rollout_groups: Callable[[int, int], list[list[Trajectory]]], cfg: TrainConfig,
                    env_step_room: int | None = None) -> tuple[list[list[Trajectory]], list[list[Trajectory]]]:
    """Roll out `tasks_per_step` groups; with a group filter, replace dropped groups with fresh ones for
    up to `max_resample_tries` extra rounds. `rollout_groups(first_index, count)` runs `count` groups.
    An extra round runs only if, at the mean env steps per group so far, it fits in `env_step_room`
    (the run's budget left), so resampling cannot carry a run far past its budget.
    Returns (kept groups, every group rolled out); a step may end with fewer groups than asked."""
    kept: list[list[Trajectory]] = []
    rolled: list[list[Trajectory]] = []
    for attempt in range(1 + cfg.max_resample_tries):
        needed = cfg.tasks_per_step - len(kept)
        if attempt and env_step_room is not None:
            used = sum(t.length for grp in rolled for t in grp)
            if used + needed * used / len(rolled) > env_step_room:
                break
        fresh = rollout_groups(len(rolled), needed)
        rolled += fresh
        success = torch.tensor([[t.success for t in grp] for grp in fresh])
        progress = torch.tensor([[t.progress for t in grp] for grp in fresh])
        keep = grpo.keep_groups(success, grpo.base_rewards(success, progress, cfg.reward), cfg.group_filter,
                                tuple(cfg.success_band))
        kept += [grp for grp, k in zip(fresh, keep.tolist(), strict=True) if k]
        if len(kept) >= cfg.tasks_per_step:
            break
    return kept, rolled
