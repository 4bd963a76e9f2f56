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


def _build_context(root: Path) -> set[str]:
    """The files `docker build` / `podman build` would send from `root`, by docker's own matcher."""
    from docker.utils.build import exclude_paths

    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return set(exclude_paths(str(root), patterns, dockerfile="Dockerfile"))


def test_the_build_context_holds_the_package_and_nothing_of_a_working_checkout(tmp_path: Path) -> None:
    """Issue 29: a developer's .venv, run outputs, checkpoints, caches, LIBERO assets and .git never reach
    an image: the ignore file lets through only the package's own files."""
    wanted = ["pyproject.toml", "constraints.txt", "README.md", "scripts/install.sh", "scripts/container_selftest.sh",
              "grpo_cli/__init__.py", "grpo_cli/envs/libero.py", "Dockerfile"]
    unwanted = [".venv/lib/python3.11/site-packages/torch/__init__.py", ".venv/bin/python", "runs/heldout/eval.h5",
                "demo-out/sft/model.safetensors", "checkpoints/step_000002.h5",
                "grpo_cli/__pycache__/cli.cpython-311.pyc",
                ".git/HEAD", ".pytest_cache/v/cache", ".ruff_cache/x", "build/grpo-vla-image.tar", "grpo-vla.sif",
                "libero/assets/scenes/x.xml", ".whl/torch.whl", "docs/results/heldout.json", "tests/test_cli.py",
                "eval.h5", "MUJOCO_LOG.TXT"]
    for name in wanted + unwanted:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    sent = _build_context(tmp_path)
    assert set(wanted) <= sent, set(wanted) - sent
    assert not sent & set(unwanted), sent & set(unwanted)
    # the real checkout too: whatever lies in it (a .venv of several GB, runs), only package files go
    for path in _build_context(ROOT):
        assert path.split("/")[0] in {"pyproject.toml", "constraints.txt", "README.md", "scripts", "grpo_cli",
                                      "Dockerfile", ".dockerignore"}, path
        assert "__pycache__" not in path


def test_apptainer_copies_what_docker_copies_and_no_recipe_keeps_pip_or_a_site_ca() -> None:
    """The native SIF's %files are the ignore file's allow-list; pip's cache is off in both builds; the site
    CA arrives as a build secret / bind (never COPY, ARG or ENV, which would keep it in the image)."""
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    definition = (ROOT / "apptainer.def").read_text()
    files = definition.split("\n%files\n")[1].split("\n%post\n")[0]
    copied = {line.split()[0] for line in files.strip().splitlines()}
    assert copied == allowed
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "PIP_NO_CACHE_DIR=1" in dockerfile and "PIP_NO_CACHE_DIR=1" in definition
    assert "--mount=type=secret,id=site_ca" in dockerfile and "COPY . ." not in dockerfile
    assert not re.search(r"^(ARG|ENV|COPY).*(site_ca|SITE_CA|\.pem|\.crt)", dockerfile, re.M | re.I)
    assert "/run/secrets/site_ca" in definition and "%files\n    ." not in definition


def test_install_trusts_a_site_ca_only_when_given(tmp_path: Path) -> None:
    """install.sh hands GRPO_VLA_SITE_CA to pip (PIP_CERT) when the file exists, and ignores an absent one
    (the image build mounts the secret only when SITE_CA is set)."""
    script = (ROOT / "scripts" / "install.sh").read_text()
    block = script.split('if [ -n "${GRPO_VLA_SITE_CA:-}" ]')[1].split("fi\n")[0]
    probe = f'if [ -n "${{GRPO_VLA_SITE_CA:-}}" ]{block}fi\necho "PIP_CERT=${{PIP_CERT:-}}"'
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    given = subprocess.run(["bash", "-c", probe], env={"GRPO_VLA_SITE_CA": str(ca), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, check=True).stdout
    absent = subprocess.run(["bash", "-c", probe], env={"GRPO_VLA_SITE_CA": str(tmp_path / "none"),
                                                        "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, check=True).stdout
    assert f"PIP_CERT={ca}" in given and absent.strip().endswith("PIP_CERT=")
