"""The learning demonstration: scripted demos -> SFT -> GRPO (`recommended` vs `e2`) -> evals -> report.

    python benchmarks/learning/run.py [--out runs/learning] [--task 0] [--rl-seeds 0,1,2] [--quick]

Every stage is a `grpo-vla` command (printed before it runs, timed, logged to OUT/commands.log) and is
skipped when its output already exists, so an interrupted run continues where it stopped. Both
trainings start from the same SFT policy and stop at the same budget of environment steps. Results
(success with Wilson intervals, Fisher's exact test of each run against SFT, wall times) go to
OUT/results.json and OUT/results.md. `--rl-seeds` runs `recommended` with each of these RL seeds
(which init states and flow noise its rollouts draw; the SFT policy and the eval episodes stay the same):
at 30k env steps the RL seed alone has moved eval success by 18 points (docs/NOTEBOOK.md). A larger
`--env-step-budget` over a finished OUT resumes its runs to the new budget; their earlier evals are
kept as OUT/eval_<run>_<old budget>steps.h5.

CPU-friendly configuration, stated plainly: a tiny SmolVLA (lerobot's classes, random-initialised
SmolVLM of 4 layers) trained from scratch on the demos; 64 px cameras; the robot state extended with
the privileged positions of the target object and the basket region (`--privileged-state`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_shared = Path(__file__).resolve().parents[3] / "shared" / "libero" / "assets"
if "GRPO_VLA_LIBERO_ASSETS" not in os.environ and _shared.is_dir():
    os.environ["GRPO_VLA_LIBERO_ASSETS"] = str(_shared)

CLI = [sys.executable, "-m", "grpo_cli"]


def stage(name: str, args: list[str], output: Path, log: Path, times: dict[str, float]) -> None:
    """Run one grpo-vla command unless its output exists; record the command and its wall time."""
    if output.exists():
        print(f"[{name}] exists: {output}", flush=True)
        return
    command = " ".join(shlex.quote(a) for a in ["grpo-vla", *args])
    print(f"[{name}] {command}", flush=True)
    start = time.perf_counter()
    subprocess.run([*CLI, *args], check=True)
    times[name] = time.perf_counter() - start
    with log.open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {name}  {times[name]:.0f}s  {command}\n")


def train_stage(name: str, run_dir: Path, train_args: list[str], log: Path, times: dict[str, float],
                command: str = "train") -> None:
    """Train into run_dir until it is done: resume a run that was interrupted, else start it with train_args
    (skipped when RUN_DIR/done exists). `done` marks a finished run: a checkpoint alone may be mid-run.
    command: `train` (GRPO) or `steer` (the noise actor); both resume the same way."""
    if (run_dir / "config.json").exists() and not (run_dir / "done").exists():
        stage(f"resume {name}", [command, "--resume", "--run-dir", str(run_dir)], run_dir / "done", log, times)
        (run_dir / "done").touch()
    stage(f"{command} {name}", [command, *train_args, "--run-dir", str(run_dir)], run_dir / "done", log, times)
    (run_dir / "done").touch()


def retire_evals(out: Path, name: str, budget: int) -> list[Path]:
    """Before run `name` is extended past `budget` env steps, rename its evals (deterministic and
    Flow-SDE sampler) to eval_<name>[_sde]_<budget>steps.h5: they score the old last checkpoint, and
    deleting them would lose results. Only this run's files: eval_recommended_seed1.h5 is not one of
    recommended's."""
    kept = []
    for suffix in ("", "_sde"):
        path = out / f"eval_{name}{suffix}.h5"
        if path.exists():
            kept.append(path.rename(out / f"eval_{name}{suffix}_{budget}steps.h5"))
    return kept


def success_counts(path: Path) -> tuple[int, int]:
    from grpo_cli.storage import read_eval

    episodes = read_eval(path)["episodes"]
    return int(episodes["success"].sum()), int(len(episodes["success"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/learning")
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--demo-init-states", default="0-49", help="a range: one demo per init state")
    parser.add_argument("--sft-steps", type=int, default=2000)
    parser.add_argument("--sft-lr", type=float, default=1e-3,
                        help="a from-scratch tiny policy needs 10x lerobot's fine-tuning rate (docs/NOTEBOOK.md)")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--env-step-budget", type=int, default=30000)
    parser.add_argument("--lr-head", type=float, default=1e-4, help="recommended's head learning rate")
    parser.add_argument("--seed", type=int, default=0, help="demos, SFT, eval episodes and the RL runs' seed")
    parser.add_argument("--rl-seeds", default="",
                        help="comma-separated RL seeds for `recommended` (default: --seed). The run at --seed "
                             "is run_recommended, another seed S run_recommended_seed<S>")
    parser.add_argument("--group-size", type=int, default=8, help="recommended's num_generations")
    parser.add_argument("--max-steps", type=int, default=280, help="episode limit in training and eval")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra setting of the recommended run (repeatable); recorded in results.json")
    parser.add_argument("--sde-evals", action="store_true",
                        help="also evaluate SFT and the SDE-trained run with the Flow-SDE sampler (two more evals)")
    parser.add_argument("--no-sde-evals", dest="sde_evals", action="store_false",
                        help="the default: deterministic-sampler evals only (kept for recorded commands)")
    parser.add_argument("--quick", action="store_true", help="a ~15 minute version (make demo)")
    args = parser.parse_args()
    if args.quick:
        args.demo_init_states, args.sft_steps, args.eval_episodes, args.env_step_budget = "0-3", 200, 4, 600
        args.group_size, args.max_steps = 4, 60  # short episodes: the pipeline runs, nothing is learnt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log, times = out / "commands.log", {}
    image = ["--image-size", "64"]
    where = ["--suite", args.suite, "--tasks", str(args.task)]
    evaluate = [*where, *image, "--max-steps", str(args.max_steps), "--n-action-steps", "10",
                "--episodes-per-task", str(args.eval_episodes), "--parallel-envs", "--num-envs", "2",
                "--seed", str(args.seed)]
    common = ["--set", f"suite={args.suite}", "--set", f"tasks={args.task}", "--set", "image_size=64",
              "--set", f"max_steps={args.max_steps}",
              "--set", "n_action_steps=10", "--set", "parallel_envs=true", "--set", "num_envs=2",
              "--set", f"env_step_budget={args.env_step_budget}", "--set", "steps=100000",
              "--set", "save_every=5"]

    # Demos in chunks of 24 init states: an interrupted collection resumes at the chunk it was in.
    lo, _, hi = args.demo_init_states.partition("-")
    states = list(range(int(lo), int(hi or lo) + 1))
    demo_files = []
    for chunk in (states[i:i + 24] for i in range(0, len(states), 24)):
        demos = out / f"demos_{chunk[0]:02d}-{chunk[-1]:02d}.h5"
        stage(f"demos {chunk[0]}-{chunk[-1]}", ["demos", *where, *image, "--init-states", f"{chunk[0]}-{chunk[-1]}",
                                                "--workers", "2", "--seed", str(args.seed), "--out", str(demos)],
              demos, log, times)
        demo_files.append(str(demos))
    policy = out / "sft"
    stage("sft", ["sft", *demo_files, "--privileged-state", "--steps", str(args.sft_steps), "--lr", str(args.sft_lr),
                  "--seed", str(args.seed),
                  "--out", str(policy)], policy, log, times)
    stage("eval_sft", ["eval", "--policy", str(policy), *evaluate, "--out", str(out / "eval_sft.h5")],
          out / "eval_sft.h5", log, times)
    recommended = ["--exp", "recommended", "--set", f"num_generations={args.group_size}", "--set",
                   f"lr_head={args.lr_head}", *(a for kv in args.overrides for a in ("--set", kv))]
    rl_seeds = list(dict.fromkeys(int(x) for x in args.rl_seeds.split(",") if x.strip())) or [args.seed]
    seed_runs = {s: "recommended" if s == args.seed else f"recommended_seed{s}" for s in rl_seeds}
    # Run name -> preset and RL seed; the headline preset's seeds first, the seed-faithful e2 last.
    runs = {**{name: [*recommended, "--set", f"seed={s}"] for s, name in seed_runs.items()},
            "e2": ["--exp", "e2", "--set", f"seed={args.seed}"]}
    samplers = {}  # run -> the Flow-SDE noise its training samples with (0: the deterministic sampler)
    for name, preset in runs.items():
        run_dir = out / f"run_{name}"
        saved = run_dir / "config.json"
        budget = json.loads(saved.read_text())["env_step_budget"] if saved.exists() else 0
        if (run_dir / "done").exists() and budget < args.env_step_budget:
            # A larger budget extends a finished run (resume is exact: same as running it from scratch).
            (run_dir / "done").unlink()
            retire_evals(out, name, budget)
            stage(f"extend_{name}", ["train", "--resume", "--run-dir", str(run_dir),
                                     "--set", f"env_step_budget={args.env_step_budget}"], run_dir / "done", log, times)
            (run_dir / "done").touch()
        stage(f"train_{name}", ["train", "--policy", str(policy), *common, *preset, "--run-dir", str(run_dir)],
              run_dir / "done", log, times)
        (run_dir / "done").touch()
        config = json.loads(saved.read_text())
        samplers[name] = config["sde_noise"] if config["likelihood"] == "sde" else 0.0
        last = sorted((run_dir / "checkpoints").glob("step_*.h5"))[-1]
        # Every policy is evaluated with the deterministic sampler, and an sde run also with the stochastic
        # policy its updates optimise (the Flow-SDE sampler at its noise level).
        sde = [("_sde", samplers[name])] if samplers[name] and args.sde_evals else []
        for suffix, noise in [("", 0.0), *sde]:
            stage(f"eval_{name}{suffix}", ["eval", "--policy", str(last), *evaluate, "--sde-noise", str(noise),
                                           "--out", str(out / f"eval_{name}{suffix}.h5")],
                  out / f"eval_{name}{suffix}.h5", log, times)
    # SFT with each sampler an RL run is evaluated with: the baseline gets the same choice.
    for noise in sorted({n for n in samplers.values() if n and args.sde_evals}):
        stage("eval_sft_sde", ["eval", "--policy", str(policy), *evaluate, "--sde-noise", str(noise),
                               "--out", str(out / "eval_sft_sde.h5")], out / "eval_sft_sde.h5", log, times)

    from scipy.stats import fisher_exact

    from grpo_cli.report import episode_outcomes
    from grpo_cli.stats import paired_test, wilson_interval
    from grpo_cli.storage import read_eval, read_metrics

    def compare(s: int, n: int, base: tuple[int, int]) -> tuple[float, float]:
        """(points over the base, two-sided Fisher p)"""
        b_s, b_n = base
        return 100 * (s / n - b_s / b_n), float(fisher_exact([[s, n - s], [b_s, b_n - b_s]])[1])

    sde_evals = args.sde_evals and any(samplers.values())
    rows = {"sft": 0.0, **({"sft_sde": max(samplers.values())} if sde_evals else {})}
    for name in runs:
        rows[name] = 0.0
        if samplers[name] and sde_evals:
            rows[f"{name}_sde"] = samplers[name]
    counts = {row: success_counts(out / f"eval_{row}.h5") for row in rows}
    sft_rows = [row for row in rows if row.startswith("sft")]
    best_sft = max(sft_rows, key=lambda row: counts[row][0] / counts[row][1])
    results = {}
    for row, noise in rows.items():
        s, n = counts[row]
        lo, hi = wilson_interval(s, n)
        entry = {"sampler": f"sde a={noise}" if noise else "ode", "success": s, "episodes": n, "rate": s / n,
                 "wilson95": [lo, hi]}
        name = row.removesuffix("_sde")
        if name != "sft":
            same = "sft_sde" if noise else "sft"
            entry["delta_points_vs_sft_same_sampler"], entry["fisher_p_vs_sft_same_sampler"] = compare(
                s, n, counts[same])
            entry["delta_points_vs_best_sft"], entry["fisher_p_vs_best_sft"] = compare(s, n, counts[best_sft])
            # Same episodes (init states, noise seeds) as SFT's eval: which did the run gain and lose?
            entry["paired_vs_sft_same_sampler"] = paired_test(
                *(episode_outcomes(read_eval(out / f"eval_{r}.h5")) or {} for r in (row, same)))
            entry["trained_sampler"] = noise == samplers[name]
            metrics = read_metrics(out / f"run_{name}" / "metrics.jsonl")[0]
            entry["train_steps"] = len(metrics)
            entry["env_steps"] = int(sum(m["env_steps"] for m in metrics))
        results[row] = entry
    # The RL seeds of `recommended`, side by side: the claim is the spread, not the best seed.
    seeds = {s: results[name] for s, name in seed_runs.items()}
    deltas = [r["delta_points_vs_sft_same_sampler"] for r in seeds.values()]
    replicates = {"seeds": list(seeds), "delta_points": deltas, "mean_delta_points": sum(deltas) / len(deltas),
                  "fisher_p": [r["fisher_p_vs_sft_same_sampler"] for r in seeds.values()],
                  "seeds_at_target": sum(d >= 15 and r["fisher_p_vs_sft_same_sampler"] < 0.05
                                         for d, r in zip(deltas, seeds.values(), strict=True))}
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    summary = {"args": vars(args), "best_sft": best_sft, "results": results, "recommended_rl_seeds": replicates,
               "wall_seconds": {**previous.get("wall_seconds", {}), **times}}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    lines = [f"Best SFT evaluation: {best_sft}. Rows marked * use the sampler the run trains.", "",
             "| policy | sampler | success | 95% Wilson | Δ vs SFT, same sampler (p) | Δ vs best SFT (p) "
             "| same episodes: gained / lost (McNemar p) | GRPO steps | env steps |", "|---" * 9 + "|"]
    for row, r in results.items():
        lo, hi = r["wilson95"]
        same = (f"{r['delta_points_vs_sft_same_sampler']:+.1f} ({r['fisher_p_vs_sft_same_sampler']:.3g})"
                if "train_steps" in r else "")
        best = f"{r['delta_points_vs_best_sft']:+.1f} ({r['fisher_p_vs_best_sft']:.3g})" if "train_steps" in r else ""
        mark = " *" if r.get("trained_sampler") else ""
        paired = r.get("paired_vs_sft_same_sampler")
        paired_text = f"+{paired['gained']} / −{paired['lost']} ({paired['p']:.3g})" if paired else ""
        lines.append(f"| {row}{mark} | {r['sampler']} | {r['success']}/{r['episodes']} ({100 * r['rate']:.1f}%) | "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] | {same} | {best} | {paired_text} | "
                     f"{r.get('train_steps', '')} | {r.get('env_steps', '')} |")
    lines += ["", f"`recommended` over RL seeds {', '.join(map(str, seeds))}: Δ vs SFT "
              f"{', '.join(f'{d:+.0f}' for d in deltas)} points (mean {replicates['mean_delta_points']:+.1f}); "
              f"{replicates['seeds_at_target']} of {len(seeds)} at ≥ +15 with Fisher p < 0.05."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    # Tables, significance, learning curves and diagnoses of both runs: OUT/report/report.{md,html}.
    subprocess.run([*CLI, "report", *(f"{row}={out / f'eval_{row}.h5'}" for row in rows),
                    *(str(out / f"run_{n}") for n in runs), "--baseline", best_sft, "--out", str(out / "report"),
                    "--title", f"Learning demonstration: {args.suite} task {args.task}"], check=True)


if __name__ == "__main__":
    main()
