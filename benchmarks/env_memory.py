"""Peak resident memory of one LIBERO env in a fresh process, side by side for a few configurations.

    python benchmarks/env_memory.py [--suite libero_10] [--task 0] [--image-size 256]

Each row runs in its own fresh process, like an env worker: it gets the resolved task (LIBERO's task
registry imports torch, so the parent resolves it), builds `LiberoEnv`, resets to init state 0 and takes
30 steps with a frame on the last one; it prints peak RSS (VmHWM) at each stage and MuJoCo's arena use.
Rows: as shipped; `GRPO_VLA_SCENE=libero` (every texture uploaded, the unused shadow map allocated);
torch imported in the worker too (as before session 20); MuJoCo's asset cache on (its default); a
64 MiB arena. The test suite holds the first row to <= 1,228 MiB (tests/test_libero_env.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys


def _status() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {line.split(":")[0]: int(line.split()[1]) // 1024 for line in f if line.startswith(("VmRSS", "VmHWM"))}


def child(spec_json: str, image_size: int, mode: str) -> None:
    import numpy as np

    stages = {"start": _status()["VmHWM"]}
    if mode == "torch":
        import torch  # noqa: F401 - what every env worker carried before session 20
    from grpo_cli.envs.libero import LiberoEnv, TaskSpec

    spec = TaskSpec(**json.loads(spec_json))
    stages["imports"] = _status()["VmHWM"]
    if mode == "cache":
        import mujoco

        mujoco.mj_setCacheCapacity = lambda cache, size: size  # keep MuJoCo's default 500 MiB cache
    env = LiberoEnv(spec, image_size=image_size)
    stages["env built"] = _status()["VmHWM"]
    env.reset(0)
    for i in range(30):
        env.step(np.zeros(7), render=i == 29)
    stages["reset + 30 steps"] = _status()["VmHWM"]
    data = env.sim.data._data
    print(json.dumps({"stages": stages, "torch": "torch" in sys.modules,
                      "arena_mib": env.sim.model._model.narena / 2**20, "maxuse_arena_mib": data.maxuse_arena / 2**20,
                      "renderer": env.renderer}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="libero_10")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--child", choices=("shipped", "torch", "cache"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.spec, args.image_size, args.child)
        return
    from grpo_cli.envs.libero import task_spec

    spec = json.dumps(dataclasses.asdict(task_spec(args.suite, args.task)))
    rows = [("as shipped", "shipped", {}),
            ("GRPO_VLA_SCENE=libero", "shipped", {"GRPO_VLA_SCENE": "libero"}),
            ("torch imported in the worker", "torch", {}),
            ("MuJoCo's asset cache on (its default)", "cache", {}),
            ("as shipped, 64 MiB arena", "shipped", {"GRPO_VLA_MUJOCO_ARENA_MB": "64"})]
    print(f"{args.suite} task {args.task}, {args.image_size} px, peak RSS in MiB at each stage (fresh process per row)")
    for label, mode, env in rows:
        proc = subprocess.run([sys.executable, __file__, "--image-size", str(args.image_size), "--child", mode,
                               "--spec", spec],
                              capture_output=True, text=True, env={**os.environ, **env})
        if proc.returncode != 0:
            print(f"{label}: failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        stages = "  ".join(f"{k} {v:,}" for k, v in result["stages"].items())
        torch = "yes" if result["torch"] else "no"
        print(f"{label:38s} {stages}  | torch {torch}, arena {result['arena_mib']:,.0f} MiB, "
              f"used {result['maxuse_arena_mib']:.1f}")
    print(f"renderer: {result['renderer']}")


if __name__ == "__main__":
    main()
