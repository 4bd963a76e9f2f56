"""Running grpo-vla work on SLURM (or locally) through submitit: train arrays, eval and rollout shards.

Executors: `local` runs in this process (rollout/eval shards: in local subprocesses through
submitit), `slurm` submits to SLURM, `debug` is submitit's in-process executor (for tests).

Files are the hand-off: each shard writes its part atomically under `OUT.parts/`, the submitting
process merges the parts in order into OUT and removes them. A shard that fails (an env crash, a
killed task) is resubmitted up to `max_retries` times, then reported in one line.

Preemption: `TrainJob` is a submitit `Checkpointable`. Training runs in a worker thread; on the
signal SLURM sends `signal_delay_s` before a time limit (or on preemption), `checkpoint` asks the
trainer to stop after the step in flight, waits for the checkpoint of that step, and requeues the
job, which resumes from it: no step is lost or repeated.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import submitit

from grpo_cli.errors import UserError

EXECUTORS = ("local", "slurm", "debug")


@dataclass(frozen=True)
class SlurmSettings:
    """What a SLURM job asks for; from a YAML `slurm:` section, then command-line options."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 240
    """wall-time limit per job (minutes); a trainer checkpoints and requeues itself before it"""
    cpus_per_task: int = 2
    gpus_per_node: int = 0
    mem_gb: int = 16
    array_parallelism: int = 64
    signal_delay_s: int = 180
    """seconds between the warning signal and the limit: must cover one training step and a checkpoint"""
    setup: tuple[str, ...] = ()
    """shell lines run before each job (module load ..., export ...)"""
    container: str | None = None
    """an Apptainer image: jobs run as `apptainer exec --nv IMAGE python ...`"""
    max_retries: int = 2
    """resubmissions of a failed rollout/eval shard before the command stops with an error"""
    max_requeues: int = 200
    """time-limit requeues a job may take (submitit's max_num_timeout, whose default of 3 would end a run
    after ~16 h of 4-hour slices); 200 slices of 4 hours are over a month. Preemptions never count"""

    @classmethod
    def resolve(cls, section: dict[str, Any] | None, **options: Any) -> SlurmSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {**(section or {}), **{k: v for k, v in options.items() if v not in (None, ())}}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown slurm setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        if "setup" in values:
            values["setup"] = tuple([values["setup"]] if isinstance(values["setup"], str) else values["setup"])
        settings = cls(**values)
        if (settings.time_min < 1 or settings.cpus_per_task < 1 or settings.mem_gb < 1 or settings.max_retries < 0
                or settings.max_requeues < 0):
            raise UserError("slurm time_min, cpus_per_task and mem_gb must be >= 1, max_retries and max_requeues >= 0")
        if settings.container and not Path(settings.container).is_file():
            raise UserError(f"container image {settings.container} not found")
        return settings


def make_executor(kind: str, folder: Path, settings: SlurmSettings, name: str) -> Any:
    """A submitit executor whose logs and pickles live in `folder` (inside the run / output dir)."""
    if kind not in EXECUTORS:
        raise UserError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=settings.max_requeues)
        executor.update_parameters(timeout_min=settings.time_min)
        return executor
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm needs SLURM's sbatch on PATH (this machine has none)")
    python = (f"apptainer exec --nv {shlex.quote(settings.container)} python" if settings.container else None)
    executor = submitit.SlurmExecutor(folder=folder, python=python, max_num_timeout=settings.max_requeues)
    executor.update_parameters(
        job_name=name, time=settings.time_min, cpus_per_task=settings.cpus_per_task, mem=f"{settings.mem_gb}GB",
        signal_delay_s=settings.signal_delay_s, array_parallelism=settings.array_parallelism,
        setup=["export OMP_NUM_THREADS=1", *settings.setup], stderr_to_stdout=True,
        **({"gpus_per_node": settings.gpus_per_node} if settings.gpus_per_node else {}),
        **{k: v for k, v in (("partition", settings.partition), ("account", settings.account),
                             ("qos", settings.qos)) if v})
    return executor


def submit_training(executor: Any, job: Callable[[str, str], Any], runs: Sequence[tuple[str, str]]) -> list[Any]:
    """One array job, one task per (config JSON, run directory); `job` is train.TrainJob()."""
    return executor.map_array(job, [c for c, _ in runs], [d for _, d in runs])


# --- shards: rollout and eval (their job bodies: rollout.rollout_part, evaluate.eval_part) ----------------
def failure_reason(err: BaseException) -> str:
    """The one line of a submitit failure that says what went wrong (its message is a whole traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line)]
    return (raised[-1] if raised else lines[0] if lines else type(err).__name__)[:300]


def run_shards(executor: Any, fn: Callable[..., Any], shards: Sequence[tuple[Any, ...]], max_retries: int,
               log: Callable[[str], None] = print) -> list[Any]:
    """Run fn(*shard) for every shard as one array job; resubmit failed shards up to max_retries times."""
    results: list[Any] = [None] * len(shards)
    pending = list(range(len(shards)))
    for attempt in range(max_retries + 1):
        jobs = executor.map_array(fn, *zip(*[shards[i] for i in pending], strict=True))
        failed = []
        for i, job in zip(pending, jobs, strict=True):
            try:
                results[i] = job.result()
            except Exception as err:  # a crashed env, a killed or cancelled task: try again
                log(f"shard {i} (job {job.job_id}) failed on try {attempt + 1}: {failure_reason(err)}")
                failed.append(i)
        pending = failed
        if not pending:
            return results
    raise UserError(f"shard(s) {', '.join(map(str, pending))} failed {max_retries + 1} times; "
                    f"logs in {executor.folder}")


def parts_dir(out: Path) -> Path:
    folder = out.parent / f".{out.name}.parts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def split(items: Sequence[Any], k: int) -> list[list[Any]]:
    """k contiguous, nearly equal, non-empty slices (fewer when there are fewer items)."""
    k = max(1, min(k, len(items)))
    bounds = np.linspace(0, len(items), k + 1).round().astype(int)
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

