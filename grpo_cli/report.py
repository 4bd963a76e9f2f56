"""`grpo-vla report`: the seed's Tables 1 and 2 from run outputs, with the statistics it lacked.

Inputs are eval files (the columns of Table 1) and run directories (training curves, diagnosis, the
drift of Table 2). An eval of a checkpoint is linked to the run directory holding that checkpoint,
which labels the column with the run's experiment and gives it the drift logged at that step.

Statistics:
- success per task: Wilson 95% interval; the mean row is the mean of task rates, with the Wilson
  interval of the pooled episodes (equal episodes per task make the two rates equal);
- each column against the baseline column: Fisher's exact test (two-sided) per task, Holm-corrected
  across the tasks of that column; for the mean, Fisher's test on pooled episodes, Holm-corrected
  across columns. `*` marks differences distinguishable from noise (adjusted p < 0.05);
- when a column and the baseline ran the same episodes (task, init state, noise seed: `eval` with one
  seed), the episodes gained and lost and McNemar's exact test on them: paired, hence more sensitive,
  and it tells a reshuffle of outcomes (as many lost as gained) from an improvement;
- Table 2: Pearson and Spearman correlation (scipy) of total drift with mean success.
- a held-out results file (`docs/results/heldout.json`: units of task x RL seed, each with its SFT eval
  and its RL evals on the same held-out episodes): per unit the change, Fisher and McNemar; across units
  (the unit of replication) the mean change with a t interval and a bootstrap interval, and how many
  units improved or worsened significantly (McNemar p < 0.05).
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from grpo_cli.errors import UserError
from grpo_cli.stats import across_units, paired_test, unit_comparison, wilson_interval
from grpo_cli.storage import publish, read_eval, read_metrics

ALPHA = 0.05
CURVES = ["success_rate", "reward", "progress", "frac_reward_zero_std", "kl", "clip_ratio/region_mean",
          "grad_norm/head", "grad_norm/policy_term", "value/explained_variance", "drift_pct"]
COMPOSITION = ["natural_success", "fallback_success", "fallback_failure", "replay_injected", "skipped_groups"]


@dataclass
class Run:
    """A training run directory: its config and one metrics dict per completed step."""

    label: str
    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]

    def series(self, key: str) -> np.ndarray:
        """(steps,) values of a metric, NaN where a step did not log it."""
        return np.array([float(m.get(key, np.nan)) for m in self.metrics])


@dataclass
class Column:
    """One policy's eval results: a column of Table 1."""

    label: str
    path: Path
    suite: str
    names: dict[int, str]
    counts: dict[int, tuple[int, int]]  # task_id -> (successes, episodes)
    kind: str = ""  # the evaluated policy's kind: tiny / pretrained / checkpoint / imported
    outcomes: dict[tuple[int, int, int], bool] | None = None  # (task, init state, noise seed) -> success
    drift: dict[str, float] | None = None  # module -> drift %, with "total"; None when unknown
    run: Run | None = None
    scene: str = ""  # the scene mode its cameras rendered (lean / libero / lowpoly); "" when not recorded
    renderers: list[str] = field(default_factory=list)  # the GL renderers that drew its frames

    @property
    def pooled(self) -> tuple[int, int]:
        return sum(s for s, _ in self.counts.values()), sum(n for _, n in self.counts.values())

    @property
    def mean(self) -> float:
        return float(np.mean([s / n for s, n in self.counts.values()]))


@dataclass
class Table:
    """A table kept as data, rendered to Markdown and HTML alike."""

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + [""] + [f"{n}  " for n in self.notes]) + "\n"

    def html(self) -> str:
        def cell(text: str, tag: str) -> str:
            bold = text.startswith("**") and "**" in text[2:]
            body = html.escape(text.replace("**", ""))
            return f"<{tag}>{'<b>' + body + '</b>' if bold else body}</{tag}>"

        head = "".join(cell(h, "th") for h in self.header)
        body = "".join("<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in self.rows)
        notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in self.notes)
        return f"<h3>{html.escape(self.title)}</h3><table><tr>{head}</tr>{body}</table>{notes}"


# --- statistics ------------------------------------------------------------------------------------------
def fisher_p(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Two-sided Fisher exact p of successes/episodes `a` against `b`."""
    (sa, na), (sb, nb) = a, b
    return float(stats.fisher_exact([[sa, na - sa], [sb, nb - sb]])[1])


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): controls the family-wise error."""
    order = np.argsort(pvalues)
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman r with p-values; NaN when fewer than 3 points or a constant input."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson_r": np.nan, "pearson_p": np.nan, "spearman_r": np.nan, "spearman_p": np.nan}
    pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    return {"pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "spearman_r": float(spearman.statistic), "spearman_p": float(spearman.pvalue)}


# --- inputs ----------------------------------------------------------------------------------------------
def load_run(path: Path, label: str) -> Run:
    config_file, metrics_file = path / "config.json", path / "metrics.jsonl"
    if not config_file.is_file() or not metrics_file.is_file():
        raise UserError(f"{path}: not a run directory (needs config.json and metrics.jsonl)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: unreadable config.json ({e})") from None
    metrics, note = read_metrics(metrics_file)  # a preempted run's cut-off last line is dropped, not fatal
    if note:
        print(f"{path}: {note}", file=sys.stderr)
    return Run(label or config.get("exp") or path.name, path, config, metrics)


def episode_outcomes(data: dict[str, Any]) -> dict[tuple[int, int, int], bool] | None:
    """(task, init state, noise seed) -> success of an eval (`read_eval`'s dict); None when episodes
    cannot be told apart (imported counts are synthesised, repeated keys are ambiguous)."""
    episodes = data["episodes"]
    keys = list(zip(*(episodes[k].tolist() for k in ("task_id", "init_state", "noise_seed")), strict=True))
    if data["policy"].get("kind") == "imported" or len(set(keys)) != len(keys):
        return None
    return dict(zip(keys, episodes["success"].astype(bool).tolist(), strict=True))


def load_column(path: Path, label: str, runs: list[Run], baseline_like: bool = False) -> Column:
    data = read_eval(path)
    policy, episodes = data["policy"], data["episodes"]
    names = {t["task_id"]: t["name"] for t in data["tasks"]}
    counts = {}
    for task_id in names:
        mask = episodes["task_id"] == task_id
        counts[task_id] = (int(episodes["success"][mask].sum()), int(mask.sum()))
    if not counts or any(n == 0 for _, n in counts.values()):
        raise UserError(f"{path}: an eval file without episodes for every task it lists")
    column = Column(label or path.stem, path, str(data["suite"]), names, counts, kind=policy.get("kind", ""),
                    scene=data["scene"], renderers=data["renderers"])
    column.outcomes = episode_outcomes(data)
    if policy.get("kind") == "imported":
        column.label = label or policy.get("label") or path.stem
        column.drift = policy.get("drift")
    elif policy.get("kind") in ("checkpoint", "steered"):  # a steered policy's run is its actor's
        checkpoint = policy["source"] if policy["kind"] == "checkpoint" else policy["actor"]["source"]
        run_dir = Path(checkpoint).resolve().parent.parent
        column.run = next((r for r in runs if r.path.resolve() == run_dir), None)
        run = column.run
        if run is None and (run_dir / "config.json").is_file() and (run_dir / "metrics.jsonl").is_file():
            run = load_run(run_dir, "")  # not an input: used for the label and the drift only
        if run:
            column.label = label or run.label
            step = policy.get("step") if policy["kind"] == "checkpoint" else policy["actor"].get("step")
            logged = next((m for m in run.metrics if m["step"] == step), None)
            if logged:
                column.drift = {"total": logged["drift_pct"],
                                **{k.split("/", 1)[1]: v for k, v in logged.items() if k.startswith("drift/")}}
    return column


def load_inputs(inputs: Sequence[str]) -> tuple[list[Column], list[Run]]:
    """Eval files and run directories, each optionally as LABEL=PATH; checks they can share a table."""
    if not inputs:
        raise UserError("give at least one eval file or run directory")
    items = []
    for item in inputs:
        label, raw = item.split("=", 1) if "=" in item and not Path(item).exists() else ("", item)
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{raw}: no such file or directory")
        items.append((label, path))
    runs = [load_run(path, label) for label, path in items if path.is_dir()]
    columns = [load_column(path, label, runs) for label, path in items if not path.is_dir()]
    for labelled in (runs, columns):  # two runs of one preset: tell them apart by path
        labels = [x.label for x in labelled]
        for x in labelled:
            if labels.count(x.label) > 1:
                x.label = f"{x.label}:{x.path.parent.name}/{x.path.name}"
    if columns:
        suites = {c.suite for c in columns}
        if len(suites) > 1:
            raise UserError(f"eval files from different suites: {', '.join(sorted(suites))}")
        first = columns[0]
        for c in columns[1:]:
            if set(c.counts) != set(first.counts):
                raise UserError(f"{c.path} has tasks {sorted(c.counts)} but {first.path} has {sorted(first.counts)}: "
                                "a report compares evals of the same task set")
    return columns, runs


# --- held-out units ---------------------------------------------------------------------------------------
def load_units(path: Path) -> dict[str, Any]:
    """A held-out results file: {"units": [{"task", "rl_seed", "sft": {"outcomes": [...]}, ARM: {...}}]}."""
    try:
        data = json.loads(path.read_text())
        units = data["units"]
        for unit in units:
            for arm in [a for a in unit if isinstance(unit[a], dict)]:
                if len(unit[arm]["outcomes"]) != len(unit["sft"]["outcomes"]):
                    raise ValueError(f"task {unit['task']} seed {unit['rl_seed']}: {arm} and sft ran different "
                                     "episodes")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a held-out results file ({type(err).__name__}: {err})") from None
    return data


def ceiling(sft: dict[str, Any]) -> float | None:
    """The share of init states where any of the SFT eval's noise seeds succeeded: what a noise actor could
    reach without changing a weight. None without episode keys."""
    keys = sft.get("episode_keys")
    if not keys:
        return None
    states = {int(k[0]) for k in keys}
    return sum(any(o for k, o in zip(keys, sft["outcomes"], strict=True) if k[0] == s) for s in states) / len(states)


def units_summary(data: dict[str, Any]) -> dict[str, Any]:
    """Per arm (e.g. recommended, e2): each unit's comparison with its SFT eval, and the across-unit figures."""
    arms = sorted({a for u in data["units"] for a in u if isinstance(u[a], dict) and a != "sft"})
    summary: dict[str, Any] = {}
    for arm in arms:
        rows = [{"task": u["task"], "rl_seed": u["rl_seed"], "sft": sum(u["sft"]["outcomes"]),
                 "policy": sum(u[arm]["outcomes"]), "episodes": len(u["sft"]["outcomes"]),
                 "sft_ceiling": ceiling(u["sft"]), **unit_comparison(u["sft"]["outcomes"], u[arm]["outcomes"])}
                for u in data["units"] if arm in u]
        summary[arm] = {"units": rows, **across_units([r["delta_points"] for r in rows]),
                        "improved_significantly": sum(r["mcnemar_p"] < ALPHA and r["gained"] > r["lost"] for r in rows),
                        "worsened_significantly": sum(r["mcnemar_p"] < ALPHA and r["lost"] > r["gained"] for r in rows)}
    return summary


def units_tables(summary: dict[str, Any]) -> list[Table]:
    def interval(ci: list[float] | None) -> str:
        return f"[{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "n/a (one unit, or no spread)"

    tables = []
    for arm, s in summary.items():
        rows = [[str(r["task"]), str(r["rl_seed"]), f"{r['sft']}/{r['episodes']}",
                 "n/a" if r["sft_ceiling"] is None else pct(r["sft_ceiling"]), f"{r['policy']}/{r['episodes']}",
                 f"{r['delta_points']:+.1f}", f"{r['fisher_p']:.3g}", f"+{r['gained']} / -{r['lost']}",
                 f"{r['mcnemar_p']:.3g}"] for r in s["units"]]
        p = f"{s['t_p']:.3g}" if s["t_p"] is not None else "n/a"
        rows.append([f"**mean over {s['n_units']} units**", "", "", "", "", f"**{s['mean_delta_points']:+.1f}**",
                     "", "", ""])
        tables.append(Table(
            f"Held-out units: {arm} vs its SFT policy (the unit of replication is task x RL seed)",
            ["task", "RL seed", "SFT", "SFT ceiling %", arm, "Δ points", "Fisher p", "same episodes: gained / lost",
             "McNemar p"],
            rows, [f"Across units: mean Δ {s['mean_delta_points']:+.1f} points, 95% t interval "
                   f"{interval(s['t_interval'])} (t-test p {p}), 95% bootstrap interval "
                   f"{interval(s['bootstrap_interval'])}; "
                   f"units significantly improved: {s['improved_significantly']}, worsened: "
                   f"{s['worsened_significantly']} (McNemar p < 0.05). Episode-level tests are per unit only. "
                   "SFT ceiling: the share of init states where any of the SFT eval's noise seeds succeeded."]))
    return tables


# --- tables ----------------------------------------------------------------------------------------------
def short_name(task_name: str) -> str:
    """LIBERO's `KITCHEN_SCENE3_turn_on_the_stove` -> `turn on the stove`."""
    return re.sub(r"^[A-Z_]*SCENE\d+_", "", task_name).replace("_", " ")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _of_task(outcomes: dict[tuple[int, int, int], bool], task: Any) -> dict[tuple[int, int, int], bool]:
    """The episodes of one task id (all of them for "mean")."""
    return outcomes if task == "mean" else {k: v for k, v in outcomes.items() if k[0] == task}


def significance(columns: list[Column], baseline: Column) -> dict[str, dict[Any, dict[str, float]]]:
    """{label: {task_id or "mean": {delta, p, p_holm}}} for every column but the baseline."""
    out: dict[str, dict[Any, dict[str, float]]] = {}
    for c in columns:
        if c is baseline:
            continue
        tasks = sorted(c.counts)
        raw = [fisher_p(c.counts[t], baseline.counts[t]) for t in tasks]
        out[c.label] = {t: {"delta": c.counts[t][0] / c.counts[t][1] - baseline.counts[t][0] / baseline.counts[t][1],
                            "p": p, "p_holm": q} for t, p, q in zip(tasks, raw, holm(raw), strict=True)}
        out[c.label]["mean"] = {"delta": c.mean - baseline.mean, "p": fisher_p(c.pooled, baseline.pooled)}
        if c.outcomes is not None and baseline.outcomes is not None:
            for key in [*tasks, "mean"]:
                out[c.label][key]["paired"] = paired_test(_of_task(c.outcomes, key), _of_task(baseline.outcomes, key))
    means = [out[label]["mean"]["p"] for label in out]
    for label, q in zip(out, holm(means), strict=True):
        out[label]["mean"]["p_holm"] = q
    return out


def table1(columns: list[Column], baseline: Column, sig: dict) -> Table:
    tasks = sorted(columns[0].counts)
    rows = []
    for t in tasks:
        best = max(c.counts[t][0] / c.counts[t][1] for c in columns)
        row = [f"T{t} {short_name(columns[0].names[t])}"]
        for c in columns:
            s, n = c.counts[t]
            lo, hi = wilson_interval(s, n)
            text = f"{pct(s / n)} [{pct(lo)}, {pct(hi)}]"
            text = f"**{text}**" if s / n == best else text
            mark = c.label in sig and sig[c.label][t]["p_holm"] < ALPHA
            row.append(text + (" *" if mark else ""))
        rows.append(row)
    mean_row = ["Mean"]
    best = max(c.mean for c in columns)
    for c in columns:
        lo, hi = wilson_interval(*c.pooled)
        text = f"{pct(c.mean)} [{pct(lo)}, {pct(hi)}]"
        text = f"**{text}**" if c.mean == best else text
        mean_row.append(text + (" *" if c.label in sig and sig[c.label]["mean"]["p_holm"] < ALPHA else ""))
    rows.append(mean_row)
    episodes = sorted({n for c in columns for _, n in c.counts.values()})
    rendered = "; ".join(f"`{c.label}` {c.scene or 'not recorded'} scene, "
                         f"{', '.join(c.renderers) or 'renderer not recorded'}" for c in columns)
    return Table("Table 1: success % per task [95% Wilson interval]", ["task", *[c.label for c in columns]], rows,
                 [f"Episodes per task: {', '.join(map(str, episodes))}. Bold: best per row. "
                  f"*: differs from the baseline `{baseline.label}` (Fisher exact, Holm-adjusted p < {ALPHA}).",
                  f"Images: {rendered}."])


def significance_table(columns: list[Column], baseline: Column, sig: dict) -> Table:
    rows = []
    for c in columns:
        if c is baseline:
            continue
        for key in [*sorted(c.counts), "mean"]:
            r = sig[c.label][key]
            paired = r.get("paired")
            rows.append([c.label, "Mean" if key == "mean" else f"T{key}", f"{100 * r['delta']:+.1f}",
                         f"{r['p']:.3g}", f"{r['p_holm']:.3g}",
                         "yes" if r["p_holm"] < ALPHA else "no (within noise)",
                         f"+{paired['gained']} / −{paired['lost']} ({paired['p']:.3g})" if paired else "–"])
    return Table(f"Significance against `{baseline.label}`",
                 ["run", "task", "Δ points", "Fisher p", "Holm p", "distinguishable",
                  "same episodes: gained / lost (McNemar p)"], rows,
                 ["Per task: Holm across that run's tasks. Mean: Fisher on pooled episodes, Holm across runs.",
                  "Same episodes: when both evals ran the same (task, init state, noise seed) episodes, the "
                  "episodes the run newly solves and newly fails, with McNemar's exact test (grpo_cli/stats.py); "
                  "as many losses as gains means outcomes were reshuffled, not improved."])


def table2(columns: list[Column]) -> tuple[Table, dict[str, float]]:
    known = [c for c in columns if c.drift is not None]
    modules = sorted({k for c in known for k in c.drift if k != "total"})  # type: ignore[union-attr]
    rows = [[c.label, f"{c.drift['total']:.4f}", *[f"{c.drift[m]:.4f}" if m in c.drift else "–" for m in modules],
             pct(c.mean)] for c in known]  # type: ignore[index, operator]
    corr = correlation([c.drift["total"] for c in known], [c.mean for c in known])  # type: ignore[index]
    note = (f"Over {len(known)} runs: Pearson r = {corr['pearson_r']:.3f} (p = {corr['pearson_p']:.3g}), "
            f"Spearman ρ = {corr['spearman_r']:.3f} (p = {corr['spearman_p']:.3g})."
            if not np.isnan(corr["pearson_r"]) else
            f"Correlation needs at least 3 runs with varying drift and success ({len(known)} here).")
    return Table("Table 2: weight drift % vs mean success %", ["run", "drift % (total)",
                 *[f"drift % {m}" for m in modules], "mean success %"], rows,
                 [note, "Drift: 100·mean|θ−θ_ref|/max(|θ_ref|, 1e-3) against the starting policy (grpo_cli/drift.py);"
                  " a baseline that is itself the starting policy has drift 0."]), corr


# --- diagnosis -------------------------------------------------------------------------------------------
def diagnose(run: Run, column: Column | None, sig: dict) -> dict[str, Any]:
    """Summary statistics of a run and a one-line verdict on why it did or did not learn."""
    def mean(key: str) -> float:
        values = run.series(key)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    steps = len(run.metrics)
    d: dict[str, Any] = {"steps": steps}
    if steps == 0:
        d["verdict"] = "no completed steps"
        return d
    zero = run.series("frac_reward_zero_std")
    d["share_steps_all_zero_advantage"] = float(np.mean(zero >= 1.0))
    d["mean_frac_reward_zero_std"] = float(np.nanmean(zero))
    d["share_steps_skipped"] = mean("step_skipped")
    d["clip_ratio"] = mean("clip_ratio/region_mean")
    ratios = run.series("ratio/max"), run.series("ratio/min")  # all-NaN when no step updated (e2)
    d["ratio_max"] = float(np.nanmax(ratios[0])) if np.isfinite(ratios[0]).any() else float("nan")
    d["ratio_min"] = float(np.nanmin(ratios[1])) if np.isfinite(ratios[1]).any() else float("nan")
    d["grad_norm_policy"] = mean("grad_norm/policy_term")
    d["grad_norm_kl"] = mean("grad_norm/kl_term")
    d["grad_norm_head"] = mean("grad_norm/head")
    drift = run.series("drift_pct")
    d["final_drift_pct"] = float(drift[-1])
    d["drift_slope_per_step"] = float(np.polyfit(np.arange(steps), drift, 1)[0]) if steps > 1 else 0.0
    success = run.series("success_rate")
    trend = stats.spearmanr(np.arange(steps), success) if steps > 2 and np.ptp(success) > 0 else None
    d["train_success_first_half"] = float(np.mean(success[: max(steps // 2, 1)]))
    d["train_success_second_half"] = float(np.mean(success[steps // 2:]))
    d["train_success_trend_rho"] = float(trend.statistic) if trend else 0.0
    d["train_success_trend_p"] = float(trend.pvalue) if trend else 1.0
    evals = sig.get(column.label, {}).get("mean") if column else None
    if evals:
        d["eval_delta_points"], d["eval_p_holm"] = 100 * evals["delta"], evals["p_holm"]

    no_signal = max(d["share_steps_all_zero_advantage"], d["share_steps_skipped"])
    if evals and evals["delta"] > 0 and evals["p_holm"] < ALPHA:
        verdict = (f"learned: eval success {100 * evals['delta']:+.1f} points over the baseline "
                   f"(Holm p {evals['p_holm']:.3g})")
    elif no_signal > 0.5:
        verdict = (f"no gradient signal: {100 * no_signal:.0f}% of steps had only zero-advantage groups "
                   "(all-fail / all-success): filter or resample degenerate groups, use a dense reward")
    elif d["grad_norm_head"] < 1e-8:
        verdict = ("no gradient signal: the policy gradient is ~0 (a deterministic ODE likelihood makes the ratio"
                   " 1 at θ_old); use likelihood=sde")
    elif d["grad_norm_kl"] > d["grad_norm_policy"]:
        verdict = (f"KL dominates: its gradient is {d['grad_norm_kl'] / max(d['grad_norm_policy'], 1e-30):.1f}x"
                   " the policy term's; lower beta")
    elif d["clip_ratio"] > 0.5:
        fell = (f"; training success fell from {d['train_success_first_half']:.2f} to "
                f"{d['train_success_second_half']:.2f}" if d["train_success_second_half"]
                < 0.75 * d["train_success_first_half"] else "")
        verdict = (f"updates mostly clipped ({100 * d['clip_ratio']:.0f}% of samples, ratios up to "
                   f"{d['ratio_max']:.3g}){fell}: lower the learning rate"
                   + (" or use chunk-level ratios" if run.config.get("ratio_level") == "trajectory" else ""))
    elif evals and evals["delta"] < 0 and evals["p_holm"] < ALPHA:
        verdict = (f"regressed: eval success {100 * evals['delta']:+.1f} points with drift "
                   f"{d['final_drift_pct']:.3f}%: the update moved the policy away from what SFT did well")
    elif d["final_drift_pct"] > 0 and not (d["train_success_trend_rho"] > 0 and d["train_success_trend_p"] < ALPHA):
        verdict = (f"drift without reward gain: weights moved {d['final_drift_pct']:.3f}% while training success "
                   f"did not rise significantly (first half {d['train_success_first_half']:.2f}, second half "
                   f"{d['train_success_second_half']:.2f}, Spearman p {d['train_success_trend_p']:.2g}): "
                   "too few steps or too little signal per step")
    elif d["train_success_trend_rho"] > 0 and d["train_success_trend_p"] < ALPHA:
        verdict = "training success is rising but the eval difference is within noise: train longer, evaluate more"
    else:
        verdict = "no clear effect: too few steps or too noisy to tell"
    d["verdict"] = verdict
    return d


def diagnosis_table(diagnoses: dict[str, dict[str, Any]]) -> Table:
    def f(x: Any, fmt: str = ".3g") -> str:
        return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)

    rows = [[label, str(d["steps"]), f(d.get("share_steps_all_zero_advantage"), ".0%"),
             f(d.get("mean_frac_reward_zero_std"), ".0%"), f(d.get("clip_ratio"), ".0%"),
             f"{f(d.get('ratio_min'))}–{f(d.get('ratio_max'))}", f(d.get("grad_norm_policy")),
             f(d.get("grad_norm_kl")), f(d.get("final_drift_pct"), ".4f"), d["verdict"]]
            for label, d in diagnoses.items()]
    return Table("Diagnosis per run", ["run", "steps", "steps w/o signal", "zero-std groups", "clipped",
                                       "ratio range", "‖∇ policy‖", "‖∇ KL‖", "final drift %", "verdict"], rows,
                 ["steps w/o signal: every group of the step had equal rewards. ‖∇‖: mean gradient norms of the"
                  " surrogate and of β·KL (logged only when β > 0)."])


# --- figures ---------------------------------------------------------------------------------------------
def figures(columns: list[Column], runs: list[Run], out: Path) -> dict[str, Path]:
    """Write the PNG figures that have data; {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        path = out / f"{name}.png"
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".png")
        os.close(fd)
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        publish(tmp, path)
        written[name] = path

    if columns:
        tasks = sorted(columns[0].counts)
        labels = [f"T{t}" for t in tasks] + ["Mean"]
        fig, ax = plt.subplots(figsize=(min(14, max(6, 0.25 * len(labels) * (len(columns) + 1))), 3.6))
        width = 0.8 / len(columns)
        for i, c in enumerate(columns):
            counts = [c.counts[t] for t in tasks] + [c.pooled]
            rates = np.array([s / n for s, n in counts[:-1]] + [c.mean])
            ci = np.array([wilson_interval(s, n) for s, n in counts])
            err = np.abs(ci.T - rates[None])
            ax.bar(np.arange(len(labels)) + i * width, 100 * rates, width, yerr=100 * err, capsize=2, label=c.label)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
        ax.set_ylabel("success % (95% Wilson)")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=7, ncols=min(len(columns), 4))
        save(fig, "success_per_task")

        known = [c for c in columns if c.drift is not None]
        if known:
            fig, ax = plt.subplots(figsize=(4.5, 3.6))
            for c in known:
                lo, hi = wilson_interval(*c.pooled)
                ax.errorbar(c.drift["total"], 100 * c.mean, yerr=[[100 * (c.mean - lo)], [100 * (hi - c.mean)]],  # type: ignore[index]
                            fmt="o", capsize=3)
                ax.annotate(c.label, (c.drift["total"], 100 * c.mean), textcoords="offset points", xytext=(4, 4))  # type: ignore[index]
            ax.set_xlabel("weight drift % from the starting policy")
            ax.set_ylabel("mean success %")
            save(fig, "drift_vs_success")

    if runs:
        keys = [k for k in CURVES if any(np.isfinite(r.series(k)).any() for r in runs)]
        cols, nrows = 3, (len(keys) + 2) // 3
        fig, axes = plt.subplots(nrows, cols, figsize=(12, 3 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys, strict=False):
            for r in runs:
                x = r.series("env_steps_total")
                x = x if np.isfinite(x).all() and len(x) else np.arange(1, len(r.metrics) + 1)
                ax.plot(x, r.series(key), marker=".", label=r.label)
            ax.set_title(key, fontsize=9)
        for ax in axes.flat[len(keys):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.supxlabel("env steps" if all(np.isfinite(r.series("env_steps_total")).all() for r in runs) else "step")
        fig.tight_layout()
        save(fig, "training_curves")

        fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3), squeeze=False)
        for ax, r in zip(axes.flat, runs, strict=True):
            bottom = np.zeros(len(r.metrics))
            steps = np.arange(1, len(r.metrics) + 1)
            for key in COMPOSITION:
                values = np.nan_to_num(r.series(f"reward_composition/{key}"))
                ax.bar(steps, values, bottom=bottom, label=key)
                bottom += values
            ax.set_title(r.label, fontsize=9)
            ax.set_xlabel("step")
        axes.flat[0].set_ylabel("trajectories / groups")
        axes.flat[0].legend(fontsize=6)
        save(fig, "reward_composition")
    return written


# --- the report ------------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    publish(tmp, path)


def build_report(inputs: Sequence[str], out: str | Path, baseline: str | None = None,
                 title: str = "grpo-vla report") -> dict[str, Any]:
    """Write OUT/report.md, OUT/report.html (figures embedded), OUT/*.png and OUT/report.json."""
    unit_files = [Path(i) for i in inputs if i.endswith(".json")]
    columns, runs = load_inputs([i for i in inputs if not i.endswith(".json")]) if len(unit_files) < len(inputs) \
        else ([], [])
    units = {}
    for path in unit_files:
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        units.update(units_summary(load_units(path)))
    base = None
    if columns:
        base = columns[0] if baseline is None else next((c for c in columns if c.label == baseline), None)
        if base is None:
            raise UserError(f"no eval column labelled {baseline!r}; labels: {', '.join(c.label for c in columns)}")
    elif baseline is not None:
        raise UserError("--baseline needs eval files among the inputs")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    if base and base.drift is None and base.kind not in ("checkpoint", "imported"):
        base.drift = {"total": 0.0}  # the starting policy itself (the seed's Table 2 puts SFT at 0)
    sig = significance(columns, base) if base else {}
    tables: list[Table] = units_tables(units)
    corr: dict[str, float] = {}
    if columns:
        tables += [table1(columns, base, sig)]  # type: ignore[arg-type]
        if len(columns) > 1:
            tables += [significance_table(columns, base, sig)]  # type: ignore[arg-type]
        t2, corr = table2(columns)
        tables += [t2] if t2.rows else []
    linked = {id(c.run): c for c in columns if c.run}
    diagnoses = {r.label: diagnose(r, linked.get(id(r)), sig) for r in runs}
    if diagnoses:
        tables += [diagnosis_table(diagnoses)]
    pngs = figures(columns, runs, out)

    inputs_md = "\n".join(f"- `{c.label}`: {c.path}" for c in columns) + "\n" + \
        "\n".join(f"- run `{r.label}`: {r.path} ({len(r.metrics)} steps)" for r in runs)
    md = [f"# {title}", "", "Inputs:", inputs_md, ""] + [t.markdown() for t in tables]
    md += [f"![{name}]({path.name})\n" for name, path in pngs.items()]
    _write(out / "report.md", "\n".join(md))
    images = "".join(f"<h3>{name}</h3><img alt='{name}' src='data:image/png;base64,"
                     f"{base64.b64encode(path.read_bytes()).decode()}'/>" for name, path in pngs.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
            "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}.note{color:#555;"
            "font-size:12px}img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><pre>{html.escape(inputs_md)}</pre>"
            + "".join(t.html() for t in tables) + images + "</body></html>")
    _write(out / "report.html", page)
    summary = {"columns": {c.label: {"path": str(c.path), "counts": {str(t): v for t, v in c.counts.items()},
                                     "mean": c.mean, "mean_wilson95": wilson_interval(*c.pooled), "drift": c.drift}
                           for c in columns},
               "baseline": base.label if base else None,
               "significance": {k: {str(t): v for t, v in d.items()} for k, d in sig.items()},
               "table2_correlation": corr, "diagnosis": diagnoses, "figures": sorted(pngs), "units": units}
    _write(out / "report.json", json.dumps(summary, indent=1, default=float))
    return summary
