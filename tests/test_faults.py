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
