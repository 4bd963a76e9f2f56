"""What the low-poly scene buys on a CPU (issue 39): `lean` and `lowpoly` side by side, in one run.

    python benchmarks/scene_speed.py [--tasks libero_object:2,libero_10:0] [--repeats 3] [--demos 2]
                                     [--out docs/results/scene_speed.json]

Per task and scene, each in a fresh process (scenes alternate, `--repeats` times; medians reported):
- two camera frames at 64 and at 256 px: (steps with frames - steps without) / steps, in ms;
- the simulator limit, env steps/s at 64 px: physics plus the frames a policy reads, every 10th step (q = 10),
  and with frames every step (what a scripted demo records);
- grpo-vla's rollout with the tiny policy at q = 10 (one env, 64 px), env steps/s;
- scripted demos per hour (LIBERO-Object only: LIBERO-10 has no expert), `--demos` episodes at 64 px.
Ratios are lowpoly / lean of the medians. One torch thread; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from bench_common import write_result  # this folder

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "libero", "assets")
if "GRPO_VLA_LIBERO_ASSETS" not in os.environ and os.path.isdir(_shared):
    os.environ["GRPO_VLA_LIBERO_ASSETS"] = os.path.abspath(_shared)

SCENES = ("lean", "lowpoly")
STEPS = 200  # per rate measurement: the rollout benchmark's episode slice


def child(suite: str, task: int, demos: int) -> dict:
    import numpy as np
    import torch
    from env_throughput import ours  # same folder: the engine's timing helper

    from grpo_cli.envs.libero import LiberoEnv, task_spec
    from grpo_cli.expert import run_expert
    from grpo_cli.policies.smolvla import SmolVLAAdapter

    torch.set_num_threads(1)
    spec = task_spec(suite, task)
    actions = np.random.default_rng(task).uniform(-0.3, 0.3, (STEPS, 7))
    out: dict = {}
    start = time.perf_counter()
    env = LiberoEnv(spec, image_size=64)
    out["build_s"] = round(time.perf_counter() - start, 2)
    env.close()

    def rate(env: LiberoEnv, every: int) -> float:
        env.reset(0)
        start = time.perf_counter()
        for i, a in enumerate(actions):
            env.step(a, render=i % every == every - 1)
        return STEPS / (time.perf_counter() - start)

    for size in (64, 256):
        env = LiberoEnv(spec, image_size=size)
        rate(env, STEPS)  # warm the renderer
        without, with_frames = rate(env, STEPS + 1), rate(env, 1)
        out[f"two_frames_{size}px_ms"] = round(1000 * (1 / with_frames - 1 / without), 2)
        if size == 64:
            out["physics_steps_per_s"] = round(without, 1)
            out["limit_q10_steps_per_s"] = round(rate(env, 10), 1)
            out["limit_every_step_steps_per_s"] = round(with_frames, 1)
        env.close()
    out["rollout_q10_steps_per_s"] = round(ours(spec, STEPS, 64, 10, SmolVLAAdapter.load("tiny")), 1)
    if suite == "libero_object" and demos:
        env = LiberoEnv(spec, image_size=64, privileged_state=True)
        run_expert(env, 0, noise_std=0.0, seed=0, max_steps=5)  # warm
        start, steps = time.perf_counter(), 0
        for i in range(demos):
            steps += run_expert(env, i, noise_std=0.0, seed=0).length
        elapsed = time.perf_counter() - start
        env.close()
        out["demos_per_hour"] = round(3600 * demos / elapsed, 1)
        out["demo_steps"] = steps
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="libero_object:2,libero_10:0")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demos", type=int, default=2)
    parser.add_argument("--out", default="docs/results/scene_speed.json")
    parser.add_argument("--child", nargs=2, metavar=("SUITE", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.demos)))
        return

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    for item in args.tasks.split(","):
        suite, task = item.split(":")
        runs: dict[str, list[dict]] = {s: [] for s in SCENES}
        for _ in range(args.repeats):
            for scene in SCENES:
                proc = subprocess.run([sys.executable, __file__, "--demos", str(args.demos), "--child", suite, task],
                                      capture_output=True, text=True, env={**os.environ, "GRPO_VLA_SCENE": scene})
                if proc.returncode != 0:
                    sys.exit(f"{suite} task {task} ({scene}) failed: {proc.stderr.strip().splitlines()[-1]}")
                runs[scene].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        medians = {s: {k: statistics.median(r[k] for r in runs[s]) for k in runs[s][0]} for s in SCENES}
        row = {"suite": suite, "task": int(task), "median": medians,
               "lowpoly_over_lean": {k: round(medians["lowpoly"][k] / medians["lean"][k], 2)
                                     for k in medians["lean"] if k != "demo_steps"},
               "runs": runs}
        rows.append(row)
        print(f"{suite} task {task} (medians of {args.repeats}; lean -> lowpoly, ratio):")
        for k in medians["lean"]:
            if k != "demo_steps":
                print(f"  {k:32s} {medians['lean'][k]:9.1f} -> {medians['lowpoly'][k]:9.1f}  "
                      f"x{row['lowpoly_over_lean'][k]:.2f}", flush=True)
    result = {
        "what": "lean vs lowpoly scene: frames, simulator limit, tiny-policy rollout, scripted demos (issue 39)",
        "date": datetime.date.today().isoformat(), "commit": commit,
        "command": "python benchmarks/scene_speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs), {platform.platform()}",
        "steps_per_rate": STEPS, "tasks": rows,
    }
    out = write_result(args.out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
