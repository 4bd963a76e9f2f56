"""Executors, shards, experiment arrays and preemption, on submitit's debug executor and a real SLURM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import slurm_cluster
import torch
from h5compare import assert_same_h5

from grpo_cli.cluster import SlurmSettings, make_executor, run_shards, split
from grpo_cli.errors import UserError
from grpo_cli.storage import read_checkpoint, read_eval

CLI = [sys.executable, "-m", "grpo_cli"]
# tasks 3 and 7 of LIBERO-10 place fixtures at reset: shards in other processes must build the same scenes
ROLLOUT = ["rollout", "--tasks", "3,7", "--init-states", "0-1", "--num-generations", "2", "--max-steps", "10",
           "--image-size", "64", "--n-action-steps", "5"]
TRAIN = ["--set", "policy=tiny", "--set", "tasks=0", "--set", "max_steps=10", "--set", "n_action_steps=5",
         "--set", "image_size=64", "--set", "num_envs=1", "--set", "save_every=1", "--set", "num_generations=2",
         "--set", "denoise_tiers=2x4", "--set", "tier_weights=", "--set", "likelihood=sde",
         "--set", "fallback_steps=4", "--set", "train_backbone=false", "--set", "lr_head=1e-3"]
E5 = ["--exp", "e5", *TRAIN]  # E5's fallback rewards give all-fail groups of a random policy a signal
# (fallback_steps is E5's; the other presets ignore it)
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # SLURM jobs cannot import this test module


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return proc


def same_rollouts(a: Path, b: Path) -> None:
    """Every dataset bit for bit, every attribute but the write time and the command's settings (shards...)."""
    assert assert_same_h5(a, b, skip_attrs=("created", "config")) == 80  # 8 trajectories x 10 datasets


@pytest.fixture(scope="module")
def local_rollout(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "local.h5"
    proc = cli(*ROLLOUT, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def unsharded_e5(tmp_path_factory) -> list[Path]:
    """The checkpoints (steps 1-4) of an uninterrupted, unsharded E5 run: what every sharded one must match."""
    run = tmp_path_factory.mktemp("unsharded") / "run"
    proc = cli("train", "--run-dir", str(run), "--steps", "4", *E5)
    assert proc.returncode == 0, proc.stderr
    return sorted((run / "checkpoints").glob("*.h5"))


# --- without SLURM ----------------------------------------------------------------------------------------
def test_split_is_contiguous_and_complete() -> None:
    assert split(list(range(5)), 2) == [[0, 1, 2], [3, 4]] or split(list(range(5)), 2) == [[0, 1], [2, 3, 4]]
    assert sum(split(list(range(7)), 3), []) == list(range(7))
    assert split([1, 2], 5) == [[1], [2]]


def test_settings_resolve_and_reject() -> None:
    s = SlurmSettings.resolve({"partition": "cpu", "setup": "module load x"}, time_min=30, qos=None)
    assert (s.partition, s.time_min, s.setup, s.qos) == ("cpu", 30, ("module load x",), None)
    with pytest.raises(UserError, match="unknown slurm setting"):
        SlurmSettings.resolve({"partitoin": "x"})
    with pytest.raises(UserError, match="container image"):
        SlurmSettings.resolve(None, container="/nope.sif")


def fail_once(marker: str, value: int) -> int:
    """Crashes (marker `crash`) or is killed with SIGKILL (marker `kill`) the first time it runs."""
    for how in ("crash", "kill"):
        if os.path.exists(f"{marker}.{how}"):
            os.unlink(f"{marker}.{how}")
            if how == "kill":
                os.kill(os.getpid(), 9)
            raise RuntimeError("simulated env crash")
    return value * 10


def test_failed_shard_is_retried_then_reported(tmp_path: Path) -> None:
    # submitit's local executor: each shard a subprocess (its debug executor opens pdb on a failure)
    ex = make_executor("local", tmp_path / "s", SlurmSettings(), "t")
    (tmp_path / "m1.crash").touch()
    (tmp_path / "m2.kill").touch()
    messages: list[str] = []
    shards = [(str(tmp_path / "m0"), 0), (str(tmp_path / "m1"), 1), (str(tmp_path / "m2"), 2)]
    assert run_shards(ex, fail_once, shards, max_retries=1, log=messages.append) == [0, 10, 20]
    assert len(messages) == 2 and "shard 1" in messages[0] and "simulated env crash" in messages[0]
    assert "shard 2" in messages[1]  # the SIGKILLed shard was retried too
    (tmp_path / "m1.crash").touch()
    with pytest.raises(UserError, match=r"shard\(s\) 1 failed 1 times"):
        run_shards(ex, fail_once, shards, max_retries=0, log=messages.append)


def test_debug_executor_shards_match_local(local_rollout: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharded.h5"
    proc = cli(*ROLLOUT, "--out", str(out), "--shards", "2", "--executor", "debug")
    assert proc.returncode == 0, proc.stderr
    same_rollouts(local_rollout, out)
    assert not list(tmp_path.glob(".*"))  # parts removed after the merge


@pytest.mark.memory_heavy
def test_local_executor_shards_match_local(local_rollout: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharded.h5"
    proc = cli(*ROLLOUT, "--out", str(out), "--shards", "2", "--executor", "local")
    assert proc.returncode == 0, proc.stderr
    same_rollouts(local_rollout, out)


@pytest.mark.memory_heavy
def test_training_with_local_rollout_shards_matches_unsharded(unsharded_e5: list[Path], tmp_path: Path) -> None:
    """Two long-lived shard workers (local subprocesses, one env each) give the trainer the same
    trajectories as its own single env, so the runs end with bit-identical parameters."""
    proc = cli("train", "--run-dir", str(tmp_path / "sharded"), "--steps", "2", *E5,
               "--set", "rollout_shards=2", "--set", "shard_envs=1")
    assert proc.returncode == 0, proc.stderr
    assert "started 2 rollout shard workers (local)" in proc.stderr
    a = read_checkpoint(unsharded_e5[1])  # step 2 of the 4-step run: `steps` only says when to stop
    b = read_checkpoint(sorted((tmp_path / "sharded" / "checkpoints").glob("*.h5"))[-1])
    assert a["step"] == b["step"] == 2
    first = read_checkpoint(unsharded_e5[0])
    assert any(not torch.equal(a["params"][n], first["params"][n]) for n in a["params"])
    for name in a["params"]:
        torch.testing.assert_close(a["params"][name], b["params"][name], rtol=0, atol=0)
    shards = tmp_path / "sharded" / "shards"
    assert not list(shards.glob("request_*")) and not list(shards.glob("part_*"))  # hand-offs cleaned up
    assert list(shards.glob("stop_*"))
    metrics = [json.loads(x) for x in (tmp_path / "sharded" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < m["time/shard_handoff"] < m["time/rollout"] for m in metrics)


@pytest.mark.memory_heavy
def test_a_shard_worker_past_its_retries_is_left_out_or_stops_the_run(tmp_path: Path) -> None:
    """Worker 1 is SIGKILLed after step 1 and no retries are allowed: with shard_failure = continue
    step 2 trains on worker 0's groups and logs the lost episodes; switched to `stop`, step 3 ends
    with one line."""
    import dataclasses
    import signal

    from grpo_cli.presets import resolve
    from grpo_cli.shards import ShardPool
    from grpo_cli.train import Trainer

    settings = dict(a.split("=", 1) for a in TRAIN[1::2])
    cfg = resolve("e5", {**settings, "tasks_per_step": "2", "rollout_shards": "2", "shard_envs": "1",
                         "env_failure_retries": "0", "shard_failure": "continue"})
    trainer = Trainer(cfg, tmp_path, log=lambda _: None, rollouts=ShardPool(cfg, tmp_path, log=lambda _: None))
    try:
        assert trainer.step()["episodes_lost"] == 0
        worker = trainer.rollouts.jobs[1]
        os.kill(int(worker.job_id), signal.SIGKILL)  # submitit's local job id is the worker's pid
        deadline = time.time() + 60
        while not worker.done() and time.time() < deadline:
            time.sleep(0.1)
        metrics = trainer.step()
        # 2 groups x 2 members split over 2 workers: worker 1 held group 1 (E5's fallback runs on worker
        # 0), so one whole group was lost and the step trained on the other
        assert metrics["episodes_lost"] == 2 and metrics["step"] == 2
        trainer.rollouts.cfg = dataclasses.replace(cfg, shard_failure="stop")
        with pytest.raises(UserError, match="rollout shard 1 failed and no retries are left"):
            trainer.step()
    finally:
        trainer.close()


@pytest.mark.memory_heavy
def test_a_hung_shard_worker_is_cancelled_and_replaced(tmp_path: Path) -> None:
    """The shard worker stops answering (SIGSTOP) after step 1: past shard_timeout_s its job is cancelled
    and resubmitted (one of env_failure_retries), and step 2 completes with the replacement's episodes."""
    import signal

    from grpo_cli.presets import resolve
    from grpo_cli.shards import ShardPool
    from grpo_cli.train import Trainer

    settings = dict(a.split("=", 1) for a in TRAIN[1::2])
    cfg = resolve("e5", {**settings, "rollout_shards": "1", "shard_envs": "1", "env_failure_retries": "1",
                         "shard_timeout_s": "60"})
    logs: list[str] = []
    trainer = Trainer(cfg, tmp_path, log=logs.append, rollouts=ShardPool(cfg, tmp_path, log=logs.append))
    stopped = None
    try:
        assert trainer.step()["episodes_lost"] == 0
        import psutil

        stopped = int(trainer.rollouts.jobs[0].job_id)  # submitit's local job id: the pid of its controller,
        for proc in [psutil.Process(stopped), *psutil.Process(stopped).children(recursive=True)]:  # the worker below
            proc.send_signal(signal.SIGSTOP)
        metrics = trainer.step()
        assert metrics["step"] == 2 and metrics["episodes_lost"] == 0
        assert any("no result within 60 s (hung); cancelled; resubmitted as job" in line for line in logs), logs
        assert int(trainer.rollouts.jobs[0].job_id) != stopped
    finally:
        trainer.close()
        if stopped is not None and psutil.pid_exists(stopped):
            for proc in [psutil.Process(stopped), *psutil.Process(stopped).children(recursive=True)]:
                proc.kill()


def test_slurm_executor_without_slurm_is_one_line(tmp_path: Path) -> None:
    proc = cli(*ROLLOUT, "--out", str(tmp_path / "x.h5"), "--executor", "slurm",
               env={"PATH": "/nonexistent"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "sbatch" in lines[0]


# --- on a real single-node SLURM ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    env = slurm_cluster.start(folder)
    previous = os.environ.get("SLURM_CONF")
    os.environ.update(env)
    yield env
    slurm_cluster.stop(folder)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)


def squeue_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip()


_held_since: dict[str, float] = {}


def release_requeued(job: str) -> None:
    """SLURM holds a requeued job until a later BeginTime; start it now to keep the test short. Not at once:
    a job released within a second of its requeue can be started before its old credential is cleaned up,
    and SLURM then kills it ("Job credential revoked"), which no real cluster's scheduler would do."""
    reason = subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True, text=True).stdout
    if "BeginTime" not in reason:
        _held_since.pop(job, None)
        return
    if time.time() - _held_since.setdefault(job, time.time()) >= 3:
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        _held_since.pop(job, None)


@pytest.mark.memory_heavy
def test_slurm_rollout_shards_match_local(slurm, local_rollout: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharded.h5"
    # two shards, not four: four concurrent env processes (~3.8 GB each) plus the pytest workers OOM a 24 GiB box
    proc = cli(*ROLLOUT, "--out", str(out), "--shards", "2", "--executor", "slurm", "--cpus", "1",
               "--mem-gb", "4", "--time-min", "20")
    assert proc.returncode == 0, proc.stderr
    assert "2 shard(s) on the slurm executor" in proc.stderr
    same_rollouts(local_rollout, out)


@pytest.mark.memory_heavy
def test_slurm_eval_array_merges_tasks(slurm, tmp_path: Path) -> None:
    out = tmp_path / "eval.h5"
    proc = cli("eval", "--tasks", "0,3", "--episodes-per-task", "2", "--max-steps", "10", "--image-size", "64",
               "--out", str(out), "--executor", "slurm", "--cpus", "1", "--mem-gb", "4", "--time-min", "20")
    assert proc.returncode == 0, proc.stderr
    data = read_eval(out)
    assert [t["task_id"] for t in data["tasks"]] == [0, 3]
    assert data["episodes"]["task_id"].tolist() == [0, 0, 3, 3]
    assert data["episodes"]["init_state"].tolist() == [0, 1, 0, 1]
    from grpo_cli.rollout import episode_seed

    assert data["episodes"]["noise_seed"].tolist() == [episode_seed(0, "eval", t, i) for t in (0, 3) for i in (0, 1)]
    assert data["config"]["episodes_per_task"] == 2 and "mean over tasks" in proc.stdout


@pytest.mark.memory_heavy
def test_slurm_sweep_with_shards_survives_preemption_and_requeue(slurm, unsharded_e5: list[Path],
                                                                 tmp_path: Path) -> None:
    """`train --exp e5,e4 --executor slurm`: one array job, each trainer handing its rollouts to 2 shard
    workers (SLURM jobs too). The e5 task gets a preemption warning, then a hard requeue, and still ends
    with the same steps and bit-identical parameters as an uninterrupted, unsharded run (shards of one
    env roll out exactly alike)."""
    steps = len(unsharded_e5)
    sweep = tmp_path / "sweep"
    proc = cli("train", "--exp", "e5,e4", "--run-dir", str(sweep), "--steps", str(steps), *TRAIN,
               "--set", "rollout_shards=2", "--set", "shard_envs=1", "--set", "shard_executor=slurm",
               "--executor", "slurm", "--cpus", "1", "--mem-gb", "3", "--time-min", "30", "--signal-delay", "60")
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split(" ", 1)[1].split(": ", 1)[::-1] for line in proc.stdout.splitlines()
                if line.startswith("job "))
    run, job = sweep / "e5", jobs[str(sweep / "e5")]
    assert job.endswith("_0") and jobs[str(sweep / "e4")].endswith("_1")  # one array job

    def wait_for_steps(n: int) -> None:
        deadline = time.time() + 600
        while time.time() < deadline:
            lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
            if len(lines) >= n:
                return
            release_requeued(job)
            time.sleep(1)
        raise AssertionError(f"the run never reached step {n}")

    wait_for_steps(1)  # preemption warning: submitit's handler asks the trainer to stop after its step
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_for_steps(3)
    deadline = time.time() + 600
    while not list((run / "shards").glob("request_*.json")):  # the next step's rollout is handed out: in flight
        assert time.time() < deadline, "no step after step 3 started"
        time.sleep(0.05)
    # Hold the step in flight: its shard workers stop, so it cannot finish within SLURM's kill grace.
    import signal

    import psutil

    workers = [p for p in psutil.process_iter(["cmdline"])
               if any(str(run / "shards") in part for part in (p.info["cmdline"] or []))]
    assert workers, "the run's shard workers were not found"
    for proc in workers:
        proc.send_signal(signal.SIGSTOP)
    done = len((run / "metrics.jsonl").read_text().splitlines())  # steps finished before the one in flight
    subprocess.run(["scontrol", "requeue", job], check=True)  # a hard requeue: the step in flight is lost
    time.sleep(10)  # the trainer is killed meanwhile; then the old workers go on and find their pool stopped
    for proc in workers:
        if proc.is_running():
            proc.send_signal(signal.SIGCONT)
    deadline = time.time() + 900
    while any(squeue_state(j) for j in jobs.values()) and time.time() < deadline:
        release_requeued(job)
        time.sleep(2)
    logs = "".join(p.read_text() for p in (sweep / "submitit").glob("*.out"))
    assert "stopping after step" in logs  # the signal path checkpointed at a step boundary
    # the requeued job resumed from the last step finished before it: step done + 1 was in flight, lost, redone
    assert f"resumed from step_{done:06d}.h5 (step {done})" in logs, logs[-3000:]
    for exp in ("e5", "e4"):
        assert json.loads((sweep / exp / "config.json").read_text())["exp"] == exp
        lines = [json.loads(x) for x in (sweep / exp / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in lines] == list(range(1, steps + 1))  # no step lost or repeated
        assert len(list((sweep / exp / "shards" / "submitit").glob("*_log.out"))) >= 2  # shard workers' jobs
        assert json.loads((sweep / exp / "slurm.json").read_text())["cpus_per_task"] == 1
    a = read_checkpoint(unsharded_e5[-1])
    b = read_checkpoint(sorted((run / "checkpoints").glob("*.h5"))[-1])
    assert a["step"] == b["step"] == steps
    for name in a["params"]:
        torch.testing.assert_close(a["params"][name], b["params"][name], rtol=0, atol=0)
    first = read_checkpoint(unsharded_e5[0])
    moved = sum(not torch.equal(a["params"][n], first["params"][n]) for n in a["params"])
    assert moved > 0  # the run learnt between steps, so equal parameters are not vacuous


STEER = ["--set", "policy=tiny", "--set", "suite=libero_object", "--set", "tasks=0", "--set", "max_steps=10",
         "--set", "n_action_steps=5", "--set", "image_size=64", "--set", "num_envs=1", "--set", "save_every=100",
         "--set", "warmup_env_steps=10", "--set", "utd=2", "--set", "batch_size=8", "--set", "hidden_sizes=8",
         "--set", "steps=10"]


@pytest.mark.memory_heavy
def test_slurm_steer_array_requeues_past_submitits_default_timeout_limit(slurm, tmp_path: Path) -> None:
    """`steer --seeds 0,1 --executor slurm`: one array job. Seed 0's job gets the time-limit signal 4 times,
    one more than submitit's default max_num_timeout allows (with a 5-minute limit submitit counts every
    signal as a time-out). Each time it checkpoints after its step and requeues itself; the run still
    finishes all 10 steps, bit-identical to an uninterrupted local run."""
    sweep = tmp_path / "sweep"
    proc = cli("steer", *STEER, "--seeds", "0,1", "--run-dir", str(sweep), "--executor", "slurm", "--cpus", "1",
               "--mem-gb", "3", "--time-min", "5", "--signal-delay", "30")
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split(" ", 1)[1].split(": ", 1)[::-1] for line in proc.stdout.splitlines()
                if line.startswith("job "))
    run, job = sweep / "seed0", jobs[str(sweep / "seed0")]
    assert job.endswith("_0") and jobs[str(sweep / "seed1")].endswith("_1")  # one array job

    def steps_done() -> int:
        return len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0

    stopped_at = 0
    for _ in range(4):
        # signal only a trainer that has finished a step since its (re)start: its signal handler is installed
        deadline = time.time() + 600
        while steps_done() <= stopped_at or squeue_state(job) != "RUNNING":
            assert time.time() < deadline, f"seed 0 never ran a step after step {stopped_at}"
            release_requeued(job)
            time.sleep(0.5)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)  # the time-limit warning
        deadline = time.time() + 300
        while squeue_state(job) == "RUNNING":  # it checkpoints after its step, then requeues
            assert time.time() < deadline, "the job did not requeue after the signal"
            time.sleep(0.5)
        stopped_at = steps_done()
    deadline = time.time() + 900
    while any(squeue_state(j) for j in jobs.values()) and time.time() < deadline:
        release_requeued(job)
        time.sleep(1)
    logs = "".join(p.read_text() for p in (sweep / "submitit").glob(f"{job}*.out"))
    assert logs.count("this job is timed-out") >= 4 and "timed-out too many times" not in logs, logs[-3000:]
    straight = tmp_path / "straight"
    local = cli("steer", *STEER, "--set", "seed=0", "--run-dir", str(straight))
    assert local.returncode == 0, local.stderr
    for seed_run in (run, sweep / "seed1"):
        assert [json.loads(x)["step"] for x in (seed_run / "metrics.jsonl").read_text().splitlines()] == list(
            range(1, 11))
    a = read_checkpoint(sorted((straight / "checkpoints").glob("*.h5"))[-1])
    b = read_checkpoint(sorted((run / "checkpoints").glob("*.h5"))[-1])
    assert a["step"] == b["step"] == 10
    for name in a["params"]:
        torch.testing.assert_close(a["params"][name], b["params"][name], rtol=0, atol=0)
    for name in a["arrays"]:
        assert (a["arrays"][name] == b["arrays"][name]).all()


@pytest.mark.memory_heavy
def test_slurm_array_runs_the_seeds_six_experiments(slurm, tmp_path: Path) -> None:
    """`train --exp all --executor slurm --wait`: E1-E6 as one array job on LIBERO-10 (a tiny policy, one step
    each), each run with its own preset (E1's three horizons, E5's fallback, E6's replay pool)."""
    sweep = tmp_path / "all"
    proc = cli("train", "--exp", "all", "--run-dir", str(sweep), "--steps", "1", "--set", "policy=tiny",
               "--set", "tasks=5", "--set", "init_states=0", "--set", "max_steps=10", "--set", "n_action_steps=5",
               "--set", "image_size=64", "--set", "num_envs=1", "--set", "save_every=1", "--set", "fallback_steps=4",
               "--executor", "slurm", "--cpus", "1", "--mem-gb", "3", "--time-min", "20", "--wait")
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split(" ", 1)[1].split(": ", 1)[::-1] for line in proc.stdout.splitlines()
                if line.startswith("job "))
    arms = [f"e{i}" for i in range(1, 7)]
    assert len({jobs[str(sweep / e)].split("_")[0] for e in arms}) == 1  # one array job...
    assert [jobs[str(sweep / e)].split("_")[1] for e in arms] == [str(i) for i in range(6)]  # ...of six tasks
    for exp in arms:
        config = json.loads((sweep / exp / "config.json").read_text())
        assert config["exp"] == exp and config["suite"] == "libero_10" and config["tasks"] == [5]
        assert [json.loads(x)["step"] for x in (sweep / exp / "metrics.jsonl").read_text().splitlines()] == [1]
        assert [p.name for p in (sweep / exp / "checkpoints").glob("*.h5")] == ["step_000001.h5"]
    configs = {e: json.loads((sweep / e / "config.json").read_text()) for e in arms}
    assert configs["e1"]["num_generations"] == 3 and configs["e2"]["num_generations"] == 6
    assert configs["e3"]["beta"] == 0.04 and configs["e4"]["beta"] == 0.0
    assert configs["e5"]["fallback_steps"] == 4 and configs["e6"]["replay_pool"] and not configs["e5"]["replay_pool"]
