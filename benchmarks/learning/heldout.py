"""The held-out measurement (docs/results/PREREGISTRATION.md): `recommended` and `e2` against their SFT
policy on LIBERO-Object tasks and init states that no tuning saw, the RL seed as the unit.

    python benchmarks/learning/heldout.py [--tasks 2,4,6,8] [--rl-seeds 0,1] [--e2-seeds 0] [--commit]

Per task: scripted demos from the training init states only -> SFT (fixed demo count and steps) -> its
eval on the held-out init states. Per unit (task x RL seed): `recommended` trained on the training init
states to the env-step budget -> its eval on the same held-out episodes as SFT's. `e2` on the seeds in
--e2-seeds, at the same budget. After each arm finishes, its outcomes go into the results file (temp
file, then rename) and, with --commit, into a git commit of that file alone: a session that ends
abruptly loses at most the arm in flight. Run it from a checkout of the preregistered commit (a git
worktree) so that work on the main checkout cannot change the code being measured; --results may
point into the main checkout. The results file records the commit the code came from. Finished arms
are skipped; stages whose output exists in OUT are skipped (see run.py's `stage`). PROTOCOL is the
preregistered protocol: changing it means a new dated entry in PREREGISTRATION.md and a rerun of
every unit.

Two pipelines side by side (a unit leaves half of a 2-core box idle): give them disjoint --tasks and
their own --results files, then join those into the version's file:

    python benchmarks/learning/heldout.py --merge PART.json [PART.json ...] --results docs/results/heldout_v3.json

--merge refuses parts of different versions, protocols or commits, a unit found in two parts, and
two SFT evals of one task.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CLI, stage, train_stage  # noqa: E402 - sets the LIBERO environment variables first

PROTOCOL: dict[str, Any] = {
    "suite": "libero_object",
    "train_init_states": list(range(0, 30)),  # demos, SFT and RL rollouts draw only these
    "eval_init_states": list(range(30, 50)),  # 20 held-out init states x 5 noise seeds = 100 episodes
    "eval_episodes": 100,
    "eval_seed": 0,  # the "eval" noise stream: never a training episode's noise (grpo_cli.episodes)
    "demo_seed": 0, "sft_steps": 1250, "sft_lr": 1e-3, "sft_seed": 0,
    "env_step_budget": 30000,
    # The CPU configuration of every learning run so far (run.py), not a method setting:
    "image_size": 64, "max_steps": 280, "n_action_steps": 10, "num_envs": 2,
}
# The preregistered methods this checkout measures (PREREGISTRATION.md), each its own results file: the arm
# `recommended` (GRPO, `grpo-vla train`, version 3) and the arm `steer` (the noise actor, `grpo-vla steer`).
# A method's protocol is PROTOCOL with its own env-step budget.
METHODS: dict[str, dict[str, Any]] = {
    "recommended": {"version": 3, "command": "train", "env_step_budget": 30000, "results": "heldout_v3.json",
                    "out": "runs/heldout_v3"},
    "steer": {"version": 2, "command": "steer", "env_step_budget": 100000, "results": "heldout_steer_v2.json",
              "out": "runs/heldout_steer_v2"},
}
VERSION = METHODS["recommended"]["version"]
# --quick: a few-minute version of the protocol for tests (not a result)
QUICK: dict[str, Any] = {"train_init_states": [0, 1], "eval_init_states": [30], "eval_episodes": 2, "sft_steps": 20,
                         "env_step_budget": 120, "max_steps": 30, "num_envs": 1}


def git(where: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(where), *args], check=True, capture_output=True, text=True).stdout.strip()


def code_commit() -> str:
    """The commit of the checkout this script (and the grpo_cli it runs) comes from."""
    try:
        here = Path(__file__).resolve().parent
        dirty = git(here, "status", "--porcelain", "--untracked-files=no", "--", "../../grpo_cli", ".")
        return git(here, "rev-parse", "HEAD") + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def commit_file(path: Path, message: str) -> None:
    """Commit one results file alone, in the repository that holds it (it may be another checkout)."""
    where, name = path.resolve().parent, path.name
    for attempt in range(5):  # someone else's commit may hold the index lock for a moment
        try:
            git(where, "add", name)
            git(where, "commit", "-q", "-m", message, "--", name)
            return
        except subprocess.CalledProcessError as err:
            print(f"git commit failed ({err.stderr.strip()[:200]}); retry {attempt + 1}", flush=True)
            time.sleep(10)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def eval_arm(path: Path) -> dict[str, Any]:
    from grpo_cli.storage import read_eval

    data = read_eval(path)
    episodes = data["episodes"]
    solved = {int(i) for i, ok in zip(episodes["init_state"], episodes["success"], strict=True) if ok}
    return {"successes": int(episodes["success"].sum()), "episodes": int(len(episodes["success"])),
            # the ceiling of a noise actor: the share of init states where any of the eval's noise seeds succeeded
            "init_states_any_success": round(len(solved) / len(set(episodes["init_state"].tolist())), 4),
            "outcomes": [int(x) for x in episodes["success"]],
            "episode_keys": [[int(i), int(s)] for i, s in zip(episodes["init_state"], episodes["noise_seed"],
                                                               strict=True)],
            "renderers": list(data.get("renderers", []))}


def run_summary(run_dir: Path) -> dict[str, Any]:
    from grpo_cli.storage import read_metrics

    metrics, _ = read_metrics(run_dir / "metrics.jsonl")
    half = max(len(metrics) // 2, 1)
    second = metrics[half:] or metrics
    return {"train_steps": len(metrics), "env_steps": int(sum(m["env_steps"] for m in metrics)),
            "drift_pct": metrics[-1]["drift_pct"],
            "training_success_first_half": sum(m["success_rate"] for m in metrics[:half]) / half,
            "training_success_second_half": sum(m["success_rate"] for m in second) / len(second),
            "clip_ratio_mean": sum(m.get("clip_ratio/region_mean", 0.0) for m in metrics) / len(metrics),
            "training_success_curve": [round(m["success_rate"], 4) for m in metrics],
            **({"gradient_updates": metrics[-1]["gradient_updates"]} if "gradient_updates" in metrics[-1] else {})}


def summarize(units: list[dict[str, Any]]) -> dict[str, Any]:
    """The across-units figures per arm, over the units whose SFT eval is in (without the per-unit rows)."""
    from grpo_cli.report import units_summary

    summary = units_summary({"units": [u for u in units if "sft" in u]})
    return {arm: {k: v for k, v in s.items() if k != "units"} for arm, s in summary.items()}


def merge(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One results file from several pipelines' files (name -> contents) of the same version and commit."""
    first_name, first = next(iter(parts.items()))
    for name, part in parts.items():
        for key in ("version", "protocol", "commit", "preset"):
            if part.get(key) != first.get(key):
                raise ValueError(f"{name} and {first_name} differ in {key}: only parts of one measurement merge")
    seen: dict[tuple[int, int], str] = {}
    sft: dict[int, list[int]] = {}
    units = []
    for name, part in parts.items():
        for u in part["units"]:
            if "sft" not in u:  # a pipeline's placeholder for the unit it was running
                continue
            key = (u["task"], u["rl_seed"])
            if key in seen:
                raise ValueError(f"task {key[0]} RL seed {key[1]} is in both {seen[key]} and {name}")
            seen[key] = name
            if sft.setdefault(u["task"], u["sft"]["outcomes"]) != u["sft"]["outcomes"]:
                raise ValueError(f"task {key[0]}: the SFT evals of the parts differ (a task's units share one SFT)")
            units.append(u)
    units.sort(key=lambda u: (u["task"], u["rl_seed"]))
    return {**first, "units": units, "part_commands": {name: p["command"] for name, p in parts.items()},
            "merged_from": list(parts), "summary": summarize(units)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="2,4,6,8")
    parser.add_argument("--rl-seeds", default="0,1")
    parser.add_argument("--e2-seeds", default="", help="e2 is the same in every version: version 1 measured it")
    parser.add_argument("--method", choices=tuple(METHODS), default="recommended",
                        help="the arm measured: GRPO's `recommended` or the noise actor `steer`")
    parser.add_argument("--out", help="default: the method's (runs/heldout_v3, runs/heldout_steer)")
    parser.add_argument("--results", help="default: the method's (docs/results/heldout_v3.json, heldout_steer_v2.json)")
    parser.add_argument("--sft-reference", default=None,
                        help="a results file whose SFT evals this pipeline's must equal, task by task (the same "
                             "SFT policies, rebuilt by the rule); default for steer: docs/results/heldout.json")
    parser.add_argument("--commit", action="store_true", help="git-commit the results file after each arm")
    parser.add_argument("--quick", action="store_true", help="a few-minute version for tests (not a result)")
    parser.add_argument("--merge", nargs="+", metavar="PART", help="join pipelines' results files into --results")
    args = parser.parse_args()
    if args.merge:
        try:
            merged = merge({name: json.loads(Path(name).read_text()) for name in args.merge})
        except (OSError, ValueError, KeyError) as err:
            sys.exit(f"cannot merge: {err}")
        merged["command"] = "python " + " ".join([sys.argv[0], *sys.argv[1:]])  # the merge itself
        write_json(Path(args.results), merged)
        print(f"merged {len(merged['units'])} units from {len(args.merge)} files into {args.results}")
        return
    method = METHODS[args.method]
    proto = {**PROTOCOL, "env_step_budget": method["env_step_budget"]}
    if args.quick:
        proto.update(QUICK)
    out = Path(args.out or method["out"])
    results_path = Path(args.results or f"docs/results/{method['results']}")
    out.mkdir(parents=True, exist_ok=True)
    train_states = ",".join(map(str, proto["train_init_states"]))
    eval_states = ",".join(map(str, proto["eval_init_states"]))
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    # a file with units but no "preset" predates presets in the file: version 1 of `recommended`
    if results.setdefault("preset", "recommended" if results.get("units") else args.method) != args.method:
        sys.exit(f"{results_path} measures {results['preset']}, not {args.method}: give each method its own file")
    results.setdefault("suite", proto["suite"])
    results.setdefault("env_step_budget", proto["env_step_budget"])
    results.setdefault("protocol", proto)
    results.setdefault("units", [])
    # files of `recommended` before versions were version 1
    found = results.setdefault("version", 1 if results["units"] else method["version"])
    if found != method["version"]:
        sys.exit(f"{results_path} holds version {found} of {args.method}, this checkout measures version "
                 f"{method['version']}: give each version its own results file")
    if results["protocol"] != proto:
        sys.exit(f"{results_path} was measured under another protocol: start a new file (and a new "
                 "preregistration entry) rather than mixing them")
    log, times = out / "commands.log", {}
    common_eval = ["--suite", proto["suite"], "--image-size", str(proto["image_size"]), "--max-steps",
                   str(proto["max_steps"]), "--n-action-steps", str(proto["n_action_steps"]),
                   "--init-states", eval_states, "--episodes-per-task", str(proto["eval_episodes"]),
                   "--num-envs", str(proto["num_envs"]), "--seed", str(proto["eval_seed"]),
                   *(["--parallel-envs"] if proto["num_envs"] > 1 else [])]
    seeds = [int(s) for s in args.rl_seeds.split(",") if s.strip()]
    e2_seeds = [int(s) for s in args.e2_seeds.split(",") if s.strip()]

    def unit(task: int, seed: int) -> dict[str, Any]:
        found = [u for u in results["units"] if u["task"] == task and u["rl_seed"] == seed]
        if found:
            return found[0]
        new = {"task": task, "rl_seed": seed, "train_init_states": proto["train_init_states"],
               "eval_init_states": proto["eval_init_states"]}
        results["units"].append(new)
        return new

    def record(task: int, seed: int, arm: str, value: dict[str, Any], sft: dict[str, Any]) -> None:
        u = unit(task, seed)
        u["sft"], u[arm] = sft, value
        results["commit"] = code_commit()
        results["command"] = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
        results["summary"] = summarize(results["units"])
        write_json(results_path, results)
        print(f"[task {task} seed {seed}] {arm} {value['successes']}/{value['episodes']} vs SFT "
              f"{sft['successes']}/{sft['episodes']}; wrote {results_path}", flush=True)
        if args.commit:
            commit_file(results_path, f"heldout: task {task} RL seed {seed} {arm} {value['successes']}/"
                                      f"{value['episodes']} (SFT {sft['successes']}/{sft['episodes']})")

    # Every task's `recommended` units first, then the e2 arms: the headline's units finish earliest.
    passes = [(task, [(s, args.method) for s in seeds]) for task in [int(t) for t in args.tasks.split(",")]]
    passes += [(task, [(s, "e2") for s in e2_seeds]) for task, _ in passes]
    for task, arms in passes:
        todo = [(s, arm) for s, arm in arms if arm not in unit(task, s)]
        if not todo:
            print(f"[task {task}] every arm recorded: {', '.join(f'{a} seed {s}' for s, a in arms)}", flush=True)
            continue
        d = out / f"task{task}"
        d.mkdir(exist_ok=True)
        where = ["--suite", proto["suite"], "--tasks", str(task)]
        demos = d / "demos.h5"
        stage(f"task{task} demos", ["demos", *where, "--image-size", str(proto["image_size"]), "--init-states",
                                    train_states, "--workers", "2", "--seed", str(proto["demo_seed"]),
                                    "--out", str(demos)], demos, log, times)
        policy = d / "sft"
        stage(f"task{task} sft", ["sft", str(demos), "--privileged-state", "--steps", str(proto["sft_steps"]),
                                  "--lr", str(proto["sft_lr"]), "--seed", str(proto["sft_seed"]),
                                  "--out", str(policy)], policy, log, times)
        stage(f"task{task} eval_sft", ["eval", "--policy", str(policy), "--tasks", str(task), *common_eval,
                                       "--out", str(d / "eval_sft.h5")], d / "eval_sft.h5", log, times)
        sft = eval_arm(d / "eval_sft.h5")
        reference = args.sft_reference or ("docs/results/heldout.json" if args.method == "steer" and not args.quick
                                           else None)
        if reference:
            recorded = [u["sft"]["outcomes"] for u in json.loads(Path(reference).read_text())["units"]
                        if u["task"] == task and "sft" in u]
            if recorded and recorded[0] != sft["outcomes"]:
                sys.exit(f"task {task}: the rebuilt SFT policy's eval differs from {reference}'s; it is not the "
                         "same SFT policy")
        earlier = [u["sft"] for u in results["units"] if u["task"] == task and "sft" in u]
        if earlier and earlier[0]["outcomes"] != sft["outcomes"]:  # a rebuilt SFT policy must be the same one
            sys.exit(f"task {task}: this SFT policy's eval differs from the one recorded in {results_path}; "
                     "the units of a task share one SFT policy")
        sft["wall_s"] = earlier[0]["wall_s"] if earlier else {
            k.split(" ", 1)[1]: round(v) for k, v in times.items() if k.startswith(f"task{task} ")}
        for seed, arm in todo:
            run_dir = d / f"run_{arm}_seed{seed}"
            start = time.perf_counter()
            command = METHODS[arm]["command"] if arm in METHODS else "train"
            train_stage(f"task{task} {arm} seed {seed}", run_dir, [
                *(["--exp", arm] if command == "train" else []), "--policy", str(policy),
                *(a for kv in [f"suite={proto['suite']}", f"tasks={task}", f"init_states={train_states}",
                               f"seed={seed}", f"env_step_budget={proto['env_step_budget']}", "steps=100000",
                               f"image_size={proto['image_size']}", f"max_steps={proto['max_steps']}",
                               f"n_action_steps={proto['n_action_steps']}", f"num_envs={proto['num_envs']}",
                               f"parallel_envs={'true' if proto['num_envs'] > 1 else 'false'}", "save_every=5"]
                  for a in ("--set", kv))], log, times, command=command)
            train_s = time.perf_counter() - start
            last = sorted((run_dir / "checkpoints").glob("step_*.h5"))[-1]
            ev = d / f"eval_{arm}_seed{seed}.h5"
            start = time.perf_counter()
            stage(f"task{task} eval {arm} seed {seed}", ["eval", "--policy", str(last), "--tasks", str(task),
                                                         *common_eval, "--out", str(ev)], ev, log, times)
            value = {**eval_arm(ev), **run_summary(run_dir),
                     "wall_s": {"train": round(train_s), "eval": round(time.perf_counter() - start)}}
            record(task, seed, arm, value, sft)
    subprocess.run([*CLI, "report", str(results_path), "--out", str(out / "report"),
                    "--title", f"Held-out units: {args.method} vs SFT"], check=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
