"""Proof of sameness for grpo-vla's lean scene (issue 28): every task of LIBERO-10 and LIBERO-Object, whole
episodes, `GRPO_VLA_SCENE=lean` (the default) against `libero` (LIBERO's model as compiled), bit for bit.

    python benchmarks/scene_sameness.py [--suites libero_10,libero_object] [--tasks 0-9] [--image-size 128]
                                        [--out docs/results/scene_sameness.json]

Per task and scene mode, one fresh process runs two full episodes from init state 2:
- a tiny-policy episode through a spawned env worker, as `rollout`/`train` run them (frames at every
  policy query, 10 steps apart); the worker's peak RSS is read from /proc before it closes;
- a scripted-expert episode (LIBERO-Object; frames every step) or, where no expert exists (LIBERO-10),
  seeded random actions to the step limit (frames every 10th step), in process, recording the scene's
  peak contacts, constraint rows and arena use over the episode.
Both modes' states, actions, frames and success are hashed and compared. The result file keeps, per
task, the hashes' verdict, the worker's peak RSS in each mode, texture counts and the contact peaks.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("libero", "lean")


def _digest(*arrays) -> str:
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def child(suite: str, task: int, image_size: int) -> dict:
    import numpy as np
    import torch

    from grpo_cli.envs.libero import CAMERAS, LiberoEnv, task_spec
    from grpo_cli.envs.slots import ProcessEnvSlots, process_memory_mb
    from grpo_cli.expert import run_expert
    from grpo_cli.policies.smolvla import SmolVLAAdapter
    from grpo_cli.rollout import EpisodeSpec, run_episodes

    torch.set_num_threads(1)
    spec = task_spec(suite, task)
    out: dict = {}

    # 1. the tiny policy through an env worker process, as training runs it
    slots = ProcessEnvSlots(1, image_size=image_size)
    try:
        traj = run_episodes(SmolVLAAdapter.load("tiny"), slots, [EpisodeSpec(spec, 2, 10, noise_seed=task)],
                            n_action_steps=10)[0]
        out["worker_peak_rss_mib"] = int(process_memory_mb(slots._procs[0].pid, "VmHWM"))
    finally:
        slots.close()
    frames = np.stack([np.stack(traj.query_images[k]) for k in CAMERAS.values()])
    out["policy"] = {"steps": traj.length, "success": traj.success,
                     "digest": _digest(np.stack(traj.states), np.stack(traj.actions), frames, [traj.success])}

    # 2. the scripted expert (LIBERO-Object) or random actions to the step limit, in process
    env = LiberoEnv(spec, image_size=image_size)
    model, data = env.sim.model._model, env.sim.data._data
    out["ntex"] = int(model.ntex)
    out["shadow_map"] = int(model.vis.quality.shadowsize)
    peaks = {"contacts": 0, "constraint_rows": 0}

    def watch() -> None:
        peaks["contacts"] = max(peaks["contacts"], int(data.ncon))
        peaks["constraint_rows"] = max(peaks["constraint_rows"], int(data.nefc))

    try:
        if suite == "libero_object":
            step = env.step

            def watched_step(*args, **kwargs):
                result = step(*args, **kwargs)
                watch()
                return result

            env.step = watched_step
            demo = run_expert(env, 2, noise_std=0.0, seed=0)
            states, frames = np.stack(demo.states), np.stack([np.stack(v) for v in demo.images.values()])
            kind, success, steps = "expert", demo.success, demo.length
        else:
            obs = env.reset(2)
            states, shots = [], [np.stack([obs[k] for k in CAMERAS.values()])]
            success = False
            for i, action in enumerate(np.random.default_rng(task).uniform(-1, 1, (spec.max_steps, 7))):
                obs, _, success, _ = env.step(action, render=i % 10 == 9)
                watch()
                states.append(obs["observation.state"])
                if i % 10 == 9:
                    shots.append(np.stack([obs[k] for k in CAMERAS.values()]))
                if success:
                    break
            states, frames, steps, kind = np.stack(states), np.stack(shots), len(states), "random"
        out[kind] = {"steps": steps, "success": bool(success), "digest": _digest(states, frames, [success])}
        out["peak_contacts"], out["peak_constraint_rows"] = peaks["contacts"], peaks["constraint_rows"]
        out["arena_used_mib"] = round(data.maxuse_arena / 2**20, 2)
        out["arena_mib"] = round(model.narena / 2**20, 1)
    finally:
        env.close()
    return out


def _tasks(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1)) if "," not in text else [int(t) for t in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default="libero_10,libero_object")
    parser.add_argument("--tasks", default="0-9")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--out", default="docs/results/scene_sameness.json")
    parser.add_argument("--child", nargs=2, metavar=("SUITE", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.image_size)))
        return

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    started = time.time()
    rows = []
    for suite in args.suites.split(","):
        for task in _tasks(args.tasks):
            runs = {}
            for mode in MODES:
                proc = subprocess.run([sys.executable, __file__, "--image-size", str(args.image_size),
                                       "--child", suite, str(task)], capture_output=True, text=True,
                                      env={**os.environ, "GRPO_VLA_SCENE": mode})
                if proc.returncode != 0:
                    sys.exit(f"{suite} task {task} ({mode}) failed: {proc.stderr.strip().splitlines()[-1]}")
                runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            kinds = [k for k in ("policy", "expert", "random") if k in runs["lean"]]
            identical = all(runs["lean"][k]["digest"] == runs["libero"][k]["digest"] for k in kinds)
            row = {"suite": suite, "task": task, "identical": identical,
                   "episodes": {k: runs["lean"][k] for k in kinds},
                   "worker_peak_rss_mib": {m: runs[m]["worker_peak_rss_mib"] for m in MODES},
                   "textures": {m: runs[m]["ntex"] for m in MODES},
                   "shadow_map": {m: runs[m]["shadow_map"] for m in MODES},
                   **{k: runs["lean"][k] for k in ("peak_contacts", "peak_constraint_rows", "arena_used_mib",
                                                    "arena_mib")}}
            rows.append(row)
            episodes = ", ".join(f"{k} {v['steps']} steps{' ok' if v['success'] else ''}"
                                 for k, v in row["episodes"].items())
            print(f"{suite:13s} task {task}: {'identical' if identical else 'DIFFERENT'}  ({episodes})  "
                  f"worker RSS {row['worker_peak_rss_mib']['libero']:,} -> {row['worker_peak_rss_mib']['lean']:,} MiB"
                  f"  textures {row['textures']['libero']} -> {row['textures']['lean']}  contacts "
                  f"{row['peak_contacts']}, rows {row['peak_constraint_rows']}, arena {row['arena_used_mib']} MiB",
                  flush=True)
    result = {
        "what": "lean scene (GRPO_VLA_SCENE=lean) vs LIBERO's model, whole episodes, bit for bit (issue 28)",
        "date": datetime.date.today().isoformat(), "commit": commit,
        "command": "python benchmarks/scene_sameness.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs), {platform.platform()}",
        "image_size": args.image_size, "minutes": round((time.time() - started) / 60, 1),
        "all_identical": all(r["identical"] for r in rows),
        "max_worker_peak_rss_mib": {m: max(r["worker_peak_rss_mib"][m] for r in rows) for m in MODES},
        "tasks": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, out)
    print(f"all identical: {result['all_identical']}; worker peak RSS max {result['max_worker_peak_rss_mib']} MiB; "
          f"wrote {out}")
    sys.exit(0 if result["all_identical"] else 1)


if __name__ == "__main__":
    main()
