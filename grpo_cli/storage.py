"""HDF5 files of grpo-vla: trajectories (robomimic/LIBERO layout plus our fields) and eval results.

Every file is written to a temporary name beside its destination and renamed when complete, so a
reader never sees a half-written file and an existing file is never damaged. docs/FORMATS.md is the
contract for every schema here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from grpo_cli import __version__
from grpo_cli.errors import UserError
from grpo_cli.rollout import Trajectory

SCHEMA_VERSION = 1
_VERSIONED = ("lerobot", "torch", "transformers", "mujoco", "robosuite", "hf-libero", "numpy", "h5py")


def package_versions() -> dict[str, str]:
    versions = {"grpo-vla": __version__}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def git_commit() -> str:
    """The commit of the grpo-vla checkout that wrote a file ('unknown' outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Fail early (before any simulation) on an existing or unwritable output."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists: pass --overwrite to replace it, or choose another --out")
    if path.exists() and path.is_dir():
        raise UserError(f"{path} is a directory; --out must name a file")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {parent}: {err.strerror}") from None
    try:  # the only reliable test (root ignores permission bits, some file systems refuse anyway)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"cannot write to {parent}: {err.strerror}") from None
    return path


@contextlib.contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """An HDF5 file open for writing under a temp name; renamed onto `path` only on success."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _common_attrs(f: h5py.File, kind: str, config_json: str, policy: dict[str, Any]) -> None:
    f.attrs["kind"] = kind
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    f.attrs["config"] = config_json
    f.attrs["policy"] = json.dumps(policy, sort_keys=True)
    f.attrs["versions"] = json.dumps(package_versions(), sort_keys=True)
    f.attrs["git_commit"] = git_commit()


def write_rollout(path: str | Path, trajectories: Sequence[Trajectory], config_json: str,
                  policy: dict[str, Any], env_args: dict[str, Any]) -> Path:
    """Write trajectories as `data/demo_i` groups (robomimic layout) with our policy fields."""
    path = Path(path)
    with atomic_h5(path) as f:
        _common_attrs(f, "rollout", config_json, policy)
        data = f.create_group("data")
        data.attrs["total"] = int(sum(t.length for t in trajectories))
        data.attrs["env_args"] = json.dumps(env_args, sort_keys=True)
        data.attrs["num_groups"] = len({(t.spec.task.task_id, t.spec.group) for t in trajectories})
        for i, traj in enumerate(trajectories):
            _write_demo(data.create_group(f"demo_{i}"), traj)
    return path


def _write_demo(g: h5py.Group, traj: Trajectory) -> None:
    spec = traj.spec
    g.attrs.update({"num_samples": traj.length, "task_id": spec.task.task_id, "task_name": spec.task.name,
                    "language": spec.task.language, "init_state": spec.init_state, "group": spec.group,
                    "member": spec.member, "denoise_steps": spec.denoise_steps,
                    "noise_seed": np.uint64(spec.noise_seed), "success": bool(traj.success),
                    "episode_length": traj.length})
    T = traj.length
    g.create_dataset("actions", data=np.asarray(traj.actions, dtype=np.float32).reshape(T, -1))
    g.create_dataset("rewards", data=np.asarray(traj.rewards, dtype=np.float32))
    dones = np.zeros(T, dtype=np.uint8)
    if T:
        dones[-1] = 1
    g.create_dataset("dones", data=dones)
    g.create_dataset("obs/state", data=np.asarray(traj.states, dtype=np.float32).reshape(T, -1))
    p = g.create_group("policy")
    p.create_dataset("query_steps", data=np.asarray(traj.query_steps, dtype=np.int32))
    p.create_dataset("state", data=np.asarray(traj.query_states, dtype=np.float32))
    noise = np.asarray(traj.noise, dtype=np.float32)
    p.create_dataset("noise", data=noise, chunks=(1, *noise.shape[1:]) if len(noise) else None,
                     compression="lzf" if len(noise) else None)
    chains = np.asarray(traj.chains, dtype=np.float32)
    p.create_dataset("chains", data=chains, chunks=(1, *chains.shape[1:]) if len(chains) else None,
                     compression="lzf" if len(chains) else None)
    for key, frames in traj.query_images.items():
        images = np.asarray(frames, dtype=np.uint8)
        p.create_dataset(f"images/{key.rsplit('.', 1)[-1]}", data=images, chunks=(1, *images.shape[1:]),
                         compression="gzip", compression_opts=4)


def open_kind(path: str | Path, kind: str) -> h5py.File:
    """Open a grpo-vla HDF5 file for reading, checking that it is of the expected kind."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path} is not an HDF5 file") from None
    found = f.attrs.get("kind")
    if found != kind:
        f.close()
        raise UserError(f"{path} is a {found or 'foreign'} file, expected a grpo-vla {kind} file")
    return f


# --- eval files ---------------------------------------------------------------------------------------
EPISODE_FIELDS = {"task_id": np.int32, "init_state": np.int32, "success": np.uint8,
                  "episode_length": np.int32, "noise_seed": np.uint64}


def write_eval(path: str | Path, episodes: dict[str, np.ndarray], tasks: Sequence[dict[str, Any]],
               suite: str, config_json: str, policy: dict[str, Any]) -> Path:
    """Per-episode results as columns of `/episodes`, the task table as `/tasks`."""
    path = Path(path)
    with atomic_h5(path) as f:
        _common_attrs(f, "eval", config_json, policy)
        f.attrs["suite"] = suite
        ep = f.create_group("episodes")
        for name, dtype in EPISODE_FIELDS.items():
            ep.create_dataset(name, data=np.asarray(episodes[name], dtype=dtype))
        tg = f.create_group("tasks")
        tg.create_dataset("task_id", data=np.asarray([t["task_id"] for t in tasks], dtype=np.int32))
        str_dt = h5py.string_dtype()
        tg.create_dataset("name", data=np.asarray([t["name"] for t in tasks], dtype=object), dtype=str_dt)
        tg.create_dataset("language", data=np.asarray([t["language"] for t in tasks], dtype=object),
                          dtype=str_dt)
    return path


def read_eval(path: str | Path) -> dict[str, Any]:
    """Read an eval file into plain numpy arrays and attrs."""
    with open_kind(path, "eval") as f:
        episodes = {name: f["episodes"][name][()] for name in EPISODE_FIELDS}
        tasks = [{"task_id": int(i), "name": n.decode() if isinstance(n, bytes) else n,
                  "language": lang.decode() if isinstance(lang, bytes) else lang}
                 for i, n, lang in zip(f["tasks/task_id"][()], f["tasks/name"][()], f["tasks/language"][()],
                                       strict=True)]
        return {"episodes": episodes, "tasks": tasks, "suite": f.attrs["suite"],
                "config": json.loads(f.attrs["config"]), "policy": json.loads(f.attrs["policy"])}
