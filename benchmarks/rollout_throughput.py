"""Rollout throughput side by side: the simulator's limit, lerobot's eval loop, and ours (1 and 2 workers).

    python benchmarks/rollout_throughput.py [--task 0] [--steps 200] [--image-size 256]

For a policy query every 10 and every 50 env steps, on the same task and tiny policy:
  (a) simulator limit: a bare loop that resets and steps the physics with the actions our 1-worker run
      executed and renders exactly the frames the policy read (every N-th step), nothing else;
  (b) lerobot's own `lerobot_eval.rollout` with its LIBERO env (renders both cameras every step);
  (c) grpo-vla's rollout engine with 1 env, and with 2 envs in 2 spawned worker processes (also with
      --overlap-policy: the policy computes one env's chunk while the other env steps).
Prints env steps/s and episodes/hour (at the given episode length), each the median of --repeats runs
(single runs do not resolve the ratios: one week's two single runs differed by 0.1 in ours/(a)), the
ratios of those medians, and each run's rates; and the RSS of each env worker process. One torch thread
per process; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "libero", "assets")
if "GRPO_VLA_LIBERO_ASSETS" not in os.environ and os.path.isdir(_shared):
    os.environ["GRPO_VLA_LIBERO_ASSETS"] = os.path.abspath(_shared)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from env_throughput import ours  # noqa: E402  (same folder: the engine's timing helper)

from grpo_cli.envs.libero import LiberoEnv, configure_libero, task_spec  # noqa: E402
from grpo_cli.policies.smolvla import SmolVLAAdapter  # noqa: E402


def simulator_limit(spec, actions: np.ndarray, image_size: int, every: int, init_state: int = 0) -> float:
    """The same reset and the same executed actions as our run, rendering only the frames a policy reads."""
    env = LiberoEnv(spec, image_size=image_size)
    env.reset(init_state)  # warm, like our slots: the timed reset below is the episode's own
    start = time.perf_counter()
    env.reset(init_state)
    for i, a in enumerate(actions):
        env.step(a, render=i % every == every - 1)
    elapsed = time.perf_counter() - start
    env.close()
    return len(actions) / elapsed


def lerobot_loop(steps: int, image_size: int, every: int, adapter: SmolVLAAdapter, task: int) -> float:
    from lerobot.envs.configs import LiberoEnv as LiberoEnvConfig
    from lerobot.envs.factory import make_env, make_env_pre_post_processors
    from lerobot.scripts.lerobot_eval import rollout

    env_cfg = LiberoEnvConfig(task="libero_10", task_ids=[task], episode_length=steps,
                              observation_height=image_size, observation_width=image_size)
    vec = make_env(env_cfg, n_envs=1)["libero_10"][task]
    env_pre, env_post = make_env_pre_post_processors(env_cfg, adapter.config)
    adapter.policy.config.n_action_steps = every
    start = time.perf_counter()
    out = rollout(vec, adapter.policy, env_pre, env_post, adapter.preprocessor, adapter.postprocessor, seeds=[0])
    elapsed = time.perf_counter() - start
    vec.close()
    return out["action"].shape[1] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the row shows their median")
    args = parser.parse_args()
    torch.set_num_threads(1)
    configure_libero()
    spec = task_spec("libero_10", args.task)
    adapter = SmolVLAAdapter.load("tiny")
    print(f"libero_10 task {args.task}, {args.steps} steps per run, {args.image_size}px, tiny SmolVLA, "
          f"{platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}")
    print(f"{'query every':>11s} {'mode':34s} {'steps/s':>8s} {'episodes/h':>10s}   (medians of {args.repeats})")
    rss: list[float] = []
    for every in (10, 50):
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # the rows interleaved, so a slow spell of the machine hits them all
            mine: list = []
            measured = {"(c) grpo-vla, 1 worker": ours(spec, args.steps, args.image_size, every, adapter, 1,
                                                      trajs_out=mine)}
            measured["(a) simulator limit"] = simulator_limit(spec, np.asarray(mine[0].actions), args.image_size,
                                                              every)
            measured["(b) lerobot eval loop"] = lerobot_loop(args.steps, args.image_size, every, adapter, args.task)
            measured["(c) grpo-vla, 2 workers"] = ours(spec, args.steps, args.image_size, every, adapter, 2, True,
                                                       rss)
            measured["(c) grpo-vla, 2 workers, overlap"] = ours(spec, args.steps, args.image_size, every, adapter, 2,
                                                                True, overlap=True)
            for name, rate in measured.items():
                runs.setdefault(name, []).append(rate)
        print(file=sys.stderr, flush=True)  # end lerobot's progress bar line
        rates = {name: float(np.median(values)) for name, values in runs.items()}
        for name, rate in sorted(rates.items()):
            each = ", ".join(f"{v:.1f}" for v in runs[name])
            print(f"{every:11d} {name:34s} {rate:8.1f} {3600 * rate / 520:10.1f}   (runs: {each})")
        one, two = rates["(c) grpo-vla, 1 worker"], rates["(c) grpo-vla, 2 workers"]
        print(f"{every:11d} ratios: ours/(a) {one / rates['(a) simulator limit']:.2f}  "
              f"ours/(b) {one / rates['(b) lerobot eval loop']:.2f}  2 workers/1 worker {two / one:.2f}  "
              f"2 workers overlap/1 worker {rates['(c) grpo-vla, 2 workers, overlap'] / one:.2f}")
    print("episodes/h assume LIBERO-10's 520-step episodes")
    print(f"RSS per env worker process (2-worker runs): {', '.join(f'{x:.0f}' for x in rss)} MiB; parent process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB peak")


if __name__ == "__main__":
    main()
