"""The policy check of the low-poly scene (issue 39): does an SFT policy do as well on low-poly images?

    python benchmarks/learning/lowpoly_policy.py [--task 2] [--reference runs/heldout_steer/task2]
        [--sft-seeds 0,1] [--out runs/lowpoly_policy] [--results docs/results/lowpoly_policy.json]

The SFT rule of the held-out protocol (benchmarks/learning/heldout.py: demos from init states 0-29, SFT
1250 steps, eval of 100 episodes on init states 30-49) run on one LIBERO-Object task per look, once per
SFT seed (each seed a run: the episodes of one eval are not the unit of replication):
- `libero`: LIBERO's images (the default `lean` scene renders them to the bit). REFERENCE holds this arm's
  demos, SFT policy and eval when a held-out pipeline made them; else they are made here.
- `lowpoly`: demos, SFT and eval all in `GRPO_VLA_SCENE=lowpoly`. The expert acts on states, so its demos
  have the same actions as LIBERO's (checked); only the images differ.
- `transfer`: the protocol seed's `libero` SFT policy evaluated in the low-poly scene: may a policy trained
  on LIBERO's images be evaluated on low-poly ones?
All evals run the same episodes (init state, noise seed), so each comparison with the same SFT seed's
`libero` policy is paired: Fisher's exact test of the counts and McNemar's exact test of the pairs
(grpo_cli/stats.py). Each stage is skipped when its
output exists.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout import PROTOCOL, code_commit, eval_arm, write_json  # noqa: E402
from run import stage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", type=int, default=2)
    parser.add_argument("--reference", default="runs/heldout_steer/task2",
                        help="folder with the LIBERO-image arm's demos.h5, sft/ and eval_sft.h5 (made if missing)")
    parser.add_argument("--out", default="runs/lowpoly_policy")
    parser.add_argument("--sft-seeds", default="0,1", help="SFT seeds per look: each seed is a run")
    parser.add_argument("--results", default="docs/results/lowpoly_policy.json")
    args = parser.parse_args()

    from grpo_cli.stats import unit_comparison, wilson_interval
    from grpo_cli.storage import read_demos

    proto, task = PROTOCOL, args.task
    sft_seeds = [int(x) for x in args.sft_seeds.split(",")]
    out, reference = Path(args.out), Path(args.reference)
    out.mkdir(parents=True, exist_ok=True)
    reference.mkdir(parents=True, exist_ok=True)
    log, times = out / "commands.log", {}
    where = ["--suite", proto["suite"], "--tasks", str(task)]
    common_eval = [*where, "--image-size", str(proto["image_size"]), "--max-steps", str(proto["max_steps"]),
                   "--n-action-steps", str(proto["n_action_steps"]),
                   "--init-states", ",".join(map(str, proto["eval_init_states"])),
                   "--episodes-per-task", str(proto["eval_episodes"]), "--num-envs", str(proto["num_envs"]),
                   "--seed", str(proto["eval_seed"]), "--parallel-envs"]

    def build(folder: Path, scene: str, demos: Path, seed: int) -> tuple[Path, Path]:
        """demos -> SFT -> eval, every image rendered in `scene`; returns the SFT policy and its eval.
        The protocol's SFT seed writes sft/ and eval_sft.h5 (as heldout.py does); another, sft_seedS/..."""
        os.environ["GRPO_VLA_SCENE"] = scene
        stage(f"{scene} demos", ["demos", *where, "--image-size", str(proto["image_size"]), "--init-states",
                                 ",".join(map(str, proto["train_init_states"])), "--workers", "2",
                                 "--seed", str(proto["demo_seed"]), "--out", str(demos)], demos, log, times)
        tag = "" if seed == proto["sft_seed"] else f"_seed{seed}"
        policy, result = folder / f"sft{tag}", folder / f"eval_sft{tag}.h5"
        stage(f"{scene} sft{tag}", ["sft", str(demos), "--privileged-state", "--steps", str(proto["sft_steps"]),
                                    "--lr", str(proto["sft_lr"]), "--seed", str(seed), "--out", str(policy)],
                                    policy, log, times)
        stage(f"{scene} eval{tag}", ["eval", "--policy", str(policy), *common_eval, "--out", str(result)],
              result, log, times)
        return policy, result

    evals: dict[str, dict[int, Path]] = {"libero": {}, "lowpoly": {}}
    for seed in sft_seeds:  # another SFT seed of the LIBERO-image arm goes to OUT/libero/, not the reference
        evals["libero"][seed] = build(reference if seed == proto["sft_seed"] else out / "libero", "lean",
                                      reference / "demos.h5", seed)[1]
        evals["lowpoly"][seed] = build(out, "lowpoly", out / "demos.h5", seed)[1]
    os.environ["GRPO_VLA_SCENE"] = "lowpoly"
    stage("transfer eval", ["eval", "--policy", str(reference / "sft"), *common_eval,
                            "--out", str(out / "eval_transfer.h5")], out / "eval_transfer.h5", log, times)

    full_demos, low_demos = (read_demos(d / "demos.h5", privileged_state=True) for d in (reference, out))
    same_actions = len(full_demos) == len(low_demos) and all(
        np.array_equal(a["actions"], b["actions"]) and np.array_equal(a["state"], b["state"])
        for a, b in zip(full_demos, low_demos, strict=True))
    arms = {f"{look} sft seed {seed}": eval_arm(path) for look, paths in evals.items() for seed, path in paths.items()}
    arms[f"transfer sft seed {proto['sft_seed']}"] = eval_arm(out / "eval_transfer.h5")
    keys = next(iter(arms.values()))["episode_keys"]
    if any(a["episode_keys"] != keys for a in arms.values()):
        sys.exit("the evals ran different episodes: they cannot be compared pair by pair")
    for arm in arms.values():
        arm["success"] = arm["successes"] / arm["episodes"]
        arm["wilson_95"] = [round(x, 4) for x in wilson_interval(arm["successes"], arm["episodes"])]
    # each SFT seed is a run: the same seed's LIBERO-image policy is its baseline, paired episode by episode
    comparisons = {f"{look} sft seed {seed}": unit_comparison(arms[f"libero sft seed {seed}"]["outcomes"],
                                                             arms[f"{look} sft seed {seed}"]["outcomes"])
                   for look, seed in [("lowpoly", s) for s in sft_seeds] + [("transfer", proto["sft_seed"])]}
    deltas = [comparisons[f"lowpoly sft seed {seed}"]["delta_points"] for seed in sft_seeds]
    result = {
        "what": "SFT on LIBERO's images vs on low-poly images, one LIBERO-Object task, same demos' init states "
                "and same held-out episodes (issue 39)",
        "date": datetime.date.today().isoformat(), "commit": code_commit(),
        "command": "python benchmarks/learning/lowpoly_policy.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs), {platform.platform()}",
        "task": task, "protocol": proto, "demos": len(low_demos),
        "demos_same_actions_and_states": same_actions,
        "sft_seeds": sft_seeds,
        "arms": {k: {x: v for x, v in a.items() if x not in ("outcomes", "episode_keys")} for k, a in arms.items()},
        "against_libero_same_sft_seed": comparisons,
        "lowpoly_minus_libero_points_per_sft_seed": deltas,
        "outcomes": {k: a["outcomes"] for k, a in arms.items()}, "episode_keys": keys,
        "wall_s": {k: round(v) for k, v in times.items()},
    }
    write_json(Path(args.results), result)
    for name, c in comparisons.items():
        seed = name.rsplit(" ", 1)[1]
        print(f"{name}: {arms[name]['successes']}/{arms[name]['episodes']} vs libero sft seed {seed} "
              f"{arms[f'libero sft seed {seed}']['successes']}/100: {c['delta_points']:+.1f} points, "
              f"Fisher p {c['fisher_p']:.3g}, +{c['gained']}/-{c['lost']} (McNemar p {c['mcnemar_p']:.3g})")
    print(f"demos with the same actions and states in both scenes: {same_actions}; wrote {args.results}")


if __name__ == "__main__":
    main()
