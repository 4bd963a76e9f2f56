"""Shared fixtures. Tests run offline on the LIBERO assets in ../shared (or $GRPO_VLA_LIBERO_ASSETS)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_shared_assets = REPO.parent / "shared" / "libero" / "assets"
if not os.environ.get("GRPO_VLA_LIBERO_ASSETS") and _shared_assets.is_dir():
    os.environ["GRPO_VLA_LIBERO_ASSETS"] = str(_shared_assets)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _require_assets() -> None:
    if not (Path(os.environ.get("GRPO_VLA_LIBERO_ASSETS", "")) / "scenes").is_dir():
        pytest.fail("LIBERO assets missing: set GRPO_VLA_LIBERO_ASSETS or provide ../shared/libero/assets")


@pytest.fixture(scope="session")
def tiny():
    from grpo_cli.policies.smolvla import SmolVLAAdapter

    return SmolVLAAdapter.load("tiny")


@pytest.fixture(scope="session")
def task0():
    from grpo_cli.envs.libero import task_spec

    return task_spec("libero_10", 0)
