"""A training run, whatever learns in it: the run directory, the step loop, checkpoints, resume, metrics,
and the preemptible SLURM job. GRPO (`train.Trainer`) and noise steering (`steer.SteerTrainer`) both run
through here; each supplies a trainer with this interface:

    step(env_step_room) -> metrics     one step; metrics hold at least "step" and "env_steps"
    save() -> Path                     a checkpoint of the state after the last step, RUN/checkpoints/step_N.h5
    load(path)                         restore that state (step_index included)
    step_index                         steps done
    close()                            free envs and workers

Run directory: config.json (the config, JSON), metrics.jsonl (one line per step), checkpoints/, and the
sinks' folders. A resumed run repeats exactly what the uninterrupted run would have done: every random
choice of step s derives from (seed, s), and a checkpoint holds the rest.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from grpo_cli.errors import UserError
from grpo_cli.sinks import Sinks
from grpo_cli.storage import read_metrics


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*.h5"))


def _milestone(path: Path, save_every: int) -> bool:
    """Whether a checkpoint is one of the kept ones (step a multiple of save_every)."""
    return int(path.stem.removeprefix("step_")) % save_every == 0


def over_budget(cfg: Any, env_steps: int) -> bool:
    """Whether `env_steps` would exceed the run's env-step budget (none when it is 0).

    The loop asks this about the total *after* the next step, estimated from the last one, so runs
    of different presets stop at or just under the same budget instead of overshooting by a step.
    """
    return bool(cfg.env_step_budget) and env_steps > cfg.env_step_budget


def run_loop(make_trainer: Callable[[], Any], cfg: Any, run_dir: str | Path, resume: bool = False,
             log: Callable[[str], None] = print, on_step: Callable[[dict[str, float]], None] | None = None,
             stop: threading.Event | None = None) -> Path:
    """Run (or resume) a run in `run_dir` with the trainer `make_trainer()` builds; returns the last checkpoint.

    `stop`: when set (by a preemption handler in another thread), the run ends after the step in
    flight, with a checkpoint of that step, so a resumed run neither loses nor repeats a step."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.json"
    if resume:
        if not config_file.is_file():
            raise UserError(f"{run_dir} holds no run to resume (no config.json)")
    elif config_file.exists():
        raise UserError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --run-dir")
    trainer = make_trainer()  # fails early (policy, tasks) before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume or json.loads(config_file.read_text()) != json.loads(cfg.to_json()):  # new, or extended
        tmp = config_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(json.loads(cfg.to_json()), indent=1))
        tmp.replace(config_file)
    metrics_file = run_dir / "metrics.jsonl"
    last, sinks = None, None
    try:
        found = checkpoints(run_dir)
        if resume and found:
            trainer.load(found[-1])
            last = found[-1]
            log(f"resumed from {found[-1].name} (step {trainer.step_index})")
            # a kill between a checkpoint's rename and its predecessor's removal leaves that predecessor
            for stale in found[:-1]:
                if not _milestone(stale, cfg.save_every):
                    stale.unlink(missing_ok=True)
        # opened after the load: what an earlier process logged past the checkpoint is purged, then redone
        sinks = Sinks(run_dir, json.loads(cfg.to_json()), cfg.log_tensorboard, cfg.log_wandb, resume,
                      next_step=trainer.step_index + 1)
        # Drop metrics of steps after the checkpoint (a step in flight when the run died).
        env_steps = 0
        if metrics_file.exists():
            rows, note = read_metrics(metrics_file)
            if note:
                log(note)
            kept = [row for row in rows if row["step"] <= trainer.step_index]
            env_steps = sum(row["env_steps"] for row in kept)
            tmp = metrics_file.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
            tmp.replace(metrics_file)
        next_step_cost = 0  # env steps the next step is expected to take: the last step's count
        while trainer.step_index < cfg.steps and not over_budget(cfg, env_steps + next_step_cost):
            metrics = trainer.step(cfg.env_step_budget - env_steps if cfg.env_step_budget else None)
            next_step_cost = metrics["env_steps"]
            env_steps += metrics["env_steps"]
            metrics["env_steps_total"] = env_steps
            with metrics_file.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
            sinks.log(metrics)
            if on_step:
                on_step(metrics)
            out_of_budget = over_budget(cfg, env_steps + next_step_cost)
            stopping = stop is not None and stop.is_set()
            kept = trainer.step_index % cfg.save_every == 0 or trainer.step_index == cfg.steps
            if kept or out_of_budget or stopping or cfg.save_latest:
                previous, last = last, trainer.save()
                # The in-between checkpoint goes only once its successor is safely on disk.
                if previous is not None and previous != last and not _milestone(previous, cfg.save_every):
                    previous.unlink(missing_ok=True)
            if stopping:
                log(f"stopping after step {trainer.step_index} on request (checkpoint {last.name})")
                break
    finally:
        trainer.close()
        if sinks is not None:
            sinks.close()
    return last


# --- the training job: a preemptible SLURM/submitit task -----------------------------------------------
class TrainJob(submitit.helpers.Checkpointable):
    """One run as a preemptible job: (re)starts or resumes `run_dir`, checkpoints on signal.

    `entry(cfg_json, run_dir, resume, stop)` runs it: `train.run_job` (GRPO) or `steer.run_job`."""

    def __init__(self, entry: Callable[..., Path | None]) -> None:
        self.entry = entry
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"entry": self.entry}  # the thread and its event stay behind; a requeued job starts fresh ones

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["entry"])

    def __call__(self, cfg_json: str, run_dir: str) -> str | None:
        resume = (Path(run_dir) / "config.json").is_file()  # a requeued job continues its own run
        result: dict[str, Any] = {}
        self._stop = threading.Event()

        def work() -> None:
            try:
                result["last"] = self.entry(cfg_json, run_dir, resume, self._stop)
            except BaseException as err:  # handed to the main thread, which raises it
                result["error"] = err

        # The main thread only waits, so it can run submitit's signal handler at any moment.
        self._thread = threading.Thread(target=work, name="train")
        self._thread.start()
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)
        if "error" in result:
            raise result["error"]
        return str(result["last"]) if result.get("last") else None

    def checkpoint(self, cfg_json: str, run_dir: str) -> Any:
        """Called by submitit on the pre-timeout / preemption signal: finish the step, save, requeue."""
        if self._stop is not None and self._thread is not None:
            self._stop.set()
            self._thread.join()
        return submitit.helpers.DelayedSubmission(TrainJob(self.entry), cfg_json, run_dir)
