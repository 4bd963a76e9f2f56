"""The seed's experiment on its own suite: LIBERO-10 demos -> one multi-task SFT policy -> its eval -> E1-E6 as
one array from it -> their evals -> our Tables 1 and 2 beside the seed's.

    python benchmarks/learning/libero10.py [--out runs/libero10] [--results docs/results/libero10_replication.json]
        [--executor local|slurm] [--commit] [--quick]

Every stage is a `grpo-vla` command, skipped when its output exists (run.py's `stage`), so an interrupted
run continues where it stopped: demos per task; `grpo-vla sft` on all of them (language-conditioned, one
policy); its eval with the seed's protocol (init states 30-49, one episode each: 20 per task); then
`grpo-vla train --exp all --policy SFT` (one array; on restart each unfinished arm is resumed, a finished
one returns at once); then each arm's last checkpoint evaluated like SFT. After SFT's eval and after each
arm's, the results file is rewritten (temp file, then rename) and, with --commit, committed alone: per arm
and task the counts, the per-episode outcomes and their (init state, noise seed) keys, drift, the
E-signatures (clip ratio, KL, E5's fallback and E6's replay shares of the group members), the seed's
numbers for the same arm, the command and the commit. `grpo-vla report` then prints both tables beside the
seed's imported counts (docs/seed_table1.csv).

PROTOCOL is what the preregistration (docs/results/PREREGISTRATION.md) fixes, in two entries: "LIBERO-10
SFT rule" (the SFT settings, chosen on the training init states only) must be committed before SFT's
held-out eval, and "LIBERO-10 replication" (which of the seed's findings should reproduce, and what
counts) before the array. --quick is a few-minute version for tests, on one task (not a result; it
needs neither).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout import code_commit, commit_file, git, write_json  # noqa: E402 - run.py (imported by heldout) sets the env first
from run import CLI, stage, train_stage  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEED_TABLE = ROOT / "docs" / "seed_table1.csv"  # the seed's Table 1: Base (its SFT) and E1-E6 per task
# the headings of this protocol's two entries in PREREGISTRATION.md: the SFT rule, written down before SFT's
# held-out eval (chosen on training init states only), and the findings expected, before any E-run
SFT_RULE_MARK, FINDINGS_MARK = "LIBERO-10 SFT rule", "LIBERO-10 replication"
PROTOCOL: dict[str, Any] = {
    "suite": "libero_10",
    "tasks": list(range(10)),  # the E-runs train and every policy is evaluated on all ten, as the seed's
    "demo_tasks": list(range(9)),  # the expert's: it refuses task 9 (the microwave), which gets no demos
    "scene": "lowpoly",  # the frames issue's scene, on which demos, SFT, every arm and every eval run
    "demo_init_states": list(range(0, 30)), "demo_repeats": 1, "demo_noise_std": 0.1, "demo_seed": 0,
    # the SFT rule: a placeholder until chosen on the training init states ("LIBERO-10 SFT rule")
    "sft_steps": 3000, "sft_lr": 1e-3, "sft_seed": 0, "privileged_state": True,
    "train_init_states": list(range(0, 30)),  # the E-runs' rollouts draw only these
    "eval_init_states": list(range(30, 50)), "eval_episodes_per_task": 20, "eval_seed": 0,
    "env_step_budget": 30000, "arms": ["e1", "e2", "e3", "e4", "e5", "e6"],
    "image_size": 64, "max_steps": 520, "n_action_steps": 10, "num_envs": 2,
}
QUICK: dict[str, Any] = {"tasks": [5], "demo_tasks": [5], "demo_init_states": [0], "train_init_states": [0],
                         "eval_init_states": [30], "eval_episodes_per_task": 1, "sft_steps": 10, "env_step_budget": 40,
                         "max_steps": 20, "num_envs": 1, "scene": "lean"}  # task 5: the expert's shortest demo


def seed_counts(label: str) -> dict[int, tuple[int, int]]:
    """The seed's (successes, episodes) per task for one row label of its Table 1 (Base = its SFT)."""
    with SEED_TABLE.open() as f:
        return {int(r["task_id"]): (int(r["successes"]), int(r["episodes"])) for r in csv.DictReader(f)
                if r["label"] == label}


def per_task(path: Path) -> dict[str, Any]:
    """An eval file as counts per task and per-episode outcomes with their (task, init state, noise seed) keys."""
    from grpo_cli.storage import read_eval

    data = read_eval(path)
    ep = data["episodes"]
    tasks = {}
    for t in sorted({int(x) for x in ep["task_id"]}):
        mine = ep["task_id"] == t
        tasks[str(t)] = {"successes": int(ep["success"][mine].sum()), "episodes": int(mine.sum())}
    return {"tasks": tasks, "successes": int(ep["success"].sum()), "episodes": int(len(ep["success"])),
            "outcomes": [int(x) for x in ep["success"]],
            "episode_keys": [[int(t), int(i), int(s)] for t, i, s in
                             zip(ep["task_id"], ep["init_state"], ep["noise_seed"], strict=True)],
            "scene": data["scene"]}


def signatures(run_dir: Path) -> dict[str, Any]:
    """What the seed's findings are about, from the run's metrics: drift, clip ratio and KL (E2: 0.00 and
    <= 1e-4), the group members that were natural successes, E5's fallbacks and E6's replays (totals), and
    the training success curve."""
    from grpo_cli.storage import read_metrics

    metrics, _ = read_metrics(run_dir / "metrics.jsonl")
    total = {k: sum(m.get(f"reward_composition/{k}", 0) for m in metrics)
             for k in ("natural_success", "fallback_success", "fallback_failure", "replay_injected")}
    kls = [m["kl"] for m in metrics if "kl" in m]
    return {"train_steps": len(metrics), "env_steps": int(sum(m["env_steps"] for m in metrics)),
            "drift_pct": metrics[-1]["drift_pct"] if metrics else 0.0,
            "clip_ratio_mean": sum(m.get("clip_ratio/region_mean", 0.0) for m in metrics) / max(len(metrics), 1),
            "kl_mean": sum(kls) / len(kls) if kls else 0.0, "kl_max": max(kls) if kls else 0.0,
            "reward_composition": total, "groups_rolled_out": sum(m.get("groups_rolled_out", 0) for m in metrics),
            "training_success_curve": [round(m["success_rate"], 4) for m in metrics]}


def preregistered(mark: str) -> bool:
    """Whether the committed PREREGISTRATION.md of this code's checkout holds the entry headed `mark`."""
    try:
        text = git(Path(__file__).resolve().parent, "show", "HEAD:docs/results/PREREGISTRATION.md")
    except subprocess.CalledProcessError:
        return False
    return mark in text


def require(mark: str, what: str, quick: bool) -> None:
    if not quick and not preregistered(mark):
        sys.exit(f"no '{mark}' entry in the committed docs/results/PREREGISTRATION.md: write it down before {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/libero10")
    parser.add_argument("--results", default="docs/results/libero10_replication.json")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local",
                        help="where the E1-E6 array runs (slurm: one array job; this waits for it)")
    parser.add_argument("--slurm", nargs="*", default=[], metavar="ARG",
                        help="extra `train` options for the slurm array, e.g. --cpus 2 --time-min 600")
    parser.add_argument("--commit", action="store_true", help="git-commit the results file after each arm")
    parser.add_argument("--quick", action="store_true", help="a few-minute version for tests (not a result)")
    args = parser.parse_args()
    proto = {**PROTOCOL, **(QUICK if args.quick else {})}
    os.environ["GRPO_VLA_SCENE"] = proto["scene"]  # every stage below: demos, SFT's data, rollouts, evals
    out, results_path = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if results.setdefault("protocol", proto) != proto:
        sys.exit(f"{results_path} was measured under another protocol: start a new file (and a new "
                 "preregistration entry) rather than mixing them")
    results.setdefault("arms", {})
    log, times = out / "commands.log", {}
    tasks = ",".join(map(str, proto["tasks"]))

    def record(arm: str, value: dict[str, Any]) -> None:
        results["arms"][arm] = value
        results["commit"] = code_commit()
        results["command"] = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
        write_json(results_path, results)
        print(f"[{arm}] {value['successes']}/{value['episodes']}; wrote {results_path}", flush=True)
        if args.commit:
            commit_file(results_path, f"libero10: {arm} {value['successes']}/{value['episodes']}")

    # 1. demos, one file per task (a stopped collection resumes at the task it was in), then SFT on all
    demo_files = []
    for task in proto["demo_tasks"]:
        demos = out / f"demos_task{task}.h5"
        stage(f"demos task {task}", ["demos", "--suite", proto["suite"], "--tasks", str(task), "--init-states",
                                     ",".join(map(str, proto["demo_init_states"])), "--repeats",
                                     str(proto["demo_repeats"]), "--noise-std", str(proto["demo_noise_std"]),
                                     "--image-size", str(proto["image_size"]), "--workers", "2", "--seed",
                                     str(proto["demo_seed"]), "--out", str(demos)], demos, log, times)
        demo_files.append(str(demos))
    policy = out / "sft"
    stage("sft", ["sft", *demo_files, *(["--privileged-state"] if proto["privileged_state"] else []),
                  "--steps", str(proto["sft_steps"]), "--lr", str(proto["sft_lr"]), "--seed", str(proto["sft_seed"]),
                  "--out", str(policy)], policy, log, times)

    # 2. every policy is evaluated the same way: the seed's protocol, on the held-out init states
    def evaluate(name: str, checkpoint: Path) -> Path:
        path = out / f"eval_{name}.h5"
        stage(f"eval {name}", ["eval", "--policy", str(checkpoint), "--suite", proto["suite"], "--tasks", tasks,
                               "--init-states", ",".join(map(str, proto["eval_init_states"])),
                               "--episodes-per-task", str(proto["eval_episodes_per_task"]),
                               "--image-size", str(proto["image_size"]), "--max-steps", str(proto["max_steps"]),
                               "--n-action-steps", str(proto["n_action_steps"]), "--num-envs", str(proto["num_envs"]),
                               *(["--parallel-envs"] if proto["num_envs"] > 1 else []),
                               "--seed", str(proto["eval_seed"]), "--out", str(path)], path, log, times)
        return path

    if "sft" not in results["arms"]:
        require(SFT_RULE_MARK, "SFT's held-out eval", args.quick)
        record("sft", {**per_task(evaluate("sft", policy)), "seed": {"label": "Base", "tasks": {
            str(t): list(c) for t, c in seed_counts("Base").items()}}})

    # 3. E1-E6 as one array from the SFT policy, at one env-step budget; resumed arm by arm after a stop
    array = out / "array"
    require(FINDINGS_MARK, "any E-run", args.quick)
    settings = [f"suite={proto['suite']}", f"tasks={tasks}",
                f"init_states={','.join(map(str, proto['train_init_states']))}",
                f"env_step_budget={proto['env_step_budget']}", "steps=100000", f"image_size={proto['image_size']}",
                f"max_steps={proto['max_steps']}", f"n_action_steps={proto['n_action_steps']}",
                f"num_envs={proto['num_envs']}", f"parallel_envs={'true' if proto['num_envs'] > 1 else 'false'}",
                "save_every=5"]
    train = [*(a for kv in settings for a in ("--set", kv)), "--policy", str(policy)]
    if not any((array / arm / "config.json").exists() for arm in proto["arms"]):
        stage("array", ["train", "--exp", ",".join(proto["arms"]), *train, "--run-dir", str(array),
                        "--executor", args.executor, *(["--wait", *args.slurm] if args.executor == "slurm" else [])],
              array / "done", log, times)
        for arm in proto["arms"]:  # the array returned: every arm ran to the budget
            (array / arm / "done").touch()
    for arm in proto["arms"]:
        if arm in results["arms"]:
            print(f"[{arm}] recorded in {results_path}", flush=True)
            continue
        run_dir = array / arm
        # after a stop: an arm that started goes on from its last checkpoint, one that did not starts here
        train_stage(arm, run_dir, ["--exp", arm, *train], log, times)
        last = sorted((run_dir / "checkpoints").glob("step_*.h5"))[-1]
        start = time.perf_counter()
        value = per_task(evaluate(arm, last))
        record(arm, {**value, **signatures(run_dir), "eval_wall_s": round(time.perf_counter() - start),
                     "seed": {"label": arm.upper(), "tasks": {str(t): list(c) for t, c in
                                                              seed_counts(arm.upper()).items()}}})

    # 4. Tables 1 and 2 beside the seed's: our evals and the seed's imported counts in one report
    seed_evals = []
    for label in [] if args.quick else ["Base", *(a.upper() for a in proto["arms"])]:
        path = out / f"seed_{label}.h5"
        stage(f"import seed {label}", ["import-eval", str(SEED_TABLE), "--label", label, "--out", str(path)],
              path, log, times)
        seed_evals.append(f"seed {label}={path}")
    ours = [f"SFT={out / 'eval_sft.h5'}", *(f"{a.upper()}={out / f'eval_{a}.h5'}" for a in proto["arms"]),
            *(f"{a.upper()}_run={array / a}" for a in proto["arms"])]
    subprocess.run([*CLI, "report", *ours, *seed_evals, "--baseline", "SFT",
                    "--out", str(out / "report"), "--title", "LIBERO-10: the seed's E1-E6, ours beside its"],
                   check=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
