"""The `grpo-vla` command: each subcommand parses, resolves its config, and calls one library function."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from grpo_cli.errors import EnvFailure, UserError


def _int_list(value: str | None, what: str) -> tuple[int, ...] | None:
    """'0,2,5-7' -> (0, 2, 5, 6, 7)."""
    if value is None or value == "all":
        return None
    out: list[int] = []
    try:
        for part in value.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise UserError(f"bad {what} {value!r}: use comma-separated integers or ranges, e.g. 0,2,5-7") from None
    if not out or min(out) < 0:
        raise UserError(f"bad {what} {value!r}: integers must be >= 0")
    return tuple(out)


def _setup_runtime() -> None:
    """One torch thread per process (more threads on a shared box made CPU work 10-100x slower)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(int(os.environ.get("GRPO_VLA_TORCH_THREADS", "1")))


def _interactive() -> bool:
    return sys.stderr.isatty() and "SLURM_JOB_ID" not in os.environ


@contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on a terminal; plain log lines when piped or inside SLURM."""
    if _interactive():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("{task.fields[last]}"), transient=False) as bar:
            task = bar.add_task(label, total=total, last="")
            yield lambda msg: bar.update(task, advance=1, last=msg)
    else:
        done = [0]

        def log(msg: str) -> None:
            done[0] += 1
            click.echo(f"[{label}] {done[0]}/{total} {msg}", err=True)

        yield log


def _load_policy(source: str, device: str) -> Any:
    from grpo_cli.policies.smolvla import SmolVLAAdapter

    return SmolVLAAdapter.load(source, device=device)


_common = [
    click.option("--policy", default="tiny", show_default=True,
                 help="`tiny[:SEED]`, a local lerobot policy directory, or a hub id"),
    click.option("--suite", default="libero_10", show_default=True, help="LIBERO suite"),
    click.option("--max-steps", type=int, default=None, help="episode limit (default: the suite's)"),
    click.option("--n-action-steps", type=int, default=None,
                 help="actions executed per chunk (default: the policy's)"),
    click.option("--image-size", type=int, default=256, show_default=True, help="camera resolution"),
    click.option("--seed", type=int, default=0, show_default=True, help="seeds every noise stream"),
    click.option("--device", default="cpu", show_default=True),
    click.option("--out", required=True, type=click.Path(dir_okay=False), help="HDF5 file to write"),
    click.option("--overwrite", is_flag=True, help="replace an existing --out"),
    click.option("--parallel-envs", is_flag=True,
                 help="step the envs in spawned worker processes, in parallel (one env per process)"),
    click.option("--overlap-policy", is_flag=True,
                 help="two lanes of envs take turns, so the policy works while envs step (pays with --parallel-envs)"),
]


def common_options(fn: Callable) -> Callable:
    for option in reversed(_common):
        fn = option(fn)
    return fn


_cluster = [
    click.option("--executor", type=click.Choice(["local", "slurm", "debug"]), default="local", show_default=True,
                 help="where the work runs: this machine, SLURM (submitit), or submitit's in-process debug"),
    click.option("--slurm-config", type=click.Path(dir_okay=False), default=None,
                 help="YAML whose `slurm:` section holds SLURM settings (options below override it)"),
    click.option("--partition", default=None), click.option("--account", default=None),
    click.option("--qos", default=None),
    click.option("--time-min", type=int, default=None, help="job wall-time limit in minutes [240]"),
    click.option("--cpus", "cpus_per_task", type=int, default=None, help="CPUs per job [2]"),
    click.option("--gpus", "gpus_per_node", type=int, default=None, help="GPUs per job [0]"),
    click.option("--mem-gb", type=int, default=None, help="memory per job in GB [16]"),
    click.option("--array-parallelism", type=int, default=None, help="array tasks running at once [64]"),
    click.option("--signal-delay", "signal_delay_s", type=int, default=None,
                 help="seconds of warning before the time limit: one step plus a checkpoint [180]"),
    click.option("--setup", multiple=True, help="shell line run before each job (repeatable)"),
    click.option("--container", default=None, help="Apptainer image: SLURM jobs run inside it (exec --nv)"),
    click.option("--max-retries", type=int, default=None, help="resubmissions of a failed shard [2]"),
    click.option("--max-requeues", type=int, default=None,
                 help="time-limit requeues a job may take before it stops (submitit's default is 3) [200]"),
]


def cluster_options(fn: Callable) -> Callable:
    for option in reversed(_cluster):
        fn = option(fn)
    return fn


def _slurm_settings(section: dict | None, slurm_config: str | None, options: dict[str, Any]) -> Any:
    """SLURM settings: a YAML `slurm:` section, then the command-line options."""
    from grpo_cli.cluster import SlurmSettings
    from grpo_cli.presets import load_yaml

    if slurm_config:
        loaded = load_yaml(slurm_config)
        section = {**(section or {}), **(loaded.get("slurm", loaded) or {})}
    return SlurmSettings.resolve(section, **options)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="grpo-vla")
def cli() -> None:
    """GRPO fine-tuning of flow-matching VLA policies (SmolVLA) on LIBERO."""


@cli.command()
@common_options
@click.option("--tasks", default="0", show_default=True, help="task ids, e.g. 0,3,5-7, or 'all'")
@click.option("--init-states", default="0", show_default=True, help="init-state indices; one group each")
@click.option("--num-generations", type=int, default=6, show_default=True, help="trajectories per group")
@click.option("--denoise-tiers", default="10", show_default=True,
              help="denoising steps per member: 1x1,5x10 (two-tier), 1x8,1x9,1x10, or a uniform K")
@click.option("--num-envs", type=int, default=0, show_default=True,
              help="envs in lockstep sharing each policy call (0 = one per group member)")
@click.option("--no-images", is_flag=True, help="store low-dim data only")
@click.option("--shards", type=int, default=1, show_default=True,
              help="split the groups over this many jobs (local subprocesses or SLURM array tasks), then merge")
@cluster_options
def rollout(policy: str, suite: str, max_steps: int | None, n_action_steps: int | None, image_size: int,
            seed: int, device: str, out: str, overwrite: bool, parallel_envs: bool, overlap_policy: bool, tasks: str,
            init_states: str,
            num_generations: int, denoise_tiers: str, num_envs: int, no_images: bool, shards: int,
            executor: str, slurm_config: str | None, **slurm: Any) -> None:
    """Sample groups of trajectories that differ only in their initial flow noise; write HDF5."""
    from grpo_cli.cluster import split
    from grpo_cli.config import RolloutConfig
    from grpo_cli.evaluate import resolve_tasks
    from grpo_cli.rollout import group_episodes, rollout_part
    from grpo_cli.storage import check_output_path

    cfg = RolloutConfig(policy=policy, suite=suite, tasks=_int_list(tasks, "--tasks") or (),
                        init_states=_int_list(init_states, "--init-states") or (),
                        num_generations=num_generations, denoise_tiers=denoise_tiers, max_steps=max_steps,
                        n_action_steps=n_action_steps, image_size=image_size, store_images=not no_images,
                        seed=seed, num_envs=num_envs, parallel_envs=parallel_envs, overlap_policy=overlap_policy,
                        device=device)
    check_output_path(out, overwrite)
    _setup_runtime()
    task_specs = resolve_tasks(cfg.suite, cfg.tasks or None)
    for task in task_specs:
        bad = [i for i in cfg.init_states if i >= task.num_init_states]
        if bad or not cfg.init_states:
            raise UserError(f"bad --init-states: task {task.task_id} has init states "
                            f"0..{task.num_init_states - 1}")
    episodes = group_episodes(task_specs, cfg.init_states, cfg.steps_per_member, cfg.seed)
    if shards < 1:
        raise UserError("--shards must be >= 1")
    if shards > 1 or executor != "local":
        _sharded(executor, _slurm_settings(None, slurm_config, slurm), "rollout", cfg.to_json(), out, [
            [e for g in part for e in g]
            for part in split([episodes[i:i + cfg.num_generations]
                               for i in range(0, len(episodes), cfg.num_generations)], shards)])
        return
    with progress(len(episodes), "rollout") as tick:
        counts = rollout_part(cfg.to_json(), episodes, out, on_episode=lambda t: tick(
            f"task {t.spec.task.task_id} init {t.spec.init_state} K={t.spec.denoise_steps} "
            f"{'success' if t.success else 'fail'}"))
    click.echo(f"wrote {out}: {counts['trajectories']} trajectories in "
               f"{counts['trajectories'] // cfg.num_generations} groups, {counts['successes']} successes, "
               f"{counts['env_steps']} env steps")


def _sharded(executor_kind: str, settings: Any, what: str, config_json: str, out: str, shards: list[list[Any]]
             ) -> Any:
    """Run rollout/eval shards as one array job, retry failures, merge the parts into OUT in order."""
    import shutil
    from pathlib import Path

    from grpo_cli.cluster import make_executor, parts_dir, run_shards
    from grpo_cli.evaluate import eval_part
    from grpo_cli.rollout import rollout_part
    from grpo_cli.storage import merge_evals, merge_rollouts

    out_path = Path(out)
    folder = parts_dir(out_path)
    parts = [folder / f"part_{i:04d}.h5" for i in range(len(shards))]
    ex = make_executor(executor_kind, folder / "submitit", settings, f"grpo-vla-{what}")
    click.echo(f"{what}: {len(shards)} shard(s) on the {executor_kind} executor; logs in {folder / 'submitit'}",
               err=True)
    fn = rollout_part if what == "rollout" else eval_part
    run_shards(ex, fn, [(config_json, shard, str(part)) for shard, part in zip(shards, parts, strict=True)],
               settings.max_retries, log=lambda msg: click.echo(msg, err=True))
    (merge_rollouts if what == "rollout" else merge_evals)(parts, out_path, config_json)
    shutil.rmtree(folder, ignore_errors=True)
    click.echo(f"wrote {out_path} from {len(parts)} shard(s)")
    return out_path


@cli.command("eval")
@common_options
@click.option("--tasks", default="all", show_default=True, help="task ids, e.g. 0,3,5-7, or 'all'")
@click.option("--init-states", default="all", show_default=True,
              help="the init states evaluation uses, e.g. 30-49 (held out from training); episode i starts "
                   "from the (i mod count)-th")
@click.option("--episodes-per-task", type=int, default=20, show_default=True,
              help="episode i starts from init state i (mod 50)")
@click.option("--denoise-steps", type=int, default=10, show_default=True)
@click.option("--sde-noise", type=float, default=0.0, show_default=True,
              help="0: deterministic sampler; a > 0: the Flow-SDE sampler (noise level a) an sde run trains")
@click.option("--num-envs", type=int, default=1, show_default=True,
              help="envs in lockstep sharing each policy call")
@cluster_options
def eval_cmd(policy: str, suite: str, max_steps: int | None, n_action_steps: int | None, image_size: int,
             seed: int, device: str, out: str, overwrite: bool, parallel_envs: bool, overlap_policy: bool, tasks: str,
             init_states: str, episodes_per_task: int, denoise_steps: int, sde_noise: float, num_envs: int,
             executor: str,
             slurm_config: str | None, **slurm: Any) -> None:
    """Evaluate a policy with the seed's protocol; print per-task success with Wilson intervals."""
    from grpo_cli.config import EvalConfig
    from grpo_cli.evaluate import eval_episodes, eval_part, resolve_tasks, summarize
    from grpo_cli.storage import check_output_path, read_eval

    cfg = EvalConfig(policy=policy, suite=suite, tasks=_int_list(tasks, "--tasks"),
                     init_states=_int_list(init_states, "--init-states") or (), episodes_per_task=episodes_per_task,
                     denoise_steps=denoise_steps, sde_noise=sde_noise,
                     max_steps=max_steps,
                     n_action_steps=n_action_steps, image_size=image_size, seed=seed, num_envs=num_envs,
                     parallel_envs=parallel_envs, overlap_policy=overlap_policy, device=device)
    check_output_path(out, overwrite)
    _setup_runtime()
    task_specs = resolve_tasks(cfg.suite, cfg.tasks)
    eval_episodes(cfg, task_specs)  # bad --init-states fail here, before any env starts
    if executor != "local":  # one array task per LIBERO task, merged into one eval file
        path = _sharded(executor, _slurm_settings(None, slurm_config, slurm), "eval", cfg.to_json(), out,
                        [[t.task_id] for t in task_specs])
        data = read_eval(path)
        print_eval_table(summarize(data["episodes"], data["tasks"]), title=f"{cfg.suite} - {cfg.policy}")
        return
    with progress(len(task_specs) * cfg.episodes_per_task, "eval") as tick:
        source = eval_part(cfg.to_json(), [t.task_id for t in task_specs], out, on_episode=lambda t: tick(
            f"task {t.spec.task.task_id} init {t.spec.init_state} {'success' if t.success else 'fail'}"))
    data = read_eval(out)
    print_eval_table(summarize(data["episodes"], data["tasks"]), title=f"{cfg.suite} - {source}")
    click.echo(f"scene {data['scene']}, rendered by {', '.join(data['renderers']) or 'nothing'}; wrote {out}")


_run_options = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                 help="YAML file of settings (applied after the preset, before --set)"),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override one setting (repeatable)"),
    click.option("--policy", default=None, help="shortcut for --set policy=..."),
    click.option("--steps", type=int, default=None, help="shortcut for --set steps=..."),
    click.option("--seeds", default=None, help="one run per seed, e.g. 0,1 (RUN_DIR/seedS); with --per-task, "
                                               "one per task and seed"),
    click.option("--per-task", is_flag=True, help="one run per task of `tasks` (RUN_DIR/taskT)"),
    click.option("--run-dir", default=None, type=click.Path(file_okay=False),
                 help="run directory [default: runs/<exp>, printed]"),
    click.option("--resume", is_flag=True, help="continue the run in --run-dir from its latest checkpoint"),
    click.option("--dry-run", is_flag=True, help="print the resolved config and exit (it refuses what the run would)"),
    click.option("--wait", is_flag=True, help="with --executor slurm: wait for the jobs and report how they ended"),
]


def run_options(fn: Callable) -> Callable:
    for option in reversed(_run_options):
        fn = option(fn)
    return fn


# What a resumed run may change: how long it runs and how it saves, never what it learns.
EXTENDABLE = {"steps", "env_step_budget", "save_every", "save_latest"}


def _resolve_runs(algorithm: str, exp: str | None, config_file: str | None, sets: tuple[str, ...],
                  policy: str | None, steps: int | None, seeds: str | None, per_task: bool, run_dir: str | None,
                  resume: bool) -> tuple[list[tuple[Any, Any]], dict | None, str]:
    """The (config, run directory) pairs a `train` or `steer` command asks for, the YAML's slurm section,
    and the top run directory. Each config is validated here, before anything runs or is written."""
    from pathlib import Path

    from grpo_cli.config import SteerConfig
    from grpo_cli.presets import PRESETS, load_yaml, parse_sets, resolve

    def make(name: str | None, values: dict[str, Any]) -> Any:
        return resolve(None, values, SteerConfig) if algorithm == "steer" else resolve(name, values)

    names = [e.strip() for e in (exp or "").split(",") if e.strip()]
    if run_dir is None:
        if resume:
            raise UserError("--resume needs the --run-dir of the run to continue")
        one = len(names) <= 1 and names != ["all"] and not seeds and not per_task
        run_dir = f"runs/{names[0] if names else algorithm if algorithm == 'steer' else 'train'}" if one else "runs"
        click.echo(f"run directory: {run_dir}{'' if one else '/<run>'}", err=True)
    if resume:
        extend = parse_sets(sets)
        if exp or config_file or policy or seeds or per_task or set(extend) - EXTENDABLE:
            raise UserError("--resume takes its settings from the run directory; pass only --run-dir, --steps "
                            f"and --set for {', '.join(sorted(EXTENDABLE))}")
        saved = Path(run_dir) / "config.json"
        if not saved.is_file():
            raise UserError(f"{run_dir} holds no run to resume (no config.json)")
        values = json.loads(saved.read_text())
        return [(make(None, {**values, **extend, **({"steps": steps} if steps else {})}), Path(run_dir))], None, run_dir
    overrides = {**(load_yaml(config_file) if config_file else {}), **parse_sets(sets)}
    section = overrides.pop("slurm", None)
    if policy:
        overrides["policy"] = policy
    if steps:
        overrides["steps"] = steps
    names = [f"e{i}" for i in range(1, 7)] if names == ["all"] else names or [None]
    for name in names:
        if name is not None and name not in PRESETS:
            raise UserError(f"unknown experiment {name!r}; choose from {', '.join(PRESETS)} or all")
    seed_list = _int_list(seeds, "--seeds") if seeds else None
    runs = []
    for name in names:
        base = make(name, overrides)  # validates the preset and overrides as given
        for task in (base.tasks if per_task else [None]):
            for seed in (seed_list or [None]):
                values = {**overrides, **({"tasks": (task,)} if task is not None else {}),
                          **({"seed": seed} if seed is not None else {})}
                parts = [*([name] if len(names) > 1 else []), *([f"task{task}"] if task is not None else []),
                         *([f"seed{seed}"] if seed is not None else [])]
                runs.append((make(name, values), Path(run_dir, "_".join(parts)) if parts else Path(run_dir)))
    for cfg, directory in runs:
        if (directory / "config.json").exists():
            raise UserError(f"{directory} already holds a run: use --resume or another --run-dir")
        _check_run(cfg)  # what the run itself refuses, refused before it starts (and in --dry-run)
    return runs, section, run_dir


def _check_run(cfg: Any) -> None:
    """The checks a run makes when it starts, without starting it: the suite, its tasks and init states."""
    from grpo_cli.envs.libero import task_spec
    from grpo_cli.episodes import usable_init_states

    for task in cfg.tasks:
        usable_init_states(cfg.init_states, task_spec(cfg.suite, task), "init_states")


def _launch(algorithm: str, runs: list[tuple[Any, Any]], section: dict | None, run_dir: str, dry_run: bool,
            wait: bool, executor: str, slurm_config: str | None, slurm: dict[str, Any], resume: bool) -> None:
    """Run `train` or `steer` runs: print them (--dry-run), submit them as one SLURM array, or run them here."""
    import dataclasses
    from pathlib import Path

    if dry_run:
        configs = {str(directory): json.loads(cfg.to_json()) for cfg, directory in runs}
        click.echo(json.dumps(next(iter(configs.values())) if len(configs) == 1 else configs, indent=1))
        return
    settings = _slurm_settings(section, slurm_config, slurm)
    for cfg, directory in runs:  # what the run's SLURM shard workers (and a requeued trainer) ask for
        if getattr(cfg, "rollout_shards", 0) and cfg.shard_executor == "slurm":
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "slurm.json").write_text(json.dumps(dataclasses.asdict(settings)))
    if algorithm == "steer":
        from grpo_cli.steer import run_job
        from grpo_cli.steer import steer as run_training
    else:
        from grpo_cli.train import run_job
        from grpo_cli.train import train as run_training
    if executor != "local":
        from grpo_cli.cluster import failure_reason, make_executor, submit_training
        from grpo_cli.runs import TrainJob

        folder = Path(run_dir) / "submitit"
        ex = make_executor(executor, folder, settings, f"grpo-vla-{algorithm}")
        for _, directory in runs:
            directory.mkdir(parents=True, exist_ok=True)
        jobs = submit_training(ex, TrainJob(run_job), [(cfg.to_json(), str(directory)) for cfg, directory in runs])
        for job, (_, directory) in zip(jobs, runs, strict=True):
            click.echo(f"job {job.job_id}: {directory}")
        click.echo(f"logs in {folder}")
        if wait or executor == "debug":
            failed = []
            for job, (_, directory) in zip(jobs, runs, strict=True):
                try:
                    click.echo(f"{directory}: last checkpoint {job.result()}")
                except Exception as err:
                    failed.append(f"{directory} (job {job.job_id}): {failure_reason(err)}")
            if failed:
                raise UserError(f"{algorithm} failed: " + "; ".join(failed))
        return
    _setup_runtime()
    if len(runs) > 1:  # several runs on this machine: one after another
        for cfg, directory in runs:
            click.echo(f"== {cfg.exp}: {directory}", err=True)
            run_training(cfg, directory, log=lambda msg: click.echo(msg, err=True))
        return
    cfg, directory = runs[0]

    def summary(m: dict) -> str:
        if algorithm == "steer":
            return (f"step {m['step']} env steps {m['env_steps_total']} success {m['success_rate']:.2f} "
                    f"{'actor' if m['steering'] else 'warm-up'} updates {m['gradient_updates']} "
                    f"actor change {m.get('actor_change', 0.0):.3f} "
                    f"rollout {m['time/rollout']:.1f}s update {m['time/update']:.1f}s")
        return (f"step {m['step']}/{cfg.steps} reward {m['reward']:.3f} success {m['success_rate']:.2f} "
                f"zero_std {m['frac_reward_zero_std']:.2f} kl {m.get('kl', 0.0):.2e} "
                f"clip {m.get('clip_ratio/region_mean', 0.0):.2f} drift {m['drift_pct']:.4f}% "
                f"rollout {m['time/rollout']:.1f}s update {m['time/update']:.1f}s")

    # A live rich bar with the latest diagnostics on a terminal; one plain line per step otherwise.
    with progress(cfg.steps, algorithm) as tick:
        last = run_training(cfg, directory, resume=resume, log=lambda msg: click.echo(msg, err=True),
                            on_step=lambda m: tick(summary(m)))
    click.echo(f"run {directory}: last checkpoint {last}")


@cli.command()
@click.option("--exp", default=None, help="preset: e1 ... e6 (the seed's experiments), recommended; a list or all")
@run_options
@cluster_options
def train(exp: str | None, config_file: str | None, sets: tuple[str, ...], policy: str | None, steps: int | None,
          seeds: str | None, per_task: bool, run_dir: str | None, resume: bool, dry_run: bool, wait: bool,
          executor: str, slurm_config: str | None, **slurm: Any) -> None:
    """GRPO fine-tuning of the flow head (presets e1-e6 reproduce the seed).

    `--exp e1,e2` (or `all`: e1-e6) trains one run per experiment in RUN_DIR/<exp>; with
    `--executor slurm` they are one array job. SLURM jobs checkpoint and requeue before their time
    limit or on preemption and resume where they stopped."""
    runs, section, top = _resolve_runs("train", exp, config_file, sets, policy, steps, seeds, per_task, run_dir,
                                       resume)
    _launch("train", runs, section, top, dry_run, wait, executor, slurm_config, slurm, resume)


@cli.command()
@run_options
@cluster_options
def steer(config_file: str | None, sets: tuple[str, ...], policy: str | None, steps: int | None, seeds: str | None,
          per_task: bool, run_dir: str | None, resume: bool, dry_run: bool, wait: bool, executor: str,
          slurm_config: str | None, **slurm: Any) -> None:
    """Noise-space RL (DSRL): SAC trains an actor that picks each chunk's flow noise; the policy stays frozen.

    The last checkpoint is a policy: `grpo-vla eval --policy RUN/checkpoints/step_N.h5` evaluates the frozen
    policy steered by its actor. `--per-task --seeds 0,1 --executor slurm`: one array job over tasks x seeds."""
    runs, section, top = _resolve_runs("steer", None, config_file, sets, policy, steps, seeds, per_task, run_dir,
                                       resume)
    _launch("steer", runs, section, top, dry_run, wait, executor, slurm_config, slurm, resume)


@cli.command()
@click.option("--suite", default="libero_object", show_default=True, help="LIBERO suite")
@click.option("--tasks", default="0", show_default=True, help="task ids, e.g. 0,3,5-7, or 'all'")
@click.option("--init-states", default="0-49", show_default=True, help="init-state indices")
@click.option("--repeats", type=int, default=1, show_default=True, help="demos per (task, init state)")
@click.option("--noise-std", type=float, default=0.1, show_default=True,
              help="Gaussian noise on the executed pose actions (diversity)")
@click.option("--image-size", type=int, default=64, show_default=True, help="camera resolution")
@click.option("--privileged-state/--robot-state", default=True, show_default=True,
              help="record the goal objects' positions too (obs/privileged)")
@click.option("--workers", type=int, default=1, show_default=True, help="spawned env processes")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="HDF5 file to write")
@click.option("--overwrite", is_flag=True, help="replace an existing --out")
def demos(suite: str, tasks: str, init_states: str, repeats: int, noise_std: float, image_size: int,
          privileged_state: bool, workers: int, seed: int, out: str, overwrite: bool) -> None:
    """Scripted expert demonstrations, LIBERO layout: the goals of LIBERO-Object and LIBERO-10 tasks 0-8
    (placements, a stove's knob, a drawer); a task it cannot carry out is refused in one line."""
    import json

    from grpo_cli.envs.libero import num_tasks, scene_mode, task_spec
    from grpo_cli.expert import collect_demos
    from grpo_cli.storage import check_output_path, write_demos

    path = check_output_path(out, overwrite)
    if repeats < 1 or workers < 1 or noise_std < 0 or image_size < 16:
        raise UserError("repeats and workers must be >= 1, noise-std >= 0, image-size >= 16")
    task_ids = _int_list(tasks, "--tasks") or tuple(range(num_tasks(suite)))
    specs = {t: task_spec(suite, t) for t in task_ids}
    inits = _int_list(init_states, "--init-states") or ()
    bad = [i for i in inits if any(i >= s.num_init_states for s in specs.values())]
    if bad or not inits:
        last = min(s.num_init_states for s in specs.values()) - 1
        raise UserError(f"bad --init-states: tasks have init states 0..{last}")

    _setup_runtime()
    total = len(task_ids) * len(inits) * repeats
    with progress(total, "demos") as tick:
        done = [0]

        def advance(n: int) -> None:
            while done[0] < n:
                done[0] += 1
                tick("")
        result = collect_demos(suite, list(task_ids), list(inits), noise_std, image_size, privileged_state,
                               seed=seed, repeats=repeats, workers=workers, on_demo=advance)
    config = {"suite": suite, "tasks": task_ids, "init_states": inits, "repeats": repeats, "noise_std": noise_std,
              "image_size": image_size, "privileged_state": privileged_state, "seed": seed}
    write_demos(path, result, specs, json.dumps(config), {"image_size": image_size, "suite": suite,
                                                           "scene": scene_mode()})
    ok = sum(d.success for d in result)
    click.echo("expert success by task: " + ", ".join(  # where the expert (and so SFT) has holes
        f"{t}: {sum(d.success for d in result if d.task_id == t)}/{sum(d.task_id == t for d in result)}"
        for t in task_ids))
    click.echo(f"expert success {ok}/{len(result)} ({100 * ok / len(result):.1f}%), "
               f"mean length {sum(d.length for d in result) / len(result):.0f} steps; wrote {path}")


@cli.command()
@click.argument("demo_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--policy", default="tiny", show_default=True,
              help="`tiny[:SEED]` (fresh, stats from the demos) or a policy directory / hub id to continue")
@click.option("--privileged-state", is_flag=True, help="train on robot state + goal object positions")
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="policy directory to write")
def sft(demo_files: tuple[str, ...], policy: str, privileged_state: bool, steps: int, batch_size: int, lr: float,
        seed: int, out: str) -> None:
    """Behaviour cloning with lerobot's flow-matching loss; writes a policy dir that train/eval accept."""
    from grpo_cli.sft import SFTConfig
    from grpo_cli.sft import sft as run_sft

    cfg = SFTConfig(demos=demo_files, policy=policy, privileged_state=privileged_state, steps=steps,
                    batch_size=batch_size, lr=lr, seed=seed)
    _setup_runtime()
    with progress(-(-steps // cfg.log_every), "sft") as tick:
        summary = run_sft(cfg, out, log=lambda msg: click.echo(msg, err=True),
                          on_step=lambda m: tick(f"step {m['step']} loss {m['loss']:.4f}"))
    click.echo(f"loss {summary['loss_before']:.4f} -> {summary['loss_after']:.4f} "
               f"({summary['train_seconds']:.0f} s); wrote {out}")


@cli.command("drift")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--ref", default=None, help="reference policy (default: the policy the run started from)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def drift_cmd(checkpoint: str, ref: str | None, as_json: bool) -> None:
    """Weight drift of a checkpoint from its SFT reference (the seed's Table 2), total and per module."""
    import json

    from grpo_cli.drift import FLOOR, drift
    from grpo_cli.policies.smolvla import module_of

    _setup_runtime()
    tuned = _load_policy(checkpoint, "cpu")
    reference = _load_policy(ref or tuned.identity["lineage"]["source"], "cpu")
    names = dict(tuned.policy.named_parameters())
    ref_params = dict(reference.policy.named_parameters())
    if set(names) != set(ref_params) or any(names[n].shape != ref_params[n].shape for n in names):
        raise UserError("the reference has a different architecture from the checkpoint")
    result = drift(names, ref_params, module_of)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"drift of {checkpoint} from {reference.identity['source']} (floor {FLOOR:g})")
    for col in ("module", "drift %", "L1 ratio %", "relative L2", "parameters"):
        table.add_column(col, justify="right")
    for module, r in sorted(result.items(), key=lambda kv: kv[0] != "total"):
        table.add_row(module, f"{r['drift_pct']:.4f}", f"{r['l1_ratio_pct']:.4f}", f"{r['rel_l2']:.2e}",
                      f"{r['numel']:,}")
    Console(width=max(100, Console().width)).print(table)


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="directory to write")
def export(checkpoint: str, out: str) -> None:
    """Write a training checkpoint in lerobot's save_pretrained format (relocatable)."""
    from pathlib import Path

    if Path(out).exists() and any(Path(out).iterdir()):
        raise UserError(f"{out} exists and is not empty")
    _setup_runtime()
    adapter = _load_policy(checkpoint, "cpu")
    adapter.save_pretrained(out)
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="directory to write the report into")
@click.option("--baseline", default=None, help="label of the eval column to test against (default: the first)")
@click.option("--title", default="grpo-vla report", show_default=True)
def report(inputs: tuple[str, ...], out: str, baseline: str | None, title: str) -> None:
    """Tables 1 and 2, significance, figures and a diagnosis from eval files and run directories.

    INPUTS are eval files (Table 1 columns) and run directories (curves, diagnosis), each optionally
    LABEL=PATH. Writes OUT/report.md, OUT/report.html (self-contained), OUT/*.png and OUT/report.json.
    """
    from grpo_cli.report import build_report

    summary = build_report(inputs, out, baseline, title)
    for label, d in summary["diagnosis"].items():
        click.echo(f"{label}: {d['verdict']}")
    click.echo(f"wrote {out}/report.md, report.html and {len(summary['figures'])} figures")


@cli.command("merge-evals")
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="eval file to write")
@click.option("--overwrite", is_flag=True, help="replace an existing --out")
def merge_evals_cmd(parts: tuple[str, ...], out: str, overwrite: bool) -> None:
    """Merge eval files of one policy over disjoint tasks (e.g. slurm/eval_array.sbatch's) into one."""
    from pathlib import Path

    from grpo_cli.storage import check_output_path, merge_evals, read_eval

    check_output_path(out, overwrite)
    datas = [read_eval(p) for p in parts]
    if len({d["policy"].get("params_sha1") for d in datas}) > 1 or len({str(d["suite"]) for d in datas}) > 1:
        raise UserError("the eval files come from different policies or suites")
    seen: set[int] = set()
    for p, d in zip(parts, datas, strict=True):
        ids = {t["task_id"] for t in d["tasks"]}
        if ids & seen:
            raise UserError(f"{p} repeats task(s) {sorted(ids & seen)}")
        seen |= ids
    merge_evals([Path(p) for p in parts], Path(out), json.dumps(datas[0]["config"]))
    click.echo(f"wrote {out}: {len(seen)} tasks from {len(parts)} files")


@cli.command("import-eval")
@click.argument("csv_file", type=click.Path(dir_okay=False))
@click.option("--suite", default="libero_10", show_default=True, help="LIBERO suite the task ids refer to")
@click.option("--label", default=None, help="which policy's rows, when the CSV has a label column")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="eval file to write")
@click.option("--overwrite", is_flag=True, help="replace an existing --out")
def import_eval(csv_file: str, suite: str, label: str | None, out: str, overwrite: bool) -> None:
    """Turn a CSV of per-task success counts (task_id,successes,episodes[,label,drift_pct]) into an eval file,
    so published numbers sit beside ours in `grpo-vla report` (docs/seed_table1.csv: the seed's Table 1)."""
    from grpo_cli.storage import check_output_path, import_csv

    check_output_path(out, overwrite)
    path = import_csv(csv_file, suite, label, out)
    click.echo(f"wrote {path}")


def print_eval_table(results: list[Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from grpo_cli.evaluate import mean_over_tasks

    table = Table(title=title)
    for col, justify in [("task", "right"), ("name", "left"), ("success %", "right"), ("95% CI (Wilson)", "right"),
                         ("n", "right"), ("mean length", "right")]:
        table.add_column(col, justify=justify)
    for r in results:
        lo, hi = r.interval
        table.add_row(str(r.task_id), r.name[:60], f"{100 * r.rate:.1f}", f"[{100 * lo:.1f}, {100 * hi:.1f}]",
                      str(r.episodes), f"{r.mean_length:.1f}")
    mean, (lo, hi) = mean_over_tasks(results)
    table.add_row("", "[bold]mean over tasks[/bold]", f"[bold]{100 * mean:.1f}[/bold]",
                  f"[{100 * lo:.1f}, {100 * hi:.1f}]", str(sum(r.episodes for r in results)), "")
    Console(width=max(120, Console().width)).print(table)


def main() -> None:
    """Entry point: user errors (exit code 2) and env failures (1) become one line on stderr, never a traceback."""
    if not os.environ.get("GRPO_VLA_WARNINGS"):  # libraries' deprecation chatter is not the user's business
        warnings.simplefilter("ignore")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")  # spawned env workers and submitit jobs too
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except UserError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except EnvFailure as err:
        click.echo(f"error: {str(err).splitlines()[0]}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
