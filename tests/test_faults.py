"""What faults end as: a cut-off metrics line, a hung env worker, a full disk (the fault table's rows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_cli.errors import UserError
from grpo_cli.storage import read_metrics

CLI = [sys.executable, "-m", "grpo_cli"]


def metrics_file(tmp_path: Path) -> tuple[Path, list[dict]]:
    rows = [{"step": i, "env_steps": 10 * i, "reward": 0.5, "note": "é"} for i in range(1, 4)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))  # multi-byte characters
    return path, rows


def test_metrics_cut_at_every_byte_of_its_last_line_drop_only_that_line(tmp_path) -> None:
    path, rows = metrics_file(tmp_path)
    full = path.read_bytes()
    last = full[: -1].rfind(b"\n") + 1  # where the last line starts
    for cut in range(last, len(full) + 1):
        path.write_bytes(full[:cut])
        try:
            got, note = read_metrics(path)
        except UserError:  # e.g. a cut inside a multi-byte character: still only the last line is affected
            pytest.fail(f"cut at byte {cut} was refused")
        if cut >= len(full) - 1:  # the whole line is there (with or without its newline)
            assert got == rows and note is None
        else:
            assert got == rows[:-1], cut
            assert (note is not None) == (cut > last), cut


def test_metrics_corruption_before_the_last_line_is_refused(tmp_path) -> None:
    path, _ = metrics_file(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:-3], lines[2]]) + "\n")
    with pytest.raises(UserError, match="line 2 is corrupt"):
        read_metrics(path)
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2 is not a step's metrics"):
        read_metrics(path)


def test_report_of_a_run_killed_mid_write_drops_the_cut_line(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"exp": "e5", "steps": 3}))
    path, rows = metrics_file(run)
    for r in rows:
        r.update({"success_rate": 0.5, "drift_pct": 0.1, "frac_reward_zero_std": 0.0})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows)[:-20])  # killed while appending step 3
    proc = subprocess.run([*CLI, "report", str(run), "--out", str(tmp_path / "rep")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "dropped a last line cut short" in proc.stderr
    path.write_text("{broken\n" + json.dumps(rows[0]) + "\n")
    proc = subprocess.run([*CLI, "report", str(run), "--out", str(tmp_path / "rep2")], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "line 1 is corrupt" in proc.stderr


def test_a_hung_or_killed_env_worker_becomes_an_env_failure_that_the_retries_handle(tiny, task0) -> None:
    """A worker that stops answering (SIGSTOP: as a GL deadlock looks from outside) is killed after the reply
    timeout and its call raises EnvFailure, as a worker killed with -9 does at once; the rollout backend
    restarts the envs and reruns the episodes, with the same trajectories as a run that never failed."""
    import os
    import signal

    from grpo_cli.envs.slots import make_env_slots
    from grpo_cli.errors import EnvFailure

    slots = make_env_slots(1, 64, processes=True, reply_timeout_s=120)
    try:
        slots.reset(0, task0, 0)  # the first reply waits for the worker's imports and the env build
        slots.reply_timeout_s = 3
        pid = slots._procs[0].pid
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(EnvFailure, match="sent no reply in 3 s"):
            slots.reset(0, task0, 1)
        slots._procs[0].join(timeout=10)
        assert not slots._procs[0].is_alive()  # killed, not left behind
    finally:
        slots.close()

    for fault, reason in ((signal.SIGSTOP, "sent no reply in 45 s"), (signal.SIGKILL, "died (exit code -9)")):
        rollout_survives(tiny, task0, fault, reason)


def rollout_survives(tiny, task0, fault: int, reason: str) -> None:
    """The first env worker gets `fault` right away (hangs or dies); the restarted envs give the trajectories
    of a run that never failed."""
    import os

    from grpo_cli.envs.slots import make_env_slots
    from grpo_cli.episodes import EpisodeSpec
    from grpo_cli.rollout import LocalRollouts

    made: list = []

    def make_slots():
        made.append(make_env_slots(1, 64, processes=True, reply_timeout_s=45))
        if len(made) == 1:
            os.kill(made[0]._procs[0].pid, fault)
        return made[-1]

    logs: list[str] = []
    episodes = [EpisodeSpec(task0, 0, 10, 5)]
    hung = LocalRollouts(tiny, make_slots, retries=1, log=logs.append, max_steps=10, n_action_steps=5)
    try:
        got = hung.run(episodes)
    finally:
        hung.close()
    assert len(made) == 2 and hung.env_failures == 1 and reason in logs[0], logs
    clean = LocalRollouts(tiny, lambda: make_env_slots(1, 64), retries=0, max_steps=10, n_action_steps=5)
    try:
        want = clean.run(episodes)
    finally:
        clean.close()
    assert [a.tolist() for a in got[0].actions] == [a.tolist() for a in want[0].actions]


DISK_FULL = """
import errno, sys
import h5py
create = h5py.Group.create_dataset
def full(self, *args, **kwargs):  # the disk fills up while step 2's checkpoint is written
    if "step_000002" in self.file.filename:
        raise OSError(errno.ENOSPC, "No space left on device")
    return create(self, *args, **kwargs)
h5py.Group.create_dataset = full
sys.argv = ["grpo-vla", *sys.argv[1:]]
from grpo_cli.cli import main
main()
"""


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path) -> None:
    from grpo_cli.runs import checkpoints
    from grpo_cli.storage import read_checkpoint

    run = tmp_path / "run"
    sets = ["--set", "policy=tiny", "--set", "suite=libero_object", "--set", "tasks=0", "--set", "max_steps=10",
            "--set", "n_action_steps=5", "--set", "image_size=64", "--set", "num_envs=1", "--set", "save_every=100",
            "--set", "warmup_env_steps=10", "--set", "utd=2", "--set", "batch_size=8", "--set", "hidden_sizes=8",
            "--set", "steps=3"]
    proc = subprocess.run([sys.executable, "-c", DISK_FULL, "steer", *sets, "--run-dir", str(run)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if not x.startswith("[")]  # progress lines start with [
    assert len(lines) == 1 and "no space left on the device" in lines[0] and "step_000002.h5" in lines[0], lines
    assert [p.name for p in checkpoints(run)] == ["step_000001.h5"]  # the previous checkpoint is kept...
    assert read_checkpoint(checkpoints(run)[0])["step"] == 1  # ...and readable
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp file left
    resumed = subprocess.run([*CLI, "steer", "--resume", "--run-dir", str(run)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr  # space freed: the run goes on from step 1
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_tensorboard_has_each_step_once_after_a_resume(tmp_path) -> None:
    """Step 3 was logged, then the process died before step 3's checkpoint: the resumed run purges it and
    logs it again, so the event files hold steps 1, 2, 3 once each (read back with TensorBoard's reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from grpo_cli.runs import checkpoints
    from grpo_cli.steer import resolve_steer, steer

    values = {"policy": "tiny", "suite": "libero_object", "tasks": "0", "max_steps": "10", "n_action_steps": "5",
              "image_size": "64", "num_envs": "1", "warmup_env_steps": "10", "utd": "2", "batch_size": "8",
              "hidden_sizes": "8", "steps": "3", "save_every": "2", "save_latest": "false", "log_tensorboard": "true"}
    cfg = resolve_steer(values)
    run = tmp_path / "run"
    steer(cfg, run)
    assert [p.name for p in checkpoints(run)] == ["step_000002.h5", "step_000003.h5"]
    checkpoints(run)[-1].unlink()  # as if killed between logging step 3 and writing its checkpoint
    steer(cfg, run, resume=True)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("success_rate")] == [1, 2, 3]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_resume_removes_the_in_between_checkpoint_a_kill_left_behind(tmp_path) -> None:
    """kill -9 between step N's rename into place and step N-1's removal leaves both: the resume loads the
    newest and removes the stale in-between one (kept milestones stay)."""
    import shutil

    from grpo_cli.runs import checkpoints
    from grpo_cli.steer import resolve_steer, steer

    values = {"policy": "tiny", "suite": "libero_object", "tasks": "0", "max_steps": "10", "n_action_steps": "5",
              "image_size": "64", "num_envs": "1", "warmup_env_steps": "10", "utd": "2", "batch_size": "8",
              "hidden_sizes": "8", "steps": "2", "save_every": "100"}
    run = tmp_path / "run"
    steer(resolve_steer(values), run)
    shutil.copy(run / "checkpoints" / "step_000002.h5", run / "checkpoints" / "step_000001.h5")  # the race's trace
    steer(resolve_steer({**values, "steps": "3"}), run, resume=True)
    assert [p.name for p in checkpoints(run)] == ["step_000003.h5"]
