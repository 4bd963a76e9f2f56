"""Issue 4's acceptance check by hand: `grpo-vla train --exp e1,e2 --executor slurm` on the local
test cluster, each run with 2 SLURM rollout shard workers, e1's task hard-requeued after its step 1.

    python scripts/check_slurm_sweep.py [--steps 3] [--out /tmp/slurm-sweep]

Starts the single-node cluster of tests/slurm_cluster.py (installs slurm-wlm + munge as root when
missing), prints each run's steps and its number of shard-worker jobs, and exits 1 unless both runs
end with steps 1..N exactly once. The CI test does the same for e5,e4 with parameter checks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import slurm_cluster  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="/tmp/slurm-sweep")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(slurm_cluster.start(out / "cluster"))
    try:
        sets = ["policy=tiny", "tasks=0", "max_steps=10", "n_action_steps=5", "image_size=64", "num_envs=1",
                "rollout_shards=2", "shard_envs=1", "shard_executor=slurm"]
        cmd = [sys.executable, "-m", "grpo_cli", "train", "--exp", "e1,e2", "--run-dir", str(out / "sweep"),
               "--steps", str(args.steps), *[a for s in sets for a in ("--set", s)], "--executor", "slurm",
               "--cpus", "1", "--mem-gb", "3", "--time-min", "30"]
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout + proc.stderr)
        if proc.returncode:
            return 1
        jobs = dict(line.split(" ", 1)[1].split(": ", 1)[::-1] for line in proc.stdout.splitlines()
                    if line.startswith("job "))
        e1_job = jobs[str(out / "sweep" / "e1")]
        metrics = out / "sweep" / "e1" / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):
            time.sleep(1)
        subprocess.run(["scontrol", "requeue", e1_job], check=True)
        print(f"requeued {e1_job} after its step 1")
        while any(subprocess.run(["squeue", "-h", "-j", j, "-o", "%T"], capture_output=True, text=True).stdout.strip()
                  for j in jobs.values()):
            reason = subprocess.run(["squeue", "-h", "-j", e1_job, "-o", "%r"], capture_output=True,
                                    text=True).stdout
            if "BeginTime" in reason:
                subprocess.run(["scontrol", "update", f"JobId={e1_job}", "StartTime=now"], capture_output=True)
            time.sleep(2)
        ok = True
        for exp in ("e1", "e2"):
            run = out / "sweep" / exp
            steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
            workers = len(list((run / "shards" / "submitit").glob("*_log.out")))
            print(f"{exp}: steps {steps}, shard-worker job logs {workers}, "
                  f"checkpoints {[p.name for p in sorted((run / 'checkpoints').glob('*.h5'))]}")
            ok &= steps == list(range(1, args.steps + 1)) and workers >= 2
        print(f"{'OK' if ok else 'FAILED'} in {time.time() - start:.0f} s")
        return 0 if ok else 1
    finally:
        slurm_cluster.stop(out / "cluster")


if __name__ == "__main__":
    sys.exit(main())
