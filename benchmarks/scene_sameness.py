"""Proof of sameness for grpo-vla's scenes: every task of LIBERO-10 and LIBERO-Object, whole episodes.
`GRPO_VLA_SCENE=lean` (the default, issue 28) against `libero` (LIBERO's model as compiled), bit for bit;
`lowpoly` (issue 39) against `lean`: for actions that do not look at the images (the expert's, random ones)
states, actions and success bit for bit, the frames other; the tiny policy's episode is recorded, not compared.

    python benchmarks/scene_sameness.py [--suites libero_10,libero_object] [--tasks 0-9] [--image-size 128]
                                        [--modes libero,lean,lowpoly] [--out docs/results/scene_sameness.json]

Per task and scene mode, one fresh process runs two full episodes from init state 2:
- a tiny-policy episode through a spawned env worker, as `rollout`/`train` run them (frames at every
  policy query, 10 steps apart); the worker's peak RSS is read from /proc before it closes;
- a scripted-expert episode (LIBERO-Object; frames every step) or, where no expert exists (LIBERO-10),
  seeded random actions to the step limit (frames every 10th step), in process, recording the scene's
  peak contacts, constraint rows and arena use over the episode.
Each mode's states, actions and success (its physics) and its frames are hashed apart and compared. The
result file keeps, per task, the hashes' verdict, the worker's peak RSS in each mode, texture counts and
the contact peaks.
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
import time

from bench_common import task_ids, write_result  # this folder

MODES = ("libero", "lean", "lowpoly")


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
                     "physics": _digest(np.stack(traj.states), np.stack(traj.actions), [traj.success]),
                     "frames": _digest(frames)}

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
            states = np.concatenate([np.stack(demo.states), np.stack(demo.actions)], axis=1)
            frames = np.stack([np.stack(v) for v in demo.images.values()])
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
        out[kind] = {"steps": steps, "success": bool(success), "physics": _digest(states, [success]),
                     "frames": _digest(frames)}
        out["peak_contacts"], out["peak_constraint_rows"] = peaks["contacts"], peaks["constraint_rows"]
        out["arena_used_mib"] = round(data.maxuse_arena / 2**20, 2)
        out["arena_mib"] = round(model.narena / 2**20, 1)
    finally:
        env.close()
    return out



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default="libero_10,libero_object")
    parser.add_argument("--tasks", default="0-9")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--modes", default=",".join(MODES), help="scene modes to run; lean is the reference")
    parser.add_argument("--out", default="docs/results/scene_sameness.json")
    parser.add_argument("--child", nargs=2, metavar=("SUITE", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.image_size)))
        return
    modes = args.modes.split(",")
    if "lean" not in modes or not set(modes) <= set(MODES) or len(modes) < 2:
        sys.exit(f"--modes: lean and at least one of {', '.join(m for m in MODES if m != 'lean')}")

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    started = time.time()
    rows = []
    for suite in args.suites.split(","):
        for task in task_ids(args.tasks):
            runs = {}
            for mode in modes:
                proc = subprocess.run([sys.executable, __file__, "--image-size", str(args.image_size),
                                       "--child", suite, str(task)], capture_output=True, text=True,
                                      env={**os.environ, "GRPO_VLA_SCENE": mode})
                if proc.returncode != 0:
                    sys.exit(f"{suite} task {task} ({mode}) failed: {proc.stderr.strip().splitlines()[-1]}")
                runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            kinds = [k for k in ("policy", "expert", "random") if k in runs["lean"]]
            # libero: physics and frames equal to lean's. lowpoly: the expert's or random actions (they do not
            # look at the images) give lean's physics with frames of its own; the tiny policy looks at them.
            verdict = {}
            for m in modes:
                if m == "libero":
                    verdict[m] = all(runs[m][k] == runs["lean"][k] for k in kinds)
                elif m == "lowpoly":
                    blind = [k for k in kinds if k != "policy"]
                    verdict[m] = all(runs[m][k]["physics"] == runs["lean"][k]["physics"]
                                     and runs[m][k]["frames"] != runs["lean"][k]["frames"] for k in blind)
            row = {"suite": suite, "task": task, "identical": all(verdict.values()), "verdict": verdict,
                   "episodes": {m: {k: runs[m][k] for k in kinds} for m in modes},
                   "worker_peak_rss_mib": {m: runs[m]["worker_peak_rss_mib"] for m in modes},
                   "textures": {m: runs[m]["ntex"] for m in modes},
                   "shadow_map": {m: runs[m]["shadow_map"] for m in modes},
                   **{k: runs["lean"][k] for k in ("peak_contacts", "peak_constraint_rows", "arena_used_mib",
                                                    "arena_mib")}}
            rows.append(row)
            episodes = ", ".join(f"{k} {v['steps']} steps{' ok' if v['success'] else ''}"
                                 for k, v in row["episodes"]["lean"].items())
            print(f"{suite:13s} task {task}: " + ", ".join(f"{m} {'as expected' if ok else 'DIFFERENT'}"
                                                          for m, ok in verdict.items())
                  + f"  ({episodes})  worker RSS "
                  + ", ".join(f"{m} {v:,}" for m, v in row["worker_peak_rss_mib"].items())
                  + f" MiB  contacts {row['peak_contacts']}, rows {row['peak_constraint_rows']}, "
                  f"arena {row['arena_used_mib']} MiB", flush=True)
    result = {
        "what": "scene modes against lean, whole episodes: libero bit for bit (issue 28), lowpoly's physics bit for "
                "bit with frames of its own (issue 39)",
        "date": datetime.date.today().isoformat(), "commit": commit,
        "command": "python benchmarks/scene_sameness.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs), {platform.platform()}",
        "image_size": args.image_size, "modes": modes, "minutes": round((time.time() - started) / 60, 1),
        "all_identical": all(r["identical"] for r in rows),
        "max_worker_peak_rss_mib": {m: max(r["worker_peak_rss_mib"][m] for r in rows) for m in modes},
        "tasks": rows,
    }
    out = write_result(args.out, result)
    print(f"all as expected: {result['all_identical']}; worker peak RSS max {result['max_worker_peak_rss_mib']} MiB; "
          f"wrote {out}")
    sys.exit(0 if result["all_identical"] else 1)


if __name__ == "__main__":
    main()
