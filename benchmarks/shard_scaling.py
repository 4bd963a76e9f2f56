"""Local rollout shards: trajectories per minute with 1 and 2 shard workers, and what sharding costs.

    python benchmarks/shard_scaling.py [--groups 4] [--num-generations 2] [--max-steps 100]

In one run, on the same groups (tiny policy, LIBERO-10 task 0, 128 px):
  (a) `grpo-vla rollout` in this process (no sharding);
  (b) `--shards 1 --executor local`: the same work in one submitit subprocess, so (b) - (a) is what
      sharding adds per hand-off: process start, policy load, env build, the part file and the merge;
  (c) `--shards 2 --executor local`: two subprocesses, one env each.
Prints trajectories/minute, the ratio (c)/(a) and the overhead share ((b) - (a)) / (b). Each
command is timed end to end (the CLI's start-up included), on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_shared = Path(__file__).resolve().parents[2] / "shared" / "libero" / "assets"
if "GRPO_VLA_LIBERO_ASSETS" not in os.environ and _shared.is_dir():
    os.environ["GRPO_VLA_LIBERO_ASSETS"] = str(_shared)


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "grpo_cli", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=100)
    args = parser.parse_args()
    trajectories = args.groups * args.num_generations
    with tempfile.TemporaryDirectory() as tmp:
        base = ["rollout", "--tasks", "0", "--init-states", f"0-{args.groups - 1}", "--num-generations",
                str(args.num_generations), "--max-steps", str(args.max_steps), "--image-size", "128",
                "--n-action-steps", "10", "--num-envs", "1"]
        t_in = timed([*base, "--out", f"{tmp}/a.h5"])
        t_one = timed([*base, "--out", f"{tmp}/b.h5", "--shards", "1", "--executor", "local"])
        t_two = timed([*base, "--out", f"{tmp}/c.h5", "--shards", "2", "--executor", "local"])
    print(f"{trajectories} trajectories of {args.max_steps} steps (tiny policy, 128 px, query every 10)")
    for name, t in (("(a) in-process", t_in), ("(b) 1 shard", t_one), ("(c) 2 shards", t_two)):
        print(f"{name:16s} {t:7.1f} s   {60 * trajectories / t:6.1f} trajectories/min")
    print(f"ratio 2 shards / in-process: {t_in / t_two:.2f}x")
    print(f"sharding overhead ((b) - (a)) / (b): {100 * (t_one - t_in) / t_one:.0f}% of the shard's time")


if __name__ == "__main__":
    main()
