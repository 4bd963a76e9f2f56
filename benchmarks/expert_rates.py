"""The scripted expert's success per task over init states (physics only, no frames), into a results file.

    python benchmarks/expert_rates.py --suite libero_10 --tasks 0,1,4,6,7 --init-states 0-49 \
        --out docs/results/expert_rates_libero_10.json

Each episode is `grpo-vla demos`'s (`run_expert`, demo noise 0.1, seed 0) without the cameras. A task the
expert cannot carry out is recorded with its one-line reason instead of a rate. The file is rewritten after
every task (temp file, then rename), so a stopped run keeps the tasks it finished. `--workers N` runs N tasks
at a time in spawned processes (one torch thread each; the file is written as each task finishes).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import subprocess
import time
from pathlib import Path

from bench_common import task_ids, write_result


def task_rate(job: tuple[str, int, str, float]) -> tuple[int, dict]:
    """One task's entry: its successes over the init states, or the expert's one-line reason it cannot."""
    suite, task, init_states, noise_std = job
    from grpo_cli.envs.libero import LiberoEnv, task_spec
    from grpo_cli.errors import UserError
    from grpo_cli.expert import run_expert

    spec = task_spec(suite, task)
    env = LiberoEnv(spec, image_size=64, images=False, privileged_state=True)
    entry: dict = {"name": spec.name}
    t0 = time.perf_counter()
    try:
        episodes = [run_expert(env, i, noise_std=noise_std, seed=0) for i in task_ids(init_states)]
        entry.update(successes=sum(d.success for d in episodes), episodes=len(episodes),
                     failed_init_states=[d.init_state for d in episodes if not d.success],
                     mean_length=sum(d.length for d in episodes) / len(episodes))
    except UserError as e:
        entry["cannot"] = str(e)
    finally:
        env.close()
    entry["wall_s"] = round(time.perf_counter() - t0, 1)
    return task, entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_10")
    parser.add_argument("--tasks", default="0-9")
    parser.add_argument("--init-states", default="0-49")
    parser.add_argument("--noise-std", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "grpo_cli"], capture_output=True,
                           text=True).stdout.strip()
    result = {"suite": args.suite, "noise_std": args.noise_std, "init_states": args.init_states,
              "command": "python benchmarks/expert_rates.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "commit": commit + (" (with uncommitted changes)" if dirty else ""),
              "date": time.strftime("%Y-%m-%d %H:%M"), "tasks": {}}
    jobs = [(args.suite, task, args.init_states, args.noise_std) for task in task_ids(args.tasks)]
    with cf.ProcessPoolExecutor(max(1, args.workers), mp_context=mp.get_context("spawn")) as pool:
        for task, entry in pool.map(task_rate, jobs):  # in task order; each written as soon as it is in
            result["tasks"][str(task)] = entry
            write_result(args.out, result)
            print(f"task {task}: " + (f"{entry['successes']}/{entry['episodes']}" if "successes" in entry
                                      else entry["cannot"]), flush=True)
    print(f"wrote {Path(args.out)}")


if __name__ == "__main__":
    main()
