"""Tuning a new version of `recommended` on what PREREGISTRATION.md allows: task 0's training init states.

    python benchmarks/learning/tune.py --name v3a --rl-seeds 0,1 --set likelihood=fpo [--split inner] [--commit]

Same SFT rule, budget and CPU configuration as the held-out measurement (heldout.PROTOCOL), on LIBERO-
Object task 0, init states 0-29 only; the held-out init states 30-49 and tasks 1-9 are never touched.
Two splits of those 30 init states:
- `train` (version 2's tuning): demos, SFT and RL rollouts from 0-29, and the eval on 0-29 too (2 episodes
  each) -- so it scores the policy on the init states RL trained on;
- `inner` (from version 3 on): the held-out protocol in miniature -- demos, SFT and RL rollouts from 0-19,
  the eval on 20-29 (6 episodes each), init states that neither SFT nor RL saw, as on the held-out tasks.
Both evals have 60 episodes from the "eval" noise stream (no training episode shares its noise). A
candidate is `recommended` (as on this checkout) plus the --set overrides; each (candidate, RL seed) arm
is scored against the SFT policy on the same 60 episodes and appended, with its outcomes, to the split's
results file (temp file, then rename; with --commit, a git commit of that file alone), so every attempt
is on record, kept or not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout import METHODS, PROTOCOL, QUICK, code_commit, eval_arm, git, run_summary, write_json  # noqa: E402
from run import stage, train_stage  # noqa: E402

TASK = 0
EPISODES_PER_INIT_STATE = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the candidate's name in the results file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of `recommended` (repeatable)")
    parser.add_argument("--method", choices=tuple(METHODS), default="recommended",
                        help="`recommended` (GRPO: the preset plus --set) or `steer` (the noise actor's settings)")
    parser.add_argument("--env-step-budget", type=int, default=None, help="default: the method's held-out budget")
    parser.add_argument("--rl-seeds", default="0,1")
    parser.add_argument("--split", choices=("train", "inner"), default="inner",
                        help="score on RL's own init states (train) or on ones SFT and RL never saw (inner)")
    parser.add_argument("--out", help="default: runs/tune (train), runs/tune_inner (inner)")
    parser.add_argument("--results", help="default: docs/results/tuning.json (train), tuning_inner.json (inner)")
    parser.add_argument("--commit", action="store_true", help="git-commit the results file after each arm")
    parser.add_argument("--quick", action="store_true", help="a few-minute version for tests (not a result)")
    args = parser.parse_args()
    if any("=" not in kv for kv in args.set):
        sys.exit(f"--set takes KEY=VALUE, got {next(kv for kv in args.set if '=' not in kv)!r}")
    overrides = dict(kv.split("=", 1) for kv in args.set)
    method = METHODS[args.method]
    proto = {**PROTOCOL, "env_step_budget": args.env_step_budget or method["env_step_budget"],
             **(QUICK if args.quick else {})}
    tune_states = proto["train_init_states"]  # 0-29: the only init states tuning may see
    episodes = EPISODES_PER_INIT_STATE * len(tune_states)  # 60
    if args.split == "train":
        fit_states = eval_states = tune_states
        default_out, default_results = "runs/tune", "docs/results/tuning.json"
    else:
        cut = len(tune_states) * 2 // 3  # 0-19 to fit, 20-29 to score
        fit_states, eval_states = tune_states[:cut], tune_states[cut:]
        proto["tuning_split"] = {"fit_init_states": fit_states, "eval_init_states": eval_states}
        default_out, default_results = "runs/tune_inner", "docs/results/tuning_inner.json"
    if args.method != "recommended":  # each method its own tuning file and runs
        default_out, default_results = f"{default_out}_{args.method}", default_results.replace(".json",
                                                                                              f"_{args.method}.json")
    out, results_path = Path(args.out or default_out) / f"task{TASK}", Path(args.results or default_results)
    out.mkdir(parents=True, exist_ok=True)
    fit, scored = ",".join(map(str, fit_states)), ",".join(map(str, eval_states))
    results = json.loads(results_path.read_text()) if results_path.exists() else {
        "task": TASK, "suite": proto["suite"], "tune_init_states": tune_states, "fit_init_states": fit_states,
        "eval_init_states": eval_states, "eval_episodes": episodes, "env_step_budget": proto["env_step_budget"],
        "protocol": proto, "arms": []}
    if results.setdefault("protocol", proto) != proto:
        sys.exit(f"{results_path} was tuned under another protocol: use another results file")
    log, times = out / "commands.log", {}
    where = ["--suite", proto["suite"], "--tasks", str(TASK)]
    demos, policy = out / "demos.h5", out / "sft"
    stage("demos", ["demos", *where, "--image-size", str(proto["image_size"]), "--init-states", fit,
                    "--workers", "2", "--seed", str(proto["demo_seed"]), "--out", str(demos)], demos, log, times)
    stage("sft", ["sft", str(demos), "--privileged-state", "--steps", str(proto["sft_steps"]), "--lr",
                  str(proto["sft_lr"]), "--seed", str(proto["sft_seed"]), "--out", str(policy)], policy, log, times)
    common_eval = ["--suite", proto["suite"], "--tasks", str(TASK), "--image-size", str(proto["image_size"]),
                   "--max-steps", str(proto["max_steps"]), "--n-action-steps", str(proto["n_action_steps"]),
                   "--init-states", scored, "--episodes-per-task", str(episodes), "--num-envs",
                   str(proto["num_envs"]), *(["--parallel-envs"] if proto["num_envs"] > 1 else []),
                   "--seed", str(proto["eval_seed"])]
    stage("eval sft", ["eval", "--policy", str(policy), *common_eval, "--out", str(out / "eval_sft.h5")],
          out / "eval_sft.h5", log, times)
    sft = eval_arm(out / "eval_sft.h5")
    results["sft"] = {k: sft[k] for k in ("successes", "episodes", "outcomes")}
    for seed in [int(s) for s in args.rl_seeds.split(",") if s.strip()]:
        if any(a["name"] == args.name and a["rl_seed"] == seed for a in results["arms"]):
            print(f"[{args.name} seed {seed}] recorded already", flush=True)
            continue
        run_dir = out / f"run_{args.name}_seed{seed}"
        start = time.perf_counter()
        settings = {"suite": proto["suite"], "tasks": TASK, "init_states": fit, "seed": seed,
                    "env_step_budget": proto["env_step_budget"], "steps": 100000,
                    "image_size": proto["image_size"], "max_steps": proto["max_steps"],
                    "n_action_steps": proto["n_action_steps"], "num_envs": proto["num_envs"],
                    "parallel_envs": str(proto["num_envs"] > 1).lower(), "save_every": 5, **overrides}
        train_stage(f"{args.name} seed {seed}", run_dir, [
            *(["--exp", "recommended"] if method["command"] == "train" else []), "--policy", str(policy),
            *(a for k, v in settings.items() for a in ("--set", f"{k}={v}"))], log, times, command=method["command"])
        train_s = time.perf_counter() - start
        last = sorted((run_dir / "checkpoints").glob("step_*.h5"))[-1]
        ev = out / f"eval_{args.name}_seed{seed}.h5"
        start = time.perf_counter()
        stage(f"eval {args.name} seed {seed}", ["eval", "--policy", str(last), *common_eval, "--out", str(ev)],
              ev, log, times)
        arm = eval_arm(ev)
        if results_path.exists():  # re-read: another tuning process may have added its arm meanwhile
            results["arms"] = json.loads(results_path.read_text())["arms"]
        gained = sum(r > s for r, s in zip(arm["outcomes"], sft["outcomes"], strict=True))
        lost = sum(r < s for r, s in zip(arm["outcomes"], sft["outcomes"], strict=True))
        results["arms"].append({
            "name": args.name, "rl_seed": seed, "overrides": overrides, "commit": code_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "successes": arm["successes"], "episodes": arm["episodes"],
            "delta_points": round(100 * (arm["successes"] - sft["successes"]) / arm["episodes"], 1),
            "gained": gained, "lost": lost, "outcomes": arm["outcomes"], "episode_keys": arm["episode_keys"],
            **run_summary(run_dir),
            "wall_s": {"train": round(train_s), "eval": round(time.perf_counter() - start)}})
        write_json(results_path, results)
        print(f"[{args.name} seed {seed}] {arm['successes']}/{arm['episodes']} vs SFT {sft['successes']}/"
              f"{sft['episodes']} (+{gained} / -{lost}); wrote {results_path}", flush=True)
        if args.commit:
            where_git = results_path.resolve().parent
            git(where_git, "add", results_path.name)
            git(where_git, "commit", "-q", "-m", f"tuning (task 0, {args.split} split): {args.name} RL seed "
                f"{seed} {arm['successes']}/{arm['episodes']} (SFT {sft['successes']}/{sft['episodes']})",
                "--", results_path.name)


if __name__ == "__main__":
    main()
