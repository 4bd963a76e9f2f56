"""`grpo-vla report` and `import-eval`: exact statistics on known counts, figures, HTML, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import stats

from grpo_cli.errors import UserError
from grpo_cli.report import build_report, holm
from grpo_cli.storage import import_csv, read_eval, write_eval

CLI = [sys.executable, "-m", "grpo_cli"]
REPO = Path(__file__).resolve().parents[1]
TASKS = [{"task_id": t, "name": f"KITCHEN_SCENE{t}_task_{t}", "language": f"task {t}"} for t in range(3)]


def eval_file(path: Path, counts: dict[int, tuple[int, int]], policy: dict | None = None, scene: str = "lean",
              renderers: tuple[str, ...] = ("llvmpipe",)) -> Path:
    """An eval file with the given (successes, episodes) per task."""
    ids = [t for t, (_, n) in counts.items() for _ in range(n)]
    success = [int(i < s) for _, (s, n) in counts.items() for i in range(n)]
    episodes = {"task_id": np.array(ids), "init_state": np.zeros(len(ids)), "success": np.array(success),
                "episode_length": np.full(len(ids), 100), "noise_seed": np.arange(len(ids), dtype=np.uint64)}
    tasks = [t for t in TASKS if t["task_id"] in counts]
    return write_eval(path, episodes, tasks, "libero_10", "{}", policy or {"source": "tiny:0", "kind": "tiny"},
                      renderers, scene)


def run_dir(path: Path, exp: str, metrics: list[dict]) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"exp": exp}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return path


def step_metrics(step: int, **values: float) -> dict:
    base = {"step": step, "success_rate": 0.2 + 0.05 * step, "reward": 0.1 * step, "frac_reward_zero_std": 0.25,
            "kl": 0.0, "clip_ratio/region_mean": 0.1, "ratio/max": 1.3, "ratio/min": 0.8, "grad_norm/head": 0.5,
            "drift_pct": 0.01 * step, "drift/expert": 0.02 * step, "env_steps": 1000,
            "env_steps_total": 1000 * step, "step_skipped": 0.0, "reward_composition/natural_success": 3}
    return {**base, **values}


BASE = {0: (4, 20), 1: (12, 20), 2: (17, 20)}
BETTER = {0: (15, 20), 1: (19, 20), 2: (20, 20)}
WORSE = {0: (3, 20), 1: (5, 20), 2: (2, 20)}


@pytest.fixture
def inputs(tmp_path: Path) -> list[str]:
    good = run_dir(tmp_path / "run_good", "recommended", [step_metrics(s) for s in range(1, 6)])
    flat = run_dir(tmp_path / "run_flat", "e2", [step_metrics(s, frac_reward_zero_std=1.0, step_skipped=1.0,
                                                                success_rate=0.2) for s in range(1, 6)])
    files = [eval_file(tmp_path / "sft.h5", BASE),
             eval_file(tmp_path / "good.h5", BETTER, {"kind": "checkpoint", "step": 5,
                                                      "source": str(good / "checkpoints" / "step_000005.h5")}),
             eval_file(tmp_path / "flat.h5", WORSE, {"kind": "checkpoint", "step": 3,
                                                     "source": str(flat / "checkpoints" / "step_000003.h5")})]
    return [*map(str, files), str(good), str(flat)]


def test_report_statistics_match_scipy(inputs: list[str], tmp_path: Path) -> None:
    summary = build_report(inputs, tmp_path / "report")
    cols = summary["columns"]
    # Columns linked to their runs take the run's experiment as label and its logged drift at that step.
    assert list(cols) == ["sft", "recommended", "e2"]
    assert cols["recommended"]["drift"] == pytest.approx({"total": 0.05, "expert": 0.10})
    assert cols["e2"]["drift"] == pytest.approx({"total": 0.03, "expert": 0.06})
    assert cols["sft"]["drift"] == {"total": 0.0}
    for label, counts in (("sft", BASE), ("recommended", BETTER), ("e2", WORSE)):
        assert cols[label]["mean"] == pytest.approx(np.mean([s / n for s, n in counts.values()]))
        pooled = sum(s for s, _ in counts.values())
        ci = stats.binomtest(pooled, 60).proportion_ci(method="wilson")
        assert cols[label]["mean_wilson95"] == pytest.approx([ci.low, ci.high])
    sig = summary["significance"]
    for label, counts in (("recommended", BETTER), ("e2", WORSE)):
        raw = [stats.fisher_exact([[counts[t][0], 20 - counts[t][0]], [BASE[t][0], 20 - BASE[t][0]]])[1]
               for t in range(3)]
        assert [sig[label][str(t)]["p"] for t in range(3)] == pytest.approx(raw)
        # Holm as a step-down procedure: reject the k smallest p while p_(i) <= alpha / (m - i).
        rejected, order = set(), np.argsort(raw)
        for i, t in enumerate(order):
            if raw[t] > 0.05 / (3 - i):
                break
            rejected.add(int(t))
        assert {t for t in range(3) if sig[label][str(t)]["p_holm"] < 0.05} == rejected
    pooled_p = stats.fisher_exact([[54, 6], [33, 27]])[1]
    assert sig["recommended"]["mean"]["p"] == pytest.approx(pooled_p)
    # Diagnosis: the improving run learned; the run without any signal is told so.
    assert summary["diagnosis"]["recommended"]["verdict"].startswith("learned")
    assert summary["diagnosis"]["e2"]["verdict"].startswith("no gradient signal")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| T0 task 0 | 20.0 [8.1, 41.6] | **75.0 [53.1, 88.8]** * | 15.0 [5.2, 36.0] |" in md


def test_same_episodes_get_a_paired_test(inputs: list[str], tmp_path: Path) -> None:
    """Evals of the same (task, init state, noise seed) episodes: gained/lost and McNemar's exact p."""
    sig = build_report(inputs, tmp_path / "report")["significance"]
    # eval_file: episode i of a task succeeds when i < successes, so BETTER only gains and WORSE only loses.
    assert sig["recommended"]["0"]["paired"] == {"gained": 11, "lost": 0,
                                                 "p": pytest.approx(stats.binomtest(11, 11).pvalue)}
    assert sig["recommended"]["mean"]["paired"]["gained"] == 11 + 7 + 3
    assert sig["e2"]["mean"]["paired"] == {"gained": 0, "lost": 1 + 7 + 15,
                                           "p": pytest.approx(stats.binomtest(0, 23).pvalue)}
    assert "+21 / −0" in (tmp_path / "report" / "report.md").read_text()
    # Other noise seeds: not the same episodes, so no pairing (Fisher only).
    other = eval_file(tmp_path / "other.h5", BETTER)
    with h5py.File(other, "a") as f:
        f["episodes/noise_seed"][...] = f["episodes/noise_seed"][()] + 1000
    sig = build_report([inputs[0], str(other)], tmp_path / "report2")["significance"]
    assert "paired" not in sig["other"]["mean"] or sig["other"]["mean"]["paired"] is None


def test_paired_test_tells_a_reshuffle_from_an_improvement() -> None:
    from grpo_cli.stats import paired_test

    base = {(0, i, i): i < 10 for i in range(20)}
    reshuffled = {(0, i, i): 4 <= i < 14 for i in range(20)}  # 4 lost, 4 gained: same rate
    assert paired_test(reshuffled, base) == {"gained": 4, "lost": 4, "p": 1.0}
    better = {(0, i, i): i < 16 for i in range(20)}
    assert paired_test(better, base)["p"] == pytest.approx(stats.binomtest(6, 6).pvalue)
    assert paired_test(better, {(0, i, i + 1): True for i in range(20)}) is None  # different episodes


def test_table2_correlation_matches_numpy(tmp_path: Path) -> None:
    drifts, successes = [0.0, 0.2, 0.5, 0.3], [(14, 20), (12, 20), (4, 20), (9, 20)]
    files = []
    for i, (d, c) in enumerate(zip(drifts, successes, strict=True)):
        files.append(str(eval_file(tmp_path / f"e{i}.h5", {0: c},
                                   {"kind": "imported", "label": f"E{i}", "drift": {"total": d}})))
    corr = build_report(files, tmp_path / "out")["table2_correlation"]
    rates = [s / n for s, n in successes]
    assert corr["pearson_r"] == pytest.approx(np.corrcoef(drifts, rates)[0, 1])
    ranks = np.corrcoef(stats.rankdata(drifts), stats.rankdata(rates))[0, 1]
    assert corr["spearman_r"] == pytest.approx(ranks)


def test_holm_is_monotone_and_capped() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_figures_and_html(inputs: list[str], tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = build_report(inputs, out)
    assert summary["figures"] == ["drift_vs_success", "reward_composition", "success_per_task", "training_curves"]
    for name in summary["figures"]:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    page = (out / "report.html").read_text()
    assert page.count("<table>") == 4 and "Table 1" in page and "Table 2" in page and "Diagnosis" in page
    assert page.count("data:image/png;base64,") == 4  # self-contained
    assert not list(out.glob(".*"))  # no temp files left behind


def test_bad_inputs_are_one_line_errors(inputs: list[str], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        build_report([str(tmp_path / "missing.h5")], tmp_path / "o")
    with h5py.File(tmp_path / "rollout.h5", "w") as f:
        f.attrs["kind"] = "rollout"
    with pytest.raises(UserError, match="is a rollout file, expected a grpo-vla eval file"):
        build_report([inputs[0], str(tmp_path / "rollout.h5")], tmp_path / "o")
    other = eval_file(tmp_path / "other.h5", {0: (1, 20), 1: (2, 20)})
    with pytest.raises(UserError, match="same task set"):
        build_report([inputs[0], str(other)], tmp_path / "o")
    (tmp_path / "notarun").mkdir()
    with pytest.raises(UserError, match="not a run directory"):
        build_report([str(tmp_path / "notarun")], tmp_path / "o")
    with pytest.raises(UserError, match="no eval column labelled"):
        build_report(inputs, tmp_path / "o", baseline="nope")
    proc = subprocess.run([*CLI, "report", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr


def test_import_seed_table1(tmp_path: Path) -> None:
    csv = REPO / "docs" / "seed_table1.csv"
    paths = {label: import_csv(csv, "libero_10", label, tmp_path / f"{label}.h5") for label in ("Base", "E3", "E6")}
    data = read_eval(paths["Base"])
    assert data["policy"]["label"] == "Base" and len(data["tasks"]) == 10
    assert int(data["episodes"]["success"].sum()) == 103 and len(data["episodes"]["success"]) == 200
    summary = build_report([f"{k}={v}" for k, v in paths.items()], tmp_path / "out")
    # The seed's printed E3 mean (45.0) disagrees with its own entries, which average 49.0.
    assert summary["columns"]["Base"]["mean"] == pytest.approx(0.515)
    assert summary["columns"]["E3"]["mean"] == pytest.approx(0.49)
    assert summary["columns"]["E6"]["drift"] == {"total": 0.6}


def test_import_rejects_bad_csv(tmp_path: Path) -> None:
    def attempt(text: str, label: str | None = None) -> None:
        (tmp_path / "x.csv").write_text(text)
        import_csv(tmp_path / "x.csv", "libero_10", label, tmp_path / "x.h5")

    with pytest.raises(UserError, match="needs a header"):
        attempt("task,count\n0,1\n")
    with pytest.raises(UserError, match="0 <= successes <= episodes"):
        attempt("task_id,successes,episodes\n0,21,20\n")
    with pytest.raises(UserError, match="not in libero_10"):
        attempt("task_id,successes,episodes\n12,1,20\n")
    with pytest.raises(UserError, match="choose one with --label"):
        attempt("label,task_id,successes,episodes\nA,0,1,20\nB,0,2,20\n")
    with pytest.raises(UserError, match="must be integers"):
        attempt("task_id,successes,episodes\n0,x,20\n")
    assert not (tmp_path / "x.h5").exists()


def test_report_reads_a_real_training_run(tmp_path: Path) -> None:
    from grpo_cli.presets import resolve
    from grpo_cli.train import train

    cfg = resolve("e4", {"policy": "tiny", "tasks": "0", "max_steps": "10", "n_action_steps": "5",
                         "image_size": "64", "num_envs": "1", "save_every": "1", "steps": "2",
                         "num_generations": "2", "denoise_tiers": "1x1,1x10", "tier_weights": "0.1,1"})
    ckpt = train(cfg, tmp_path / "run", log=lambda _: None)
    evals = [eval_file(tmp_path / "sft.h5", {0: (5, 20)}),
             eval_file(tmp_path / "tuned.h5", {0: (6, 20)}, {"kind": "checkpoint", "step": 2, "source": str(ckpt)})]
    summary = build_report([*map(str, evals), str(tmp_path / "run")], tmp_path / "out")
    assert list(summary["columns"]) == ["sft", "e4"]
    drift = summary["columns"]["e4"]["drift"]  # total and per module, from the run's metrics
    assert drift["total"] >= 0 and {"expert", "vision"} <= set(drift)
    # 10-step episodes of a random policy never succeed: binary rewards give every group zero advantage.
    assert summary["diagnosis"]["e4"]["steps"] == 2
    assert summary["diagnosis"]["e4"]["verdict"].startswith("no gradient signal")
    assert "training_curves" in summary["figures"]


def test_result_commands_need_no_libero_assets(tmp_path: Path) -> None:
    """import-eval, report and merge-evals simulate nothing: no LIBERO assets, no LIBERO chatter."""
    env = {**os.environ, "GRPO_VLA_LIBERO_ASSETS": str(tmp_path / "no-assets")}
    outputs = []
    for label in ("Base", "E2"):
        proc = subprocess.run([*CLI, "import-eval", str(REPO / "docs" / "seed_table1.csv"), "--label", label,
                               "--out", str(tmp_path / f"{label}.h5")], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    proc = subprocess.run([*CLI, "report", str(tmp_path / "Base.h5"), str(tmp_path / "E2.h5"), "--baseline", "Base",
                           "--out", str(tmp_path / "report")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    outputs.append(proc.stdout + proc.stderr)
    a = eval_file(tmp_path / "a.h5", {0: (3, 20)})
    b = eval_file(tmp_path / "b.h5", {2: (7, 20)})
    proc = subprocess.run([*CLI, "merge-evals", str(a), str(b), "--out", str(tmp_path / "m.h5")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    outputs.append(proc.stdout + proc.stderr)
    for text in outputs:
        assert "LIBERO" not in text and "Hub" not in text and "Warning" not in text, text


def test_merge_evals_cli(tmp_path: Path) -> None:
    a = eval_file(tmp_path / "a.h5", {0: (3, 20)})
    b = eval_file(tmp_path / "b.h5", {2: (7, 20)})
    proc = subprocess.run([*CLI, "merge-evals", str(a), str(b), "--out", str(tmp_path / "m.h5")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = read_eval(tmp_path / "m.h5")
    assert [t["task_id"] for t in data["tasks"]] == [0, 2] and int(data["episodes"]["success"].sum()) == 10
    proc = subprocess.run([*CLI, "merge-evals", str(a), str(a), "--out", str(tmp_path / "n.h5")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "repeats task(s) [0]" in proc.stderr and not (tmp_path / "n.h5").exists()


def test_learning_script_tabulates_every_rl_seed(tmp_path: Path) -> None:
    """benchmarks/learning/run.py over finished stages (each skipped: its output exists) computes the
    table, the replicate summary and the report; the seed-1 replicate is a row of its own."""
    out = tmp_path / "learning"
    (out / "sft").mkdir(parents=True)
    (out / "demos_00-00.h5").touch()
    eval_file(out / "eval_sft.h5", {0: (61, 100)})
    for name, counts, exp in [("recommended", (77, 100), "recommended"), ("e2", (47, 100), "e2"),
                              ("recommended_seed1", (65, 100), "recommended")]:
        run = run_dir(out / f"run_{name}", exp, [step_metrics(s) for s in range(1, 4)])
        (run / "config.json").write_text(json.dumps({"exp": exp, "likelihood": "sde" if exp != "e2" else "ode",
                                                     "sde_noise": 0.3, "env_step_budget": 30000}))
        (run / "done").touch()
        (run / "checkpoints" / "step_000003.h5").touch()
        eval_file(out / f"eval_{name}.h5", {0: counts})
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "learning" / "run.py"), "--out", str(out),
                           "--demo-init-states", "0-0", "--rl-seeds", "0,1"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    seeds = results["recommended_rl_seeds"]
    assert seeds["seeds"] == [0, 1] and seeds["delta_points"] == pytest.approx([16.0, 4.0])
    assert seeds["fisher_p"][0] == pytest.approx(stats.fisher_exact([[77, 23], [61, 39]])[1])
    assert seeds["seeds_at_target"] == 1 and seeds["mean_delta_points"] == pytest.approx(10.0)
    assert results["results"]["recommended_seed1"]["env_steps"] == 3000
    assert results["results"]["recommended_seed1"]["paired_vs_sft_same_sampler"] == {
        "gained": 4, "lost": 0, "p": pytest.approx(stats.binomtest(4, 4).pvalue)}
    table = (out / "results.md").read_text()
    assert "| recommended_seed1 * |" not in table and "| recommended_seed1 | ode | 65/100" in table
    assert "Δ vs SFT +16, +4 points (mean +10.0); 1 of 2 at ≥ +15" in table
    assert (out / "report" / "report.md").exists() and not (out / "commands.log").exists()
    # --rl-seeds lists every seed that runs: without the --seed one, run_recommended is neither run nor read
    shutil.rmtree(out / "run_recommended")
    (out / "eval_recommended.h5").unlink()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "learning" / "run.py"), "--out", str(out),
                           "--demo-init-states", "0-0", "--rl-seeds", "1"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["recommended_rl_seeds"]["seeds"] == [1] and "recommended" not in results["results"]
    assert not (out / "run_recommended").exists()


def test_extending_a_run_keeps_its_old_evals_and_no_other_runs(tmp_path: Path) -> None:
    """run.py extends a finished run to a larger budget: that run's evals are kept under the old
    budget's name; another run whose name starts the same (recommended_seed1) is untouched."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("learning_run", REPO / "benchmarks" / "learning" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ["eval_recommended.h5", "eval_recommended_sde.h5", "eval_recommended_seed1.h5"]:
        (tmp_path / name).write_text(name)
    kept = module.retire_evals(tmp_path, "recommended", 30000)
    assert sorted(p.name for p in kept) == ["eval_recommended_30000steps.h5", "eval_recommended_sde_30000steps.h5"]
    assert (tmp_path / "eval_recommended_30000steps.h5").read_text() == "eval_recommended.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "eval_recommended_30000steps.h5", "eval_recommended_sde_30000steps.h5", "eval_recommended_seed1.h5"]


def test_across_units_statistics_match_the_textbook_formulas() -> None:
    from scipy import stats as sps

    from grpo_cli.stats import across_units

    deltas = [17.0, 22.0, 5.0, -3.0, 10.0, 8.0, 0.0, 12.0]
    s = across_units(deltas)
    n, mean, sd = len(deltas), float(np.mean(deltas)), float(np.std(deltas, ddof=1))
    half = sps.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
    assert s["n_units"] == 8 and s["mean_delta_points"] == pytest.approx(8.875)
    assert s["t_interval"] == pytest.approx([mean - half, mean + half])
    assert s["t_p"] == pytest.approx(2 * sps.t.sf(mean / (sd / np.sqrt(n)), n - 1))
    # A percentile bootstrap of the mean by hand: resample units with replacement.
    rng = np.random.default_rng(1)
    means = np.asarray(deltas)[rng.integers(0, n, size=(20_000, n))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert s["bootstrap_interval"][0] == pytest.approx(lo, abs=0.6)
    assert s["bootstrap_interval"][1] == pytest.approx(hi, abs=0.6)
    one = across_units([12.0])
    assert one["mean_delta_points"] == 12.0 and one["t_interval"] is None and one["bootstrap_interval"] is None


def test_unit_comparison_pairs_the_same_episodes() -> None:
    from scipy.stats import binomtest, fisher_exact

    from grpo_cli.stats import unit_comparison

    sft = [True] * 40 + [False] * 60
    rl = [True] * 35 + [False] * 5 + [True] * 20 + [False] * 40  # lost 5, gained 20: 55 vs 40
    c = unit_comparison(sft, rl)
    assert c["delta_points"] == pytest.approx(15.0) and (c["gained"], c["lost"]) == (20, 5)
    assert c["fisher_p"] == pytest.approx(fisher_exact([[55, 45], [40, 60]])[1])
    assert c["mcnemar_p"] == pytest.approx(binomtest(20, 25, 0.5).pvalue)
    with pytest.raises(ValueError):
        unit_comparison(sft, rl[:-1])


def test_report_of_a_heldout_file_states_the_across_units_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    units = []
    for task, seed, gain in [(2, 0, 0.2), (2, 1, 0.1), (4, 0, 0.0), (4, 1, 0.15)]:
        sft = (rng.random(100) < 0.5).tolist()
        rl = [s or bool(rng.random() < gain) for s in sft]
        unit = {"task": task, "rl_seed": seed, "sft": {"successes": sum(sft), "episodes": 100, "outcomes": sft},
                "recommended": {"successes": sum(rl), "episodes": 100, "outcomes": rl}}
        if seed == 0:
            unit["e2"] = {"successes": sum(sft), "episodes": 100, "outcomes": sft}
        units.append(unit)
    path = tmp_path / "heldout.json"
    path.write_text(json.dumps({"preset": "recommended", "units": units}))
    summary = build_report([str(path)], tmp_path / "report")
    rec, e2 = summary["units"]["recommended"], summary["units"]["e2"]
    deltas = [r["delta_points"] for r in rec["units"]]
    assert rec["units"] and len(deltas) == 4 and rec["mean_delta_points"] == pytest.approx(np.mean(deltas))
    assert rec["t_interval"][0] < rec["mean_delta_points"] < rec["t_interval"][1]
    assert e2["mean_delta_points"] == 0.0 and e2["t_interval"] is None and e2["worsened_significantly"] == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "mean over 4 units" in text and "95% t interval" in text and "bootstrap" in text
    assert rec["units"][0]["sft_ceiling"] is None  # no episode keys: no ceiling
    # the ceiling: init states where any of the SFT eval's noise seeds succeeded (here 2 of 3)
    keys = [[30, 1], [30, 2], [31, 1], [31, 2], [32, 1], [32, 2]]
    ceiling_unit = {"task": 2, "rl_seed": 0, "sft": {"outcomes": [0, 1, 0, 0, 1, 1], "episode_keys": keys},
                    "steer": {"outcomes": [1, 1, 0, 0, 1, 1], "episode_keys": keys}}
    path.write_text(json.dumps({"preset": "steer", "units": [ceiling_unit]}))
    steered = build_report([str(path)], tmp_path / "report3")["units"]["steer"]["units"][0]
    assert steered["sft_ceiling"] == pytest.approx(2 / 3)
    assert "| 2 | 0 | 3/6 | 66.7 | 4/6 |" in (tmp_path / "report3" / "report.md").read_text()
    path.write_text(json.dumps({"units": [{"task": 2, "rl_seed": 0, "sft": {"outcomes": [1, 0]},
                                           "recommended": {"outcomes": [1]}}]}))
    with pytest.raises(UserError, match="ran different episodes"):
        build_report([str(path)], tmp_path / "report2")


def test_report_shows_each_columns_scene_beside_its_renderer(tmp_path: Path) -> None:
    a = eval_file(tmp_path / "a.h5", {0: (3, 20)}, scene="lowpoly", renderers=("llvmpipe",))
    b = eval_file(tmp_path / "b.h5", {0: (5, 20)}, scene="libero", renderers=("NVIDIA H100",))
    build_report([f"low={a}", f"full={b}"], tmp_path / "r")
    page = (tmp_path / "r" / "report.md").read_text()
    assert "Images: `low` lowpoly scene, llvmpipe; `full` libero scene, NVIDIA H100." in page


def test_merge_evals_refuses_parts_that_saw_different_images(tmp_path: Path) -> None:
    a = eval_file(tmp_path / "a.h5", {0: (3, 20)}, scene="lowpoly")
    b = eval_file(tmp_path / "b.h5", {2: (7, 20)}, scene="lean")
    c = eval_file(tmp_path / "c.h5", {1: (7, 20)}, scene="libero")
    proc = subprocess.run([*CLI, "merge-evals", str(a), str(b), "--out", str(tmp_path / "m.h5")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "saw different images (scenes lean, lowpoly)" in proc.stderr and not (tmp_path / "m.h5").exists()
    # lean renders LIBERO's images to the bit: those parts make one eval
    proc = subprocess.run([*CLI, "merge-evals", str(b), str(c), "--out", str(tmp_path / "n.h5")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert read_eval(tmp_path / "n.h5")["scene"] == "lean+libero"
