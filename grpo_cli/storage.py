"""HDF5 files of grpo-vla: trajectories (robomimic/LIBERO layout plus our fields) and eval results.

Every file is written to a temporary name beside its destination and renamed when complete, so a
reader never sees a half-written file and an existing file is never damaged. docs/FORMATS.md is the
contract for every schema here.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import errno
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
from grpo_cli.envs.libero import num_tasks, scene_look, task_spec
from grpo_cli.episodes import EpisodeSpec, Trajectory
from grpo_cli.errors import UserError

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


def publish(tmp: str | Path, path: str | Path) -> None:
    """Rename a finished temp file onto `path`, with the permissions a plain open() would have given
    (mkstemp creates files readable by their owner only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """An HDF5 file open for writing under a temp name; renamed onto `path` only on success."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _write_error(path, err) from None
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        publish(tmp, path)
    except OSError as err:
        raise _write_error(path, err) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_error(path: Path, err: OSError) -> OSError | UserError:
    """A full disk (or quota) while writing `path` is one line for the user; other OS errors stay as they are."""
    full = err.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(err) or "errno = 28" in str(err)
    if not full:
        return err
    return UserError(f"cannot write {path}: no space left on the device (the file it would replace, if any, "
                     "is unchanged; free space, then resume)")


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
                    "progress": float(traj.progress), "stalled": bool(traj.stalled),
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


def open_h5(path: str | Path) -> h5py.File:
    """Open any HDF5 file for reading; a missing or non-HDF5 path is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path} is not an HDF5 file") from None


def open_kind(path: str | Path, kind: str) -> h5py.File:
    """Open a grpo-vla HDF5 file for reading, checking that it is of the expected kind."""
    f = open_h5(path)
    found = f.attrs.get("kind")
    if found != kind:
        f.close()
        raise UserError(f"{path} is a {found or 'foreign'} file, expected a grpo-vla {kind} file")
    return f


# --- run files ----------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], str | None]:
    """A run's metrics.jsonl: one JSON object per step. A last line cut short (a kill mid-append: no final
    newline, not JSON) is dropped, with a note saying so; any other unreadable line is corruption and a
    one-line UserError. Every reader (resume, report, the learning scripts) goes through here."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: unreadable ({err.strerror})") from None
    lines = data.split(b"\n")
    cut = lines.pop()  # b"" when the file ends with a newline, else a line whose append was cut short
    rows, note = [], None
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path}: line {number} is corrupt (not JSON); refusing to guess") from None
        if not isinstance(row, dict) or "step" not in row:
            raise UserError(f"{path}: line {number} is not a step's metrics")
        rows.append(row)
    if cut:
        try:
            row = json.loads(cut.decode())
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError
            rows.append(row)  # complete, just without its newline
        except ValueError:  # JSON and Unicode decoding errors are ValueErrors
            note = f"{path.name}: dropped a last line cut short ({len(cut)} bytes; a kill mid-write)"
    return rows, note


# --- eval files ---------------------------------------------------------------------------------------
EPISODE_FIELDS = {"task_id": np.int32, "init_state": np.int32, "success": np.uint8,
                  "episode_length": np.int32, "noise_seed": np.uint64}


def write_eval(path: str | Path, episodes: dict[str, np.ndarray], tasks: Sequence[dict[str, Any]],
               suite: str, config_json: str, policy: dict[str, Any], renderers: Sequence[str] = (),
               scene: str = "") -> Path:
    """Per-episode results as columns of `/episodes`, the task table as `/tasks`; `renderers`: the GL
    renderers the cameras used (none for imported results); `scene`: the scene mode that rendered them
    (`lean`, `libero`, `lowpoly`; "" for imported results)."""
    path = Path(path)
    with atomic_h5(path) as f:
        _common_attrs(f, "eval", config_json, policy)
        f.attrs["suite"] = suite
        f.attrs["renderers"] = json.dumps(sorted(renderers))
        f.attrs["scene"] = scene
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
                "config": json.loads(f.attrs["config"]), "policy": json.loads(f.attrs["policy"]),
                "renderers": json.loads(f.attrs.get("renderers", "[]")), "scene": str(f.attrs.get("scene", ""))}


def read_demo(g: h5py.Group, task: Any) -> Trajectory:
    """A `demo_i` group back into a Trajectory (task: the TaskSpec of its `task_id`)."""
    a = g.attrs
    spec = EpisodeSpec(task, int(a["init_state"]), int(a["denoise_steps"]), int(a["noise_seed"]),
                       group=int(a["group"]), member=int(a["member"]))
    p = g["policy"]
    images = {f"observation.images.{k}": list(p["images"][k][()]) for k in p.get("images", {})}
    return Trajectory(spec, actions=list(g["actions"][()]), states=list(g["obs/state"][()]),
                      rewards=list(g["rewards"][()]), query_steps=p["query_steps"][()].tolist(),
                      query_states=list(p["state"][()]), query_images=images, noise=list(p["noise"][()]),
                      chains=list(p["chains"][()]), success=bool(a["success"]),
                      stalled=bool(a.get("stalled", False)),
                      progress=float(a.get("progress", float(a["success"]))))


# --- checkpoints --------------------------------------------------------------------------------------

def write_checkpoint(path: str | Path, *, step: int, params: dict[str, Any], optimizer_state: dict[str, Any] | None,
                     param_names: list[str], config_json: str, policy: dict[str, Any],
                     reference: dict[str, Any] | None, replay: dict[str, list[Trajectory]],
                     extra: dict[str, Any], value_buffer: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                     optimizers: dict[str, dict[str, Any]] | None = None,
                     arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Parameters by name, AdamW state, step, config, identities, the replay pool and the chunk value's
    buffer (`advantage_baseline = value`: per step, chunk-start states and their episodes' rewards); atomic.
    `optimizers` (more named optimizers) and `arrays` (named arrays) hold what other trainers keep: a steer
    run's SAC optimizers and replay buffer."""
    import torch

    path = Path(path)
    with atomic_h5(path) as f:
        _common_attrs(f, "checkpoint", config_json, policy)
        f.attrs["step"] = step
        f.attrs["reference"] = json.dumps(reference, sort_keys=True)
        f.attrs["extra"] = json.dumps(extra, sort_keys=True)
        pg = f.create_group("params")
        for name, tensor in params.items():
            pg.create_dataset(name, data=tensor.detach().cpu().numpy())
        if optimizer_state is not None:
            _write_optimizer(f.create_group("optimizer"), optimizer_state)
            f["optimizer"].attrs["param_names"] = json.dumps(param_names)
        for name, state in (optimizers or {}).items():
            _write_optimizer(f.create_group(f"optimizers/{name}"), state)
        for name, array in (arrays or {}).items():
            f.create_dataset(f"arrays/{name}", data=array)
        f.create_dataset("rng/torch", data=torch.get_rng_state().numpy())
        rg = f.create_group("replay")
        n = 0
        for key, trajs in replay.items():
            for traj in trajs:
                _write_demo(rg.create_group(f"demo_{n}"), traj)
                rg[f"demo_{n}"].attrs["pool_key"] = key
                n += 1
        for i, (states, rewards) in enumerate(value_buffer):
            f.create_dataset(f"value_buffer/step_{i}/states", data=states)
            f.create_dataset(f"value_buffer/step_{i}/rewards", data=rewards)
    return path


def _write_optimizer(g: h5py.Group, state: dict[str, Any]) -> None:
    """A torch optimizer's state_dict: param_groups as JSON, each parameter's state as datasets."""
    import torch

    g.attrs["param_groups"] = json.dumps(state["param_groups"])
    for idx, values in state["state"].items():
        sg = g.create_group(f"state/{idx}")
        for key, value in values.items():
            sg.create_dataset(key, data=value.detach().cpu().numpy() if torch.is_tensor(value) else value)


def _read_optimizer(g: h5py.Group) -> dict[str, Any]:
    import torch

    state = {int(idx): {k: torch.as_tensor(v[()]) for k, v in sg.items()} for idx, sg in g.get("state", {}).items()}
    return {"state": state, "param_groups": json.loads(g.attrs["param_groups"])}


def _datasets(g: h5py.Group) -> dict[str, np.ndarray]:
    """Every dataset under g, by its path relative to g ("replay/actions")."""
    found: dict[str, np.ndarray] = {}
    g.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def read_checkpoint(path: str | Path, task_lookup: Any = None) -> dict[str, Any]:
    """Everything `write_checkpoint` stored; `task_lookup(task_id)` rebuilds replay trajectories."""
    import torch

    with open_kind(path, "checkpoint") as f:
        params = {name: torch.from_numpy(ds[()]) for name, ds in f["params"].items()}
        og = f.get("optimizer")
        replay: dict[str, list[Trajectory]] = {}
        if task_lookup is not None:
            for name in sorted(f["replay"], key=lambda s: int(s.split("_")[1])):
                g = f["replay"][name]
                replay.setdefault(g.attrs["pool_key"], []).append(read_demo(g, task_lookup(int(g.attrs["task_id"]))))
        vb = f.get("value_buffer", {})
        value_buffer = [(vb[k]["states"][()], vb[k]["rewards"][()]) for k in sorted(vb, key=lambda s: int(s[5:]))]
        return {"step": int(f.attrs["step"]), "params": params,
                "optimizer": _read_optimizer(og) if og is not None else None,
                "param_names": json.loads(og.attrs["param_names"]) if og is not None else list(params),
                "optimizers": {name: _read_optimizer(g) for name, g in f.get("optimizers", {}).items()},
                "arrays": _datasets(f["arrays"]) if "arrays" in f else {},
                "config": json.loads(f.attrs["config"]),
                "policy": json.loads(f.attrs["policy"]), "reference": json.loads(f.attrs["reference"]),
                "extra": json.loads(f.attrs["extra"]), "rng_torch": torch.from_numpy(f["rng/torch"][()]),
                "replay": replay, "value_buffer": value_buffer}


# --- demonstrations (LIBERO / robomimic layout) ----------------------------------------------------------
DEMO_IMAGE_KEYS = {"observation.images.image": "agentview_rgb", "observation.images.image2": "eye_in_hand_rgb"}


def write_demos(path: str | Path, demos: Sequence[Any], tasks: dict[int, Any], config_json: str,
                env_args: dict[str, Any]) -> Path:
    """Scripted demos in the layout of LIBERO's own HDF5 demos: `data/demo_i/{actions, rewards, dones,
    obs/{agentview_rgb, eye_in_hand_rgb, ee_states, gripper_states}}`, images as the env renders them
    (not rotated), plus `obs/privileged` (goal object positions) when recorded and per-demo task attrs."""
    path = Path(path)
    with atomic_h5(path) as f:
        _common_attrs(f, "demos", config_json, {"source": "scripted-expert"})
        data = f.create_group("data")
        data.attrs["total"] = int(sum(d.length for d in demos))
        data.attrs["env_args"] = json.dumps(env_args, sort_keys=True)
        first = tasks[demos[0].task_id] if demos else None
        if first is not None:  # LIBERO stores one task per file; readers of ours use the per-demo attrs
            data.attrs["problem_info"] = json.dumps({"language_instruction": first.language,
                                                     "problem_name": first.name})
        for i, demo in enumerate(demos):
            task = tasks[demo.task_id]
            g = data.create_group(f"demo_{i}")
            g.attrs.update({"num_samples": demo.length, "task_id": demo.task_id, "task_name": task.name,
                            "language": task.language, "init_state": demo.init_state,
                            "success": bool(demo.success)})
            T = demo.length
            states = np.asarray(demo.states, dtype=np.float32).reshape(T, -1)
            g.create_dataset("actions", data=np.asarray(demo.actions, dtype=np.float32).reshape(T, -1))
            g.create_dataset("rewards", data=np.eye(1, T, T - 1, dtype=np.float32)[0] * float(demo.success))
            g.create_dataset("dones", data=np.eye(1, T, T - 1, dtype=np.uint8)[0])
            g.create_dataset("obs/ee_states", data=states[:, :6])
            g.create_dataset("obs/gripper_states", data=states[:, 6:8])
            if states.shape[1] > 8:
                g.create_dataset("obs/privileged", data=states[:, 8:])
            for key, name in DEMO_IMAGE_KEYS.items():
                if key in demo.images:
                    frames = np.asarray(demo.images[key], dtype=np.uint8)[:, ::-1, ::-1]  # back to LIBERO's
                    g.create_dataset(f"obs/{name}", data=frames, chunks=(1, *frames.shape[1:]),
                                     compression="gzip", compression_opts=4)
    return path


def read_demos(path: str | Path, privileged_state: bool) -> list[dict[str, Any]]:
    """Demos from our `demos` files or LIBERO's official HDF5 files, in lerobot's conventions.

    Each item: images {key: (T, h, w, 3) uint8, rotated 180 degrees as lerobot does}, state (T, S),
    actions (T, 7), language, task_id, success.
    """
    path = Path(path)
    with open_h5(path) as f:
        if "data" not in f or not any(k.startswith("demo_") for k in f["data"]):
            raise UserError(f"{path} holds no demonstrations (expected data/demo_i groups)")
        info = json.loads(f["data"].attrs.get("problem_info", "{}"))
        # LIBERO's own demos and ours before scenes were recorded have LIBERO's images (`lean` renders the same)
        scene = json.loads(f["data"].attrs.get("env_args", "{}")).get("scene", "libero")
        demos = []
        for name in sorted(f["data"], key=lambda k: int(k.split("_")[-1])):
            g = f["data"][name]
            obs = g["obs"]
            missing = [k for k in ("ee_states", "gripper_states", *DEMO_IMAGE_KEYS.values()) if k not in obs]
            if missing:
                raise UserError(f"{path}:{name} lacks obs/{missing[0]} (not a LIBERO-layout demo)")
            parts = [obs["ee_states"][()][:, :6], obs["gripper_states"][()][:, :2]]
            if privileged_state:
                if "privileged" not in obs:
                    raise UserError(f"{path}:{name} has no obs/privileged; the policy needs privileged state")
                parts.append(obs["privileged"][()])
            language = g.attrs.get("language", info.get("language_instruction"))
            if language is None:
                raise UserError(f"{path}:{name} names no task (no language attr or problem_info)")
            demos.append({"images": {key: obs[n][()][:, ::-1, ::-1] for key, n in DEMO_IMAGE_KEYS.items()},
                          "state": np.concatenate(parts, axis=1).astype(np.float32),
                          "actions": g["actions"][()].astype(np.float32), "language": str(language),
                          "task_id": int(g.attrs.get("task_id", -1)),
                          "success": bool(g.attrs.get("success", True)), "scene": scene})
        return demos


# --- merges of shard parts ------------------------------------------------------------------------------
def merge_rollouts(parts: Sequence[Path], out: Path, config_json: str) -> None:
    """Concatenate rollout parts (in order) into one file, demo indices renumbered from 0."""
    with atomic_h5(out) as f:
        data = f.create_group("data")
        total, groups, i = 0, 0, 0
        for part in parts:
            with open_kind(part, "rollout") as src:
                env_args = json.loads(src["data"].attrs["env_args"])
                if i == 0:
                    f.attrs.update(dict(src.attrs))
                    f.attrs["config"] = config_json
                    merged_args = env_args
                if scene_look(env_args.get("scene", "")) != scene_look(merged_args.get("scene", "")):
                    raise UserError(f"{part} was rendered in the {env_args.get('scene')} scene, "
                                    f"{parts[0]} in the {merged_args.get('scene')} one: set one GRPO_VLA_SCENE")
                # shards may run on nodes with other renderers
                merged_args["renderers"] = sorted(set(merged_args.get("renderers", []))
                                                  | set(env_args.get("renderers", [])))
                total += int(src["data"].attrs["total"])
                groups += int(src["data"].attrs["num_groups"])
                for k in range(len(src["data"])):
                    src.copy(src[f"data/demo_{k}"], data, name=f"demo_{i}")
                    i += 1
        data.attrs["total"], data.attrs["num_groups"] = total, groups
        data.attrs["env_args"] = json.dumps(merged_args, sort_keys=True)


def merge_evals(parts: Sequence[Path], out: Path, config_json: str) -> None:
    """Concatenate per-task eval files (in order) into one eval file."""
    datas = [read_eval(p) for p in parts]
    episodes = {k: np.concatenate([d["episodes"][k] for d in datas]) for k in EPISODE_FIELDS}
    tasks = [t for d in datas for t in d["tasks"]]
    renderers = sorted({r for d in datas for r in d.get("renderers", [])})
    scenes = sorted({d["scene"] for d in datas})
    if len({scene_look(s) for s in scenes}) > 1:
        raise UserError(f"the eval files saw different images (scenes {', '.join(scenes)}): not one eval")
    write_eval(out, episodes, tasks, str(datas[0]["suite"]), config_json, datas[0]["policy"], renderers,
               "+".join(scenes))


# --- importing published numbers --------------------------------------------------------------------------
def import_csv(csv_path: str | Path, suite: str, label: str | None, out: str | Path) -> Path:
    """A CSV of per-task success counts -> an eval file (episodes synthesised from the counts).

    Columns: `task_id,successes,episodes`, optionally `label` (several policies in one file; pick one
    with `label`) and `drift_pct` (a published drift, shown in Table 2).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: no such file")
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    required = {"task_id", "successes", "episodes"}
    if not rows or not required <= set(rows[0]):
        raise UserError(f"{csv_path}: needs a header with columns {', '.join(sorted(required))}")
    labels = sorted({r.get("label") or "" for r in rows})
    if label is None and len(labels) > 1:
        raise UserError(f"{csv_path} holds several labels ({', '.join(labels)}): choose one with --label")
    label = label if label is not None else labels[0]
    rows = [r for r in rows if (r.get("label") or "") == label] if "label" in rows[0] else rows
    if not rows:
        raise UserError(f"{csv_path}: no rows labelled {label!r}; labels: {', '.join(labels)}")
    counts: dict[int, tuple[int, int]] = {}
    drifts = set()
    for i, r in enumerate(rows, start=2):
        try:
            t, s, n = int(r["task_id"]), int(r["successes"]), int(r["episodes"])
        except (TypeError, ValueError):
            raise UserError(f"{csv_path} line {i}: task_id, successes and episodes must be integers") from None
        if not 0 <= s <= n or n == 0:
            raise UserError(f"{csv_path} line {i}: needs 0 <= successes <= episodes and episodes > 0")
        if not 0 <= t < num_tasks(suite):
            raise UserError(f"{csv_path} line {i}: task {t} is not in {suite} (0..{num_tasks(suite) - 1})")
        if t in counts:
            raise UserError(f"{csv_path} line {i}: task {t} is listed twice for {label!r}")
        counts[t] = (s, n)
        if (r.get("drift_pct") or "").strip():
            drifts.add(float(r["drift_pct"]))
    if len(drifts) > 1:
        raise UserError(f"{csv_path}: one drift_pct per label, found {sorted(drifts)}")
    tasks = [task_spec(suite, t) for t in sorted(counts)]
    ids = [t for t in sorted(counts) for _ in range(counts[t][1])]
    success = [int(i < counts[t][0]) for t in sorted(counts) for i in range(counts[t][1])]
    inits = [i % task.num_init_states for task in tasks for i in range(counts[task.task_id][1])]
    episodes = {"task_id": np.array(ids), "init_state": np.array(inits), "success": np.array(success),
                "episode_length": np.zeros(len(ids)), "noise_seed": np.zeros(len(ids), dtype=np.uint64)}
    identity = {"source": f"import:{csv_path.name}", "kind": "imported", "label": label or csv_path.stem,
                "drift": {"total": drifts.pop()} if drifts else None}
    table = [{"task_id": t.task_id, "name": t.name, "language": t.language} for t in tasks]
    return write_eval(out, episodes, table, suite, json.dumps({"imported_from": str(csv_path), "label": label}),
                      identity)
