"""Shared fixtures. Tests run offline on the LIBERO assets in ../shared (or $GRPO_VLA_LIBERO_ASSETS)."""

from __future__ import annotations

import fcntl
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


@pytest.fixture(autouse=True)
def _memory_lock(request, tmp_path_factory):
    """Tests marked `memory_heavy` run alone; the others run two at a time (one per xdist worker).

    A LIBERO env process holds ~2.5 GB (its MuJoCo arena alone is 1.3 GB: robosuite's njmax/nconmax
    5000), a pytest worker 3-5 GB. A test with four simulation processes beside the other worker's
    three once OOM-killed a worker on the 24 GiB CI box, and the run hung. A readers-writer flock shared
    by the workers: heavy tests take it exclusively, the rest shared; the turnstile lets a waiting heavy
    test in before new shared holders, so it is not starved.
    """
    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/, above every worker's popen-gwK/
    heavy = request.node.get_closest_marker("memory_heavy") is not None
    with (shared / "memory.turnstile").open("a") as turnstile, (shared / "memory.lock").open("a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if heavy else fcntl.LOCK_SH)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield


@pytest.fixture(scope="session")
def tiny():
    from grpo_cli.policies.smolvla import SmolVLAAdapter

    return SmolVLAAdapter.load("tiny")


@pytest.fixture(scope="session")
def task0():
    from grpo_cli.envs.libero import task_spec

    return task_spec("libero_10", 0)
