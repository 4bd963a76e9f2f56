"""What noise steering costs, side by side in one run: the actor's share of an env step, SAC's update rate,
and where a steer unit's wall time goes.

    python benchmarks/steer_throughput.py [--suite libero_object] [--task 2] [--episodes 4] [--run RUN_DIR ...]

(a) env steps/s of the rollout engine with the tiny policy, as `train` rolls out (the SFT's own noise), and
    (b) the same episodes with a noise actor attached (as `steer` rolls out after warm-up): the ratio is the
    actor's cost per env step. 64 px, a query every 10 steps, 1 env in this process (the protocol's CPU
    configuration, minus the second worker); both runs interleaved, --repeats times, medians.
(c) SAC gradient steps/s (batch 256, 1 torch thread) at 10 and at all 50 steered positions, 128-wide
    layers: the update side of a unit (UTD 20 per chunk).
(d) for each --run given (a finished steer run directory): its total rollout and update seconds from
    metrics.jsonl, and their shares.
Run it on an otherwise idle machine; results go to docs/results/ with the date, command and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_shared = Path(__file__).resolve().parents[2] / "shared" / "libero" / "assets"
if "GRPO_VLA_LIBERO_ASSETS" not in os.environ and _shared.is_dir():
    os.environ["GRPO_VLA_LIBERO_ASSETS"] = str(_shared)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from grpo_cli.envs.libero import task_spec  # noqa: E402
from grpo_cli.envs.slots import make_env_slots  # noqa: E402
from grpo_cli.episodes import EpisodeSpec, episode_seed  # noqa: E402
from grpo_cli.policies.noise_actor import ActorSpec, NoiseActor, sac_policy  # noqa: E402
from grpo_cli.policies.smolvla import SmolVLAAdapter  # noqa: E402
from grpo_cli.rollout import run_episodes  # noqa: E402
from grpo_cli.storage import read_metrics  # noqa: E402


def rollout_rate(adapter: SmolVLAAdapter, slots, episodes: list[EpisodeSpec], max_steps: int) -> float:
    start = time.perf_counter()
    trajs = run_episodes(adapter, slots, episodes, max_steps=max_steps, n_action_steps=10, keep_images=False)
    return sum(t.length for t in trajs) / (time.perf_counter() - start)


def sac_rate(positions: int, updates: int = 300) -> float:
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    from grpo_cli.policies.noise_actor import steer_policy_class
    from grpo_cli.steer import _spaces_only_env

    spec = ActorSpec(14, 50, 7, positions, 1.0, "state", (128, 128))
    sac = SAC(steer_policy_class(), _spaces_only_env(spec), buffer_size=5000, learning_starts=0, batch_size=256,
              ent_coef="auto_0.1", target_entropy=0.0, policy_kwargs={"net_arch": [128, 128]},
              replay_buffer_kwargs={"handle_timeout_termination": False}, device="cpu")
    sac.set_logger(Logger(None, []))
    rng = np.random.default_rng(0)
    for _ in range(2000):
        sac.replay_buffer.add(rng.normal(size=(1, 14)).astype(np.float32), rng.normal(size=(1, 14)).astype(np.float32),
                              rng.normal(size=(1, spec.act_dim)).astype(np.float32), np.array([-1.0]),
                              np.array([0.0]), [{}])
    sac.train(20, 256)  # warm
    start = time.perf_counter()
    sac.train(updates, 256)
    return updates / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=280)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", action="append", default=[], help="a finished steer run directory (repeatable)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = task_spec(args.suite, args.task)
    sft = SmolVLAAdapter.load("tiny")
    steered = SmolVLAAdapter.load("tiny")
    actor_spec = ActorSpec(steered.state_dim, steered.chunk_size, steered.action_dim, 10, 1.0, "state", (128, 128))
    steered.noise_actor = NoiseActor(actor_spec, sac_policy(actor_spec).actor, "{}", {"source": "benchmark"})
    episodes = [EpisodeSpec(spec, i, 10, episode_seed(0, "eval", args.task, i)) for i in range(args.episodes)]
    slots = make_env_slots(1, 64)
    rates: dict[str, list[float]] = {"train": [], "steer": []}
    try:
        rollout_rate(sft, slots, episodes[:1], 20)  # build the env once, outside the timing
        for _ in range(args.repeats):
            rates["train"].append(rollout_rate(sft, slots, episodes, args.max_steps))
            rates["steer"].append(rollout_rate(steered, slots, episodes, args.max_steps))
    finally:
        slots.close()
    train_sps, steer_sps = statistics.median(rates["train"]), statistics.median(rates["steer"])
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()} {os.cpu_count()} CPUs",
              "command": "python " + " ".join(sys.argv), "task": f"{args.suite} {args.task}",
              "env_steps_per_s": {"train_rollout": train_sps, "steer_rollout": steer_sps,
                                  "steer_over_train": steer_sps / train_sps, "runs": rates},
              "actor_ms_per_env_step": 1000 * (1 / steer_sps - 1 / train_sps),
              "sac_updates_per_s": {"10_positions": sac_rate(10), "50_positions": sac_rate(50)}}
    units = {}
    for run in args.run:
        rows, _ = read_metrics(Path(run) / "metrics.jsonl")
        rollout, update = sum(m["time/rollout"] for m in rows), sum(m["time/update"] for m in rows)
        units[run] = {"env_steps": sum(m["env_steps"] for m in rows), "gradient_updates": rows[-1]["gradient_updates"],
                      "rollout_s": round(rollout), "update_s": round(update),
                      "rollout_share": round(rollout / (rollout + update), 3)}
    result["units"] = units
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
