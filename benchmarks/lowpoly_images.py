"""How far the low-poly scene's images are from LIBERO's (issue 39), measured per task.

    python benchmarks/lowpoly_images.py [--suites libero_10,libero_object] [--tasks 0-9] [--sizes 64,256]
                                        [--out docs/results/lowpoly_images.json]

Per task and image size, one process builds the task twice, in LIBERO's scene (`libero`: its model as
compiled, texture for texture) and in `lowpoly`, and steps both with the same seeded random actions from
init state 2 for 200 steps, reading both cameras at reset and every 10th step (21 frame pairs per camera).
Physics is the same to the bit (checked again here: the states must match), so each pair shows the same
moment. Per camera: PSNR (dB) and SSIM (scikit-image, channel-wise, data range 255) of every pair, mean and
minimum over the episode.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench_common import task_ids, write_result  # this folder

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "libero", "assets")
if "GRPO_VLA_LIBERO_ASSETS" not in os.environ and os.path.isdir(_shared):
    os.environ["GRPO_VLA_LIBERO_ASSETS"] = os.path.abspath(_shared)

STEPS, EVERY, INIT_STATE = 200, 10, 2


def child(suite: str, task: int, size: int) -> dict:
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from grpo_cli.envs.libero import CAMERAS, STATE_KEY, LiberoEnv, task_spec

    spec = task_spec(suite, task)
    envs = {}
    for scene in ("libero", "lowpoly"):
        os.environ["GRPO_VLA_SCENE"] = scene
        envs[scene] = LiberoEnv(spec, image_size=size)
    try:
        shots: dict[str, list] = {scene: [env.reset(INIT_STATE)] for scene, env in envs.items()}
        for i, action in enumerate(np.random.default_rng(task).uniform(-1, 1, (STEPS, 7))):
            render = i % EVERY == EVERY - 1
            for scene, env in envs.items():
                obs, _, _, _ = env.step(action, render=render)
                if render:
                    shots[scene].append(obs)
            if not np.array_equal(*(shots[s][-1][STATE_KEY] for s in envs)) and render:
                raise SystemExit(f"{suite} task {task}: the scenes' states differ at step {i}")
    finally:
        for env in envs.values():
            env.close()
    out: dict = {"frames": len(shots["libero"])}
    for camera in CAMERAS.values():
        psnr, ssim = [], []
        for full, low in zip(shots["libero"], shots["lowpoly"], strict=True):
            a, b = full[camera], low[camera]
            psnr.append(peak_signal_noise_ratio(a, b, data_range=255) if not np.array_equal(a, b) else float("inf"))
            ssim.append(structural_similarity(a, b, channel_axis=-1, data_range=255))
        out[camera] = {"psnr_db_mean": round(float(np.mean(psnr)), 2), "psnr_db_min": round(float(np.min(psnr)), 2),
                       "ssim_mean": round(float(np.mean(ssim)), 4), "ssim_min": round(float(np.min(ssim)), 4)}
    return out



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default="libero_10,libero_object")
    parser.add_argument("--tasks", default="0-9")
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--out", default="docs/results/lowpoly_images.json")
    parser.add_argument("--child", nargs=3, metavar=("SUITE", "TASK", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), int(args.child[2]))))
        return

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    sizes = [int(s) for s in args.sizes.split(",")]
    # the file is rewritten after every task; a rerun keeps the tasks it holds and measures the rest
    done = {(r["suite"], r["task"]): r for r in (json.loads(Path(args.out).read_text())["tasks"]
                                                  if Path(args.out).is_file() else [])}
    started, rows = time.time(), []
    for suite in args.suites.split(","):
        for task in task_ids(args.tasks):
            if all(f"{size}px" in done.get((suite, task), {}) for size in sizes):
                rows.append(done[(suite, task)])
                print(f"{suite:13s} task {task}: in {args.out} already", flush=True)
                continue
            row: dict = {"suite": suite, "task": task, "commit": commit}
            for size in sizes:
                proc = subprocess.run([sys.executable, __file__, "--child", suite, str(task), str(size)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{suite} task {task} at {size} px failed: {proc.stderr.strip().splitlines()[-1]}")
                row[f"{size}px"] = json.loads(proc.stdout.strip().splitlines()[-1])
                cams = [v for k, v in row[f"{size}px"].items() if k != "frames"]
                print(f"{suite:13s} task {task} {size:3d} px: " + ", ".join(
                    f"PSNR {c['psnr_db_mean']:.1f} dB (min {c['psnr_db_min']:.1f}) SSIM {c['ssim_mean']:.3f}"
                    for c in cams), flush=True)
            rows.append(row)
            result = {
                "what": "lowpoly vs LIBERO's images (GRPO_VLA_SCENE=libero), same states: PSNR and SSIM per camera "
                        "(issue 39)",
                "date": datetime.date.today().isoformat(), "commit": commit,
                "command": "python benchmarks/lowpoly_images.py " + " ".join(sys.argv[1:]),
                "machine": f"{platform.node()} ({os.cpu_count()} CPUs), {platform.platform()}",
                "episode": {"init_state": INIT_STATE, "steps": STEPS, "frames_every": EVERY,
                            "actions": "uniform(-1, 1), seeded by the task id"},
                "minutes_this_run": round((time.time() - started) / 60, 1), "tasks": rows,
            }
            write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
