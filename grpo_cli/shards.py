"""Rollout shards for training: long-lived workers that roll out each step's episodes with the newest policy.

A training run with `rollout_shards = K` starts K workers once (submitit jobs: local subprocesses or
a SLURM array on CPU nodes), so no step waits in the queue. The trainer and the workers talk through
files in RUN/shards/, each written under a temp name and renamed:

    params_<g>_<v>.pt         trainable parameters at hand-off v (workers load the frozen rest from cfg.policy)
    request_<g>_<v>_<k>.json  worker k's episodes of hand-off v
    part_<g>_<v>_<k>.h5       worker k's trajectories (a rollout file, FORMATS.md)
    stop_<g>                  workers exit

g is the pool's generation: a requeued trainer starts a new pool, and workers of an older one
(still queued or running) find no work of theirs, exit at `stop_<g>` or when idle.

A worker whose job ends early (a killed task, a crashed env) is resubmitted and picks up the same
request, up to `env_failure_retries` times; then the step stops with one line. Workers leave on
their own after `shard_idle_timeout_s` without work, so a dead trainer does not strand them.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import submitit
import torch

from grpo_cli.cluster import SlurmSettings, failure_reason, make_executor, split
from grpo_cli.envs.libero import task_spec
from grpo_cli.envs.slots import make_env_slots
from grpo_cli.episodes import EpisodeSpec
from grpo_cli.errors import UserError
from grpo_cli.policies.smolvla import SmolVLAAdapter
from grpo_cli.presets import resolve
from grpo_cli.rollout import run_episodes
from grpo_cli.storage import open_kind, publish, read_demo, write_rollout


def _atomic(path: Path, write: Callable[[str], None]) -> None:

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _part(request: Path) -> Path:
    return request.with_name(request.name.replace("request_", "part_").replace(".json", ".h5"))


class ShardWorker(submitit.helpers.Checkpointable):
    """Job body of worker `index`: serve requests until `stop` appears or it has been idle too long.
    Checkpointable: on preemption the job requeues and serves again (an unfinished request stays)."""

    def __call__(self, run_dir: str, generation: str, index: int, cfg_json: str) -> int:

        torch.set_num_threads(1)
        cfg = resolve(None, json.loads(cfg_json))
        folder = Path(run_dir) / "shards"
        adapter = SmolVLAAdapter.load(cfg.policy)
        slots = make_env_slots(cfg.shard_envs, cfg.image_size, privileged_state=adapter.privileged_state,
                               progress_shaping=cfg.progress_shaping, reach_shaping=cfg.reach_shaping,
                               stall_steps=cfg.stall_steps)
        loaded, served, idle_since = None, 0, time.time()
        try:
            while not (folder / f"stop_{generation}").exists():
                todo = [r for r in sorted(folder.glob(f"request_{generation}_*_{index}.json")) if not _part(r).exists()]
                if not todo:
                    if time.time() - idle_since > cfg.shard_idle_timeout_s:
                        break
                    time.sleep(0.05)
                    continue
                request = json.loads(todo[0].read_text())
                if request["params"] != loaded:
                    adapter.policy.load_state_dict(torch.load(folder / request["params"]), strict=False)
                    loaded = request["params"]
                episodes = [EpisodeSpec(task_spec(cfg.suite, e["task_id"]), e["init_state"], e["denoise_steps"],
                                        e["noise_seed"], group=e["group"], member=e["member"])
                            for e in request["episodes"]]
                trajs = run_episodes(adapter, slots, episodes, max_steps=cfg.max_steps,
                                     n_action_steps=cfg.n_action_steps, keep_images=True,
                                     sde_noise=cfg.sde_noise if cfg.likelihood == "sde" else 0.0,
                                     overlap=cfg.overlap_policy)
                write_rollout(_part(todo[0]), trajs, cfg_json, adapter.identity, {"suite": cfg.suite})
                served, idle_since = served + 1, time.time()
        finally:
            slots.close()
        return served


class ShardPool:
    """The trainer's side: start the workers, hand out each rollout, gather the parts in order."""

    env_failures = 0  # a failed worker is resubmitted (its job's retries), not an env restart of the trainer's

    def __init__(self, cfg: Any, run_dir: Path, log: Callable[[str], None] = print):
        self.cfg, self.run_dir, self.log = cfg, Path(run_dir), log
        self.folder = self.run_dir / "shards"
        self.jobs: list[Any] = []  # started at the first rollout
        self.version = 0
        self.handoff_s = 0.0  # trainer-side hand-off seconds, summed over runs (the trainer reads deltas)
        if cfg.shard_executor not in ("local", "slurm"):
            raise UserError("shard_executor must be local or slurm (workers run beside the trainer)")

    def _start(self) -> None:
        cfg = self.cfg
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in [*self.folder.glob("request_*"), *self.folder.glob("part_*"), *self.folder.glob("params_*")]:
            stale.unlink(missing_ok=True)  # hand-offs of an earlier (preempted) trainer are void
        for old in self.folder.glob("generation_*"):
            (self.folder / f"stop_{old.name.split('_', 1)[1]}").touch()  # its workers may still be alive
            old.unlink()
        self.generation = f"{time.time_ns():x}"
        (self.folder / f"generation_{self.generation}").touch()
        saved = self.run_dir / "slurm.json"
        settings = SlurmSettings.resolve(json.loads(saved.read_text()) if saved.is_file() else None)
        self.executor = make_executor(cfg.shard_executor, self.folder / "submitit", settings, "grpo-vla-shards")
        self.retries_left = cfg.env_failure_retries
        k = cfg.rollout_shards
        self.jobs = self.executor.map_array(ShardWorker(), [str(self.run_dir)] * k, [self.generation] * k,
                                            list(range(k)), [cfg.to_json()] * k)
        self.log(f"started {cfg.rollout_shards} rollout shard workers ({cfg.shard_executor}): "
            f"{', '.join(str(j.job_id) for j in self.jobs)}")

    def run(self, episodes: Sequence[Any], trainable: Callable[[], dict[str, torch.Tensor]] | None = None,
            label: str = "") -> list[Any]:
        """Roll out `episodes` on the workers with the trainable parameters `trainable()` gives;
        trajectories in episode order (None for the episodes of a shard given up on)."""
        if not self.jobs:
            self._start()
        assert trainable is not None, "the workers need the trainer's current parameters"
        v = self.version
        self.version += 1
        start = time.perf_counter()
        params = f"params_{self.generation}_{v:06d}.pt"
        _atomic(self.folder / params, lambda tmp: torch.save(trainable(), tmp))
        shards = split(list(episodes), self.cfg.rollout_shards)
        requests = []
        for k, shard in enumerate(shards):
            body = {"params": params, "episodes": [
                {"task_id": e.task.task_id, "init_state": e.init_state, "denoise_steps": e.denoise_steps,
                 "noise_seed": e.noise_seed, "group": e.group, "member": e.member} for e in shard]}
            request = self.folder / f"request_{self.generation}_{v:06d}_{k}.json"
            _atomic(request, lambda tmp, b=body: Path(tmp).write_text(json.dumps(b)))
            requests.append(request)
        handed_out = time.perf_counter()
        deadlines = [time.time() + self.cfg.shard_timeout_s] * len(requests)
        lost: set[int] = set()  # shards given up on (shard_failure = continue)
        while not all(_part(r).exists() for k, r in enumerate(requests) if k not in lost):
            for k, job in enumerate(self.jobs):
                if k >= len(requests) or k in lost or _part(requests[k]).exists():
                    continue
                hung = time.time() > deadlines[k]
                if hung:  # silent past its deadline (a GL deadlock, a stopped node): a failed worker
                    job.cancel(check=False)
                if hung or job.done():
                    reason = f"no result within {self.cfg.shard_timeout_s} s (hung); cancelled" if hung else None
                    if not self._replace(k, job, reason):
                        lost.add(k)
                    deadlines[k] = time.time() + self.cfg.shard_timeout_s
            time.sleep(0.05)
        gathered = time.perf_counter()
        trajs: list[Any] = []
        for k, request in enumerate(requests):
            if k in lost:  # None keeps every other trajectory at its episode's index
                trajs += [None] * len(shards[k])
                request.unlink()
                continue
            with open_kind(_part(request), "rollout") as f:
                demos = [f[f"data/demo_{i}"] for i in range(len(f["data"]))]
                trajs += [read_demo(g, task_spec(self.cfg.suite, int(g.attrs["task_id"]))) for g in demos]
            request.unlink()
            _part(request).unlink()
        for old in self.folder.glob("params_*.pt"):
            if old.name != params:
                old.unlink(missing_ok=True)
        # The trainer's share of the hand-off (parameters and requests out, parts in); the workers'
        # share (parameter load, part write, polling) shows as rollout time above the unsharded run's.
        self.handoff_s += (handed_out - start) + (time.perf_counter() - gathered)
        return trajs

    def _replace(self, k: int, job: Any, reason: str | None = None) -> bool:
        """Worker k's job ended (or hung: `reason` says so) while it owed a part: resubmit it (its request is
        still waiting). With no retries left: stop with one line, or (shard_failure = continue) return False."""
        if reason is None:
            try:
                job.result()
                reason = "the worker exited"
            except Exception as err:  # killed, cancelled, or an env crash
                reason = failure_reason(err)
        if self.retries_left <= 0:
            if self.cfg.shard_failure == "continue":
                self.log(f"rollout shard {k} (job {job.job_id}) ended: {reason}; no retries left, the step "
                         "continues without its episodes")
                return False
            raise UserError(f"rollout shard {k} failed and no retries are left: {reason}")
        self.retries_left -= 1
        self.jobs[k] = self.executor.submit(ShardWorker(), str(self.run_dir), self.generation, k, self.cfg.to_json())
        self.log(f"rollout shard {k} (job {job.job_id}) ended: {reason}; resubmitted as job {self.jobs[k].job_id}")
        return True

    def close(self) -> None:
        if not self.jobs:  # never started
            return
        (self.folder / f"stop_{self.generation}").touch()
        deadline = time.time() + 30
        while time.time() < deadline and not all(j.done() for j in self.jobs):
            time.sleep(0.2)
        for job in self.jobs:
            if not job.done():
                job.cancel(check=False)
