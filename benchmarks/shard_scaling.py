"""Training with rollout shard workers: trajectories per minute with 1 and 2 workers, and what the
per-step hand-off (parameter file, requests, part files, policy reload) costs.

    python benchmarks/shard_scaling.py [--steps 4] [--groups 2] [--num-generations 4] [--max-steps 100]

In one run, the same `e2`-style training (tiny policy, LIBERO-10 task 0, 128 px, SDE likelihood, same
seeds, so every configuration rolls out bit-identical trajectories) three ways:
  (a) unsharded: the trainer steps one env itself (`rollout_shards = 0`, `num_envs = 1`);
  (b) one long-lived local shard worker (`rollout_shards = 1`, `shard_envs = 1`);
  (c) two shard workers, one env each.
Step 1 is left out of every rate (it includes starting the workers). Prints trajectories/minute of
rollout time, the ratio (c)/(b), and the hand-off overhead per step as a share of (b)'s step time:
(b)'s rollout time minus (a)'s (the same env work), and the trainer's own part (`time/shard_handoff`).
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_shared = Path(__file__).resolve().parents[2] / "shared" / "libero" / "assets"
if "GRPO_VLA_LIBERO_ASSETS" not in os.environ and _shared.is_dir():
    os.environ["GRPO_VLA_LIBERO_ASSETS"] = str(_shared)


def train_metrics(run_dir: Path, settings: dict[str, str]) -> list[dict[str, float]]:
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    subprocess.run([sys.executable, "-m", "grpo_cli", "train", "--run-dir", str(run_dir), *sets], check=True,
                   capture_output=True)
    from grpo_cli.storage import read_metrics

    return read_metrics(run_dir / "metrics.jsonl")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--groups", type=int, default=2, help="tasks_per_step: groups per step")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=100)
    args = parser.parse_args()
    common = {"policy": "tiny", "tasks": "0", "image_size": "128", "n_action_steps": "10",
              "max_steps": str(args.max_steps), "steps": str(args.steps), "likelihood": "sde",
              "num_generations": str(args.num_generations), "tasks_per_step": str(args.groups),
              "denoise_tiers": f"{args.num_generations}x10", "tier_weights": "", "train_backbone": "false",
              "save_latest": "false", "save_every": "1000", "reward": "progress", "progress_shaping": "0.5"}
    variants = {"(a) unsharded": {"num_envs": "1"},
                "(b) 1 shard worker": {"rollout_shards": "1", "shard_envs": "1"},
                "(c) 2 shard workers": {"rollout_shards": "2", "shard_envs": "1"}}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in variants.items():
            later = train_metrics(Path(tmp) / name[1], {**common, **extra})[1:]
            rollout = sum(m["time/rollout"] for m in later)
            rows[name] = {"rollout_s": rollout / len(later),
                          "step_s": sum(m["time/rollout"] + m["time/update"] for m in later) / len(later),
                          "handoff_s": sum(m.get("time/shard_handoff", 0.0) for m in later) / len(later),
                          "traj_per_min": 60 * sum(m["groups_rolled_out"] * args.num_generations for m in later)
                          / rollout}
    print(f"{args.steps - 1} timed steps of {args.groups} x {args.num_generations} trajectories, <= {args.max_steps}"
          " env steps each (tiny policy, 128 px, query every 10)")
    for name, r in rows.items():
        print(f"{name:22s} rollout {r['rollout_s']:6.1f} s/step  step {r['step_s']:6.1f} s  "
              f"{r['traj_per_min']:6.1f} trajectories/min  trainer hand-off {r['handoff_s']:.3f} s/step")
    a, b, c = rows.values()
    print(f"ratio 2 workers / 1 worker: {c['traj_per_min'] / b['traj_per_min']:.2f}x   "
          f"2 workers / unsharded: {c['traj_per_min'] / a['traj_per_min']:.2f}x")
    print(f"sharding overhead per step ((b) - (a) rollout time) / (b) step time: "
          f"{100 * (b['rollout_s'] - a['rollout_s']) / b['step_s']:.1f}%  "
          f"(trainer's own hand-off: {100 * b['handoff_s'] / b['step_s']:.1f}%)")


if __name__ == "__main__":
    main()
