"""Env steps/s on one LIBERO task, measured side by side in one run (the machine is noisy).

    python benchmarks/env_throughput.py [--task 0] [--steps 200] [--image-size 256]

Modes: physics only (no cameras), always-render (both cameras every step, lerobot's env behaviour),
and grpo-vla's rollout with the tiny policy querying every 10 and every 50 steps (rendering only those
frames). Ratios are to physics only. One torch thread, one process.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "libero", "assets")
if "GRPO_VLA_LIBERO_ASSETS" not in os.environ and os.path.isdir(_shared):
    os.environ["GRPO_VLA_LIBERO_ASSETS"] = os.path.abspath(_shared)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from grpo_cli.envs.libero import LiberoEnv, task_spec  # noqa: E402
from grpo_cli.envs.slots import make_env_slots  # noqa: E402
from grpo_cli.policies.smolvla import SmolVLAAdapter  # noqa: E402
from grpo_cli.rollout import EpisodeSpec, run_episodes  # noqa: E402


def bare(spec, steps: int, image_size: int, render_every_step: bool, images: bool) -> float:
    env = LiberoEnv(spec, image_size=image_size, images=images, render_every_step=render_every_step)
    actions = np.random.default_rng(0).uniform(-0.3, 0.3, (steps, 7))
    env.reset(0)
    start = time.perf_counter()
    for a in actions:
        env.step(a, render=False)
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def ours(spec, steps: int, image_size: int, every: int, adapter: SmolVLAAdapter, workers: int = 1,
         processes: bool = False, rss: list[float] | None = None, overlap: bool = False,
         trajs_out: list | None = None) -> float:
    """grpo-vla's engine: `workers` episodes in lockstep (one batched policy call per query, or two lanes
    taking turns with `overlap`), envs inline or in spawned processes. Envs are built outside the timed
    region; each episode's soft reset is inside. `rss`: filled with each worker process's resident MiB
    after the run (processes=True); `trajs_out`: filled with the trajectories."""
    slots = make_env_slots(workers, image_size, processes=processes)
    slots.reset_many([(i, spec, i) for i in range(workers)])
    episodes = [EpisodeSpec(spec, i, 10, noise_seed=i) for i in range(workers)]
    start = time.perf_counter()
    trajs = run_episodes(adapter, slots, episodes, max_steps=steps, n_action_steps=every, overlap=overlap)
    elapsed = time.perf_counter() - start
    if rss is not None and processes:
        rss += slots.worker_rss_mb()
    if trajs_out is not None:
        trajs_out += trajs
    slots.close()
    return sum(t.length for t in trajs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = task_spec("libero_10", args.task)
    adapter = SmolVLAAdapter.load("tiny")
    results = {
        "physics only": bare(spec, args.steps, args.image_size, False, images=False),
        "always-render (2 cameras/step)": bare(spec, args.steps, args.image_size, True, images=True),
        "grpo-vla rollout, query every 10": ours(spec, args.steps, args.image_size, 10, adapter),
        "grpo-vla rollout, query every 50": ours(spec, args.steps, args.image_size, 50, adapter),
        "2 envs inline, query every 10": ours(spec, args.steps, args.image_size, 10, adapter, 2, False),
        "2 envs in 2 processes, query every 10": ours(spec, args.steps, args.image_size, 10, adapter, 2, True),
    }
    base = results["physics only"]
    print(f"libero_10 task {args.task}, {args.steps} steps/mode, {args.image_size}px, tiny policy, "
          f"{platform.node()} ({os.cpu_count()} cores)")
    print(f"{'mode':40s} {'steps/s':>9s} {'x physics':>10s}")
    for name, rate in results.items():
        print(f"{name:40s} {rate:9.1f} {rate / base:10.3f}")
    ratio = results["2 envs in 2 processes, query every 10"] / results["2 envs inline, query every 10"]
    print(f"2 worker processes / inline (same 2 envs): {ratio:.2f}x")


if __name__ == "__main__":
    main()
