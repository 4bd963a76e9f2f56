"""The evaluation protocol and its per-task statistics."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from grpo_cli.config import EvalConfig
from grpo_cli.envs.libero import TaskSpec, num_tasks, scene_mode, task_spec
from grpo_cli.envs.slots import make_env_slots
from grpo_cli.episodes import EpisodeSpec, Trajectory, episode_seed, usable_init_states
from grpo_cli.errors import UserError
from grpo_cli.policies.smolvla import SmolVLAAdapter
from grpo_cli.rollout import run_episodes
from grpo_cli.stats import wilson_interval
from grpo_cli.storage import write_eval


def resolve_tasks(suite: str, tasks: tuple[int, ...] | None) -> list[TaskSpec]:
    ids = range(num_tasks(suite)) if tasks is None else tasks
    specs = [task_spec(suite, t) for t in ids]
    if len({s.task_id for s in specs}) != len(specs):
        raise UserError("a task is listed twice")
    return specs


def eval_episodes(cfg: EvalConfig, tasks: list[TaskSpec]) -> list[EpisodeSpec]:
    """Episode i of a task starts from init state states[i mod len(states)], with its own noise stream
    (the "eval" stream: never one a training run draws)."""
    episodes = []
    for task in tasks:
        states = usable_init_states(cfg.init_states, task, "--init-states")
        episodes += [EpisodeSpec(task, states[i % len(states)], cfg.denoise_steps,
                                 episode_seed(cfg.seed, "eval", task.task_id, i), member=i)
                     for i in range(cfg.episodes_per_task)]
    return episodes


def run_eval(cfg: EvalConfig, adapter: SmolVLAAdapter, tasks: list[TaskSpec],
             on_episode: Callable[[Trajectory], None] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Run the protocol; returns per-episode columns (see storage.EPISODE_FIELDS) and the GL renderers."""
    slots = make_env_slots(max(cfg.num_envs, 1), cfg.image_size, processes=cfg.parallel_envs,
                           privileged_state=adapter.privileged_state, reply_timeout_s=cfg.env_timeout_s)
    try:
        trajs = run_episodes(adapter, slots, eval_episodes(cfg, tasks), max_steps=cfg.max_steps,
                             n_action_steps=cfg.n_action_steps, keep_images=False, sde_noise=cfg.sde_noise,
                             overlap=cfg.overlap_policy,
                             on_episode=on_episode)
        renderers = slots.renderers()
    finally:
        slots.close()
    return {"task_id": np.array([t.spec.task.task_id for t in trajs]),
            "init_state": np.array([t.spec.init_state for t in trajs]),
            "success": np.array([t.success for t in trajs]),
            "episode_length": np.array([t.length for t in trajs]),
            "noise_seed": np.array([t.spec.noise_seed for t in trajs], dtype=np.uint64)}, renderers


@dataclass(frozen=True)
class TaskResult:
    task_id: int
    name: str
    successes: int
    episodes: int
    mean_length: float

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)


def summarize(episodes: dict[str, np.ndarray], tasks: list[dict[str, Any]]) -> list[TaskResult]:
    results = []
    for task in tasks:
        mask = episodes["task_id"] == task["task_id"]
        n = int(mask.sum())
        results.append(TaskResult(task["task_id"], task["name"], int(episodes["success"][mask].sum()), n,
                                  float(episodes["episode_length"][mask].mean()) if n else float("nan")))
    return results


def mean_over_tasks(results: list[TaskResult]) -> tuple[float, tuple[float, float]]:
    """Mean of per-task success rates, with the Wilson interval of the pooled episodes.

    With equal episodes per task (the protocol) the pooled rate equals the mean of task rates.
    """
    mean = float(np.mean([r.rate for r in results])) if results else 0.0
    return mean, wilson_interval(sum(r.successes for r in results), sum(r.episodes for r in results))


def eval_part(cfg_json: str, task_ids: list[int], out: str, on_episode: Callable[[Any], None] | None = None
              ) -> str:
    """Evaluate the given tasks with the protocol and write an eval file (a shard's part or the whole
    file): the one eval body, for `grpo-vla eval` in-process and for array tasks. Returns the policy source."""
    values = json.loads(cfg_json)
    cfg = EvalConfig(**{**values, "tasks": tuple(task_ids)})
    tasks = resolve_tasks(cfg.suite, cfg.tasks)
    adapter = SmolVLAAdapter.load(cfg.policy, device=cfg.device)
    episodes, renderers = run_eval(cfg, adapter, tasks, on_episode=on_episode)
    table = [{"task_id": t.task_id, "name": t.name, "language": t.language} for t in tasks]
    write_eval(out, episodes, table, cfg.suite, cfg_json, adapter.identity, renderers, scene=scene_mode())
    return str(adapter.identity["source"])
