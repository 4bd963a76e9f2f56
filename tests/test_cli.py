"""The real `grpo-vla` command: rollout and eval files, tables, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

CLI = [sys.executable, "-m", "grpo_cli.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def rollout_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rollout") / "groups.h5"
    proc = run("rollout", "--tasks", "0", "--init-states", "2", "--num-generations", "2", "--denoise-tiers",
               "1x1,1x10", "--max-steps", "15", "--n-action-steps", "10", "--image-size", "64",
               "--num-envs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "2 trajectories in 1 groups" in proc.stdout
    return out


def test_rollout_file_has_the_documented_schema(rollout_file: Path) -> None:
    with h5py.File(rollout_file) as f:
        assert f.attrs["kind"] == "rollout" and f.attrs["schema_version"] == 1
        config = json.loads(f.attrs["config"])
        assert config["denoise_tiers"] == "1x1,1x10" and config["init_states"] == [2]
        assert json.loads(f.attrs["policy"])["source"] == "tiny:0"
        assert json.loads(f.attrs["versions"])["lerobot"] == "0.4.4"
        assert len(f.attrs["git_commit"]) > 0
        data = f["data"]
        assert json.loads(data.attrs["env_args"])["suite"] == "libero_10"
        assert data.attrs["total"] == 30 and data.attrs["num_groups"] == 1
        assert sorted(data) == ["demo_0", "demo_1"]
        for i, k in enumerate([1, 10]):
            d = data[f"demo_{i}"]
            a = d.attrs
            assert (a["task_id"], a["init_state"], a["group"], a["member"], a["denoise_steps"]) == (0, 2, 0, i, k)
            assert a["num_samples"] == a["episode_length"] == 15 and not a["success"]
            assert "alphabet soup" in a["language"] and a["noise_seed"] > 0
            assert d["actions"].shape == (15, 7) and d["actions"].dtype == np.float32
            assert d["rewards"].shape == (15,) and d["dones"][()].tolist() == [0] * 14 + [1]
            assert d["obs/state"].shape == (15, 8)
            assert d["policy/query_steps"][()].tolist() == [0, 10]
            assert d["policy/noise"].shape == (2, 50, 32) and d["policy/state"].shape == (2, 8)
            assert d["policy/chains"].shape == (2, k + 1, 50, 32)
            np.testing.assert_array_equal(d["policy/chains"][:, 0], d["policy/noise"][()])
            for cam in ("image", "image2"):
                img = d[f"policy/images/{cam}"]
                assert img.shape == (2, 64, 64, 3) and img.dtype == np.uint8 and img.compression == "gzip"
        assert not np.array_equal(data["demo_0/actions"][()], data["demo_1/actions"][()])


def test_eval_prints_table_and_stores_episodes(tmp_path: Path) -> None:
    out = tmp_path / "eval.h5"
    proc = run("eval", "--tasks", "0,1", "--episodes-per-task", "2", "--max-steps", "10", "--image-size", "64",
               "--num-envs", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "95% CI (Wilson)" in proc.stdout and "mean over tasks" in proc.stdout
    assert "[0.0, 65.8]" in proc.stdout  # 0 of 2 successes
    from grpo_cli.storage import read_eval

    ev = read_eval(out)
    assert ev["episodes"]["task_id"].tolist() == [0, 0, 1, 1]
    assert ev["episodes"]["init_state"].tolist() == [0, 1, 0, 1]
    assert ev["episodes"]["episode_length"].tolist() == [10] * 4
    assert [t["task_id"] for t in ev["tasks"]] == [0, 1] and ev["suite"] == "libero_10"
    assert ev["config"]["episodes_per_task"] == 2
    assert len(ev["renderers"]) == 1 and "llvmpipe" in ev["renderers"][0]  # this machine renders on the CPU
    assert "[env 0] GL renderer: Mesa/X.org / llvmpipe" in proc.stderr  # each env slot says which it got


@pytest.mark.parametrize("args, env, message", [
    (["eval", "--suite", "libero_11"], {}, "unknown LIBERO suite 'libero_11'"),
    (["eval", "--tasks", "10"], {}, "task 10 is out of range: libero_10 has tasks 0..9"),
    (["rollout", "--init-states", "50"], {}, "bad --init-states: task 0 has init states 0..49"),
    (["rollout", "--init-states", "x"], {}, "bad --init-states 'x'"),
    (["eval", "--init-states", "30-50", "--tasks", "0"], {}, "bad --init-states: task 0 has init states 0..49"),
    (["rollout", "--denoise-tiers", "1x1,5x10", "--num-generations", "4"], {}, "give 6 members"),
    (["eval", "--policy", "HuggingFaceVLA/smolvla_libero"], {}, "pass a local lerobot policy directory"),
    (["eval"], {"GRPO_VLA_LIBERO_ASSETS": "/nonexistent"}, "LIBERO assets not found in /nonexistent"),
    (["eval"], {"MUJOCO_GL": "nogl"}, "MuJoCo cannot load its GL backend MUJOCO_GL=nogl"),
    (["eval"], {"GRPO_VLA_SCENE": "fancy"}, "bad GRPO_VLA_SCENE='fancy': choose lean (the default), libero or lowpoly"),
    (["eval", "--parallel-envs"], {"GRPO_VLA_MUJOCO_ARENA_MB": "-3"}, "bad GRPO_VLA_MUJOCO_ARENA_MB='-3'"),
    (["eval", "--out", "/proc/denied/x.h5"], {}, "cannot"),
    (["eval", "--episodes-per-task", "0"], {}, "episodes_per_task must be >= 1"),
    (["eval", "--sde-noise", "-1"], {}, "sde_noise must be >= 0"),
])
def test_bad_inputs_exit_nonzero_with_one_line(tmp_path: Path, args, env, message) -> None:
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "x.h5")]
    proc = run(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--exp", "e2", "--policy", "tiny", "--set", "suite=libero_99"], "unknown LIBERO suite 'libero_99'"),
    (["train", "--exp", "e2", "--policy", "tiny", "--set", "tasks=12"], "task 12 is out of range"),
    (["steer", "--policy", "tiny", "--set", "tasks=12"], "task 12 is out of range"),
    (["train", "--exp", "e2", "--policy", "tiny", "--set", "denoise_tiers=1x"], "bad denoise tiers '1x'"),
    (["rollout", "--denoise-tiers", "1x"], "bad denoise tiers '1x'"),
])
def test_a_dry_run_refuses_what_the_run_would(tmp_path: Path, args, message) -> None:
    """`--dry-run` is not a way around the checks: it refuses a bad suite, task or tier spec in one line."""
    dry = ["--dry-run", "--run-dir", str(tmp_path / "r")]
    extra = ["--out", str(tmp_path / "x.h5")] if args[0] == "rollout" else dry
    proc = run(*args, *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not proc.stdout.strip() and not (tmp_path / "r").exists()


def test_existing_output_is_kept_without_overwrite(rollout_file: Path) -> None:
    before = rollout_file.read_bytes()
    proc = run("rollout", "--out", str(rollout_file))
    assert proc.returncode == 2 and "exists: pass --overwrite" in proc.stderr
    assert rollout_file.read_bytes() == before


@pytest.mark.parametrize("command", ["eval", "demos", "import-eval", "merge-evals", "export"])
def test_no_command_replaces_an_existing_output(tmp_path: Path, command: str) -> None:
    """The never-overwrite rule, as for rollout, train and sft: an existing --out stays byte for byte,
    the command says so in one line and exits 2."""
    existing = tmp_path / ("out_dir" if command == "export" else "out.h5")
    if command == "export":
        existing.mkdir()
        (existing / "config.json").write_text("{}")
        keep = existing / "config.json"
    else:
        existing.write_bytes(b"precious")
        keep = existing
    args = {"eval": ["eval", "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "5"],
            "demos": ["demos", "--init-states", "0"],
            "import-eval": ["import-eval", "docs/seed_table1.csv", "--label", "E5"],
            "merge-evals": ["merge-evals", str(tmp_path / "a.h5"), str(tmp_path / "b.h5")],
            "export": ["export", str(tmp_path / "ckpt.h5")]}[command]
    proc = run(*args, "--out", str(existing))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and ("exists" in lines[0]), proc.stderr
    assert keep.read_bytes() == (b"{}" if command == "export" else b"precious")


def test_help_lists_only_real_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    assert "rollout" in proc.stdout and "eval" in proc.stdout


def test_train_resume_drift_export_and_eval_of_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    common = ["--set", "policy=tiny", "--set", "tasks=0", "--set", "max_steps=10", "--set", "n_action_steps=5",
              "--set", "image_size=64", "--set", "num_envs=1", "--set", "fallback_steps=10",
              "--set", "save_every=1", "--set", "likelihood=sde", "--set", "lr_head=1e-3"]
    proc = run("train", "--exp", "e5", *common, "--steps", "1", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "step 1/1 reward" in proc.stderr and "step_000001.h5" in proc.stdout
    proc = run("train", "--resume", "--run-dir", str(run_dir), "--steps", "2")  # no other flag needed
    assert proc.returncode == 0, proc.stderr
    assert "resumed from step_000001.h5 (step 1)" in proc.stderr and "step_000002.h5" in proc.stdout
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 2  # the extension is the run's now
    proc = run("train", "--resume", "--run-dir", str(run_dir), "--set", "lr_head=1")  # would change learning
    assert proc.returncode == 2 and proc.stderr.startswith("error: --resume") and "env_step_budget" in proc.stderr
    ckpt = run_dir / "checkpoints" / "step_000002.h5"

    no_assets = {"GRPO_VLA_LIBERO_ASSETS": str(tmp_path / "no-assets")}  # drift and export simulate nothing
    proc = run("drift", str(ckpt), "--json", env=no_assets)
    assert proc.returncode == 0, proc.stderr
    assert "LIBERO" not in proc.stderr and "Hub" not in proc.stderr
    result = json.loads(proc.stdout)
    assert result["total"]["drift_pct"] > 0 and result["text"]["drift_pct"] > 0  # e5 trains the backbone
    assert result["vision"]["drift_pct"] == 0  # ...but not the vision encoder (lerobot's default)
    assert set(result) >= {"total", "vision", "connector", "text", "expert", "heads"}

    export_dir = tmp_path / "exported"
    proc = run("export", str(ckpt), "--out", str(export_dir), env=no_assets)
    assert proc.returncode == 0 and "LIBERO" not in proc.stderr and "Hub" not in proc.stderr, proc.stderr
    for policy in (str(ckpt), str(export_dir)):
        proc = run("eval", "--policy", policy, "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "5",
                   "--image-size", "64", "--out", str(tmp_path / f"eval_{Path(policy).stem}.h5"))
        assert proc.returncode == 0, proc.stderr

    bad = run("train", "--exp", "e2", "--set", "policy=tiny", "--set", "wat=1", "--run-dir", str(tmp_path / "x"))
    assert bad.returncode == 2 and "unknown setting 'wat'; valid settings:" in bad.stderr
    split = run("train", "--exp", "e2", "--set", "policy=tiny", "--set", "tasks=0", "--set", "init_states=0,60",
                "--run-dir", str(tmp_path / "split"))
    assert split.returncode == 2 and "bad init_states: task 0 has init states 0..49" in split.stderr, split.stderr
    assert "Traceback" not in split.stderr and not (tmp_path / "split" / "config.json").exists()
    again = run("train", "--exp", "e2", "--set", "policy=tiny", "--set", "tasks=0", "--run-dir", str(run_dir))
    assert again.returncode == 2 and "already holds a run" in again.stderr
    offline = run("train", "--exp", "e2", "--run-dir", str(tmp_path / "hub"))
    assert offline.returncode == 2 and "--policy" in offline.stderr
    assert not (tmp_path / "hub" / "config.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    default = subprocess.run([*CLI, "train", "--exp", "e5", "--policy", "tiny", "--dry-run"], capture_output=True,
                             text=True, cwd=empty, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert default.returncode == 0 and "run directory: runs/e5" in default.stderr, default.stderr
    assert json.loads(default.stdout)["exp"] == "e5" and not list(empty.iterdir())  # a dry run writes nothing
    (empty / "runs" / "e5").mkdir(parents=True)
    (empty / "runs" / "e5" / "config.json").write_text("{}")
    kept = subprocess.run([*CLI, "train", "--exp", "e5", "--policy", "tiny"], capture_output=True, text=True,
                          cwd=empty, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert kept.returncode == 2 and "runs/e5 already holds a run: use --resume" in kept.stderr
    assert (empty / "runs" / "e5" / "config.json").read_text() == "{}"
    dry = run("train", "--exp", "e3", "--dry-run", "--run-dir", str(tmp_path / "dry"))
    assert dry.returncode == 0 and json.loads(dry.stdout)["beta"] == 0.04
    sweep = run("train", "--exp", "all", "--dry-run", "--run-dir", str(tmp_path / "sweep"))
    configs = json.loads(sweep.stdout)  # one run directory per experiment
    assert [c["exp"] for c in configs.values()] == ["e1", "e2", "e3", "e4", "e5", "e6"]
    assert list(configs)[4] == str(tmp_path / "sweep" / "e5")


@pytest.mark.memory_heavy
def test_ctrl_c_stops_parallel_workers_without_orphans(tmp_path: Path) -> None:
    import signal
    import time

    import psutil

    proc = subprocess.Popen([*CLI, "eval", "--tasks", "0", "--episodes-per-task", "2", "--num-envs", "2",
                             "--parallel-envs", "--image-size", "64", "--out", str(tmp_path / "e.h5")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a background CI shell starts us with SIGINT ignored, which a child inherits
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 120
    children: list = []
    while time.time() < deadline and len(children) < 2:  # wait for both spawned env workers
        time.sleep(0.5)
        children = [c for c in parent.children(recursive=True) if "spawn" in " ".join(c.cmdline())]
    assert len(children) >= 2, "env workers did not start"
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"orphan env workers: {[p.pid for p in alive]}"
    assert not (tmp_path / "e.h5").exists()  # nothing half-written under the final name
