"""The policy check of the low-poly scene (issue 39): does an SFT policy do as well on low-poly images?

    python benchmarks/learning/lowpoly_policy.py [--task 2] [--reference runs/heldout_steer/task2]
        [--out runs/lowpoly_policy] [--results docs/results/lowpoly_policy.json]

The SFT rule of the held-out protocol (benchmarks/learning/heldout.py: demos from init states 0-29, SFT
1250 steps, eval of 100 episodes on init states 30-49) run twice on one LIBERO-Object task, once per look:
- `libero`: LIBERO's images (the default `lean` scene renders them to the bit). REFERENCE holds this arm's
  demos, SFT policy and eval when a held-out pipeline made them; else they are made here.
- `lowpoly`: demos, SFT and eval all in `GRPO_VLA_SCENE=lowpoly`. The expert acts on states, so its demos
  have the same actions as LIBERO's (checked); only the images differ.
- `transfer`: the `libero` SFT policy evaluated in the low-poly scene: may a policy trained on LIBERO's
  images be evaluated on low-poly ones?
Both evals run the same episodes (init state, noise seed), so each comparison is paired: Fisher's exact test
of the counts and McNemar's exact test of the pairs (grpo_cli/stats.py). Each stage is skipped when its
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
    parser.add_argument("--results", default="docs/results/lowpoly_policy.json")
    args = parser.parse_args()

    from grpo_cli.stats import unit_comparison, wilson_interval
    from grpo_cli.storage import read_demos

    proto, task = PROTOCOL, args.task
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

    def build(folder: Path, scene: str) -> None:
        """demos -> SFT -> eval, every image rendered in `scene`."""
        os.environ["GRPO_VLA_SCENE"] = scene
        demos = folder / "demos.h5"
        stage(f"{scene} demos", ["demos", *where, "--image-size", str(proto["image_size"]), "--init-states",
                                 ",".join(map(str, proto["train_init_states"])), "--workers", "2",
                                 "--seed", str(proto["demo_seed"]), "--out", str(demos)], demos, log, times)
        stage(f"{scene} sft", ["sft", str(demos), "--privileged-state", "--steps", str(proto["sft_steps"]),
                               "--lr", str(proto["sft_lr"]), "--seed", str(proto["sft_seed"]),
                               "--out", str(folder / "sft")], folder / "sft", log, times)
        stage(f"{scene} eval", ["eval", "--policy", str(folder / "sft"), *common_eval,
                                "--out", str(folder / "eval_sft.h5")], folder / "eval_sft.h5", log, times)

    build(reference, "lean")
    build(out, "lowpoly")
    os.environ["GRPO_VLA_SCENE"] = "lowpoly"
    stage("transfer eval", ["eval", "--policy", str(reference / "sft"), *common_eval,
                            "--out", str(out / "eval_transfer.h5")], out / "eval_transfer.h5", log, times)

    full_demos, low_demos = (read_demos(d / "demos.h5", privileged_state=True) for d in (reference, out))
    same_actions = len(full_demos) == len(low_demos) and all(
        np.array_equal(a["actions"], b["actions"]) and np.array_equal(a["state"], b["state"])
        for a, b in zip(full_demos, low_demos, strict=True))
    arms = {"libero": eval_arm(reference / "eval_sft.h5"), "lowpoly": eval_arm(out / "eval_sft.h5"),
            "transfer": eval_arm(out / "eval_transfer.h5")}
    keys = arms["libero"]["episode_keys"]
    if any(a["episode_keys"] != keys for a in arms.values()):
        sys.exit("the three evals ran different episodes: they cannot be compared pair by pair")
    for arm in arms.values():
        arm["success"] = arm["successes"] / arm["episodes"]
        arm["wilson_95"] = [round(x, 4) for x in wilson_interval(arm["successes"], arm["episodes"])]
    comparisons = {name: unit_comparison(arms["libero"]["outcomes"], arms[name]["outcomes"])
                   for name in ("lowpoly", "transfer")}
    result = {
        "what": "SFT on LIBERO's images vs on low-poly images, one LIBERO-Object task, same demos' init states "
                "and same held-out episodes (issue 39)",
        "date": datetime.date.today().isoformat(), "commit": code_commit(),
        "command": "python benchmarks/learning/lowpoly_policy.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs), {platform.platform()}",
        "task": task, "protocol": proto, "demos": len(low_demos),
        "demos_same_actions_and_states": same_actions,
        "arms": {k: {x: v for x, v in a.items() if x not in ("outcomes", "episode_keys")} for k, a in arms.items()},
        "against_libero": comparisons,
        "outcomes": {k: a["outcomes"] for k, a in arms.items()}, "episode_keys": keys,
        "wall_s": {k: round(v) for k, v in times.items()},
    }
    write_json(Path(args.results), result)
    for name, c in comparisons.items():
        print(f"{name}: {arms[name]['successes']}/{arms[name]['episodes']} vs libero "
              f"{arms['libero']['successes']}/{arms['libero']['episodes']}: {c['delta_points']:+.1f} points, "
              f"Fisher p {c['fisher_p']:.3g}, +{c['gained']}/-{c['lost']} (McNemar p {c['mcnemar_p']:.3g})")
    print(f"demos with the same actions and states in both scenes: {same_actions}; wrote {args.results}")


if __name__ == "__main__":
    main()
