"""The container recipes' build-time Python steps, run here against a temporary /opt (no Apptainer or
Docker on this machine): each must run, and together leave LIBERO's config and the tiny VLM in place."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", ["apptainer.def", "Dockerfile"])
def test_build_steps_run_and_write_the_offline_runtime(recipe: str, tmp_path: Path) -> None:
    text = (ROOT / recipe).read_text()
    steps = re.findall(r'/opt/venv/bin/python -c "([^"]+)"', text)
    assert len(steps) == 2, steps  # tiny VLM + LIBERO config
    for code in steps:
        subprocess.run([sys.executable, "-c", code.replace("/opt/", f"{tmp_path}/opt/")], check=True, cwd=tmp_path)
    config = yaml.safe_load((tmp_path / "opt" / "libero-config" / "config.yaml").read_text())
    assert Path(config["bddl_files"]).is_dir() and Path(config["init_states"]).is_dir()
    assert (tmp_path / "opt" / "grpo-vla-cache" / "tiny-smolvlm" / "config.json").is_file()
    assert "LIBERO_CONFIG_PATH=${LIBERO_CONFIG_PATH:-/opt/libero-config}" in text or \
        "LIBERO_CONFIG_PATH=/opt/libero-config" in text  # the runtime reads the config written at build


def test_an_existing_libero_config_is_left_alone(tmp_path: Path) -> None:
    from grpo_cli.envs.libero import write_libero_config

    first = write_libero_config(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert write_libero_config(tmp_path) == first and first.stat().st_mtime_ns == stamp
