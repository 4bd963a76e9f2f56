"""LIBERO env module: every LIBERO-10 task builds offline, success is wired, rendering and resets exact."""

from __future__ import annotations

import os

import numpy as np
import pytest

from grpo_cli.envs.libero import (
    CAMERAS,
    NOOP_ACTION,
    STATE_KEY,
    SUITES,
    LiberoEnv,
    num_tasks,
    quat_to_axis_angle,
    task_spec,
)
from grpo_cli.errors import UserError


def _actions(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 7))


@pytest.mark.parametrize("task_id", range(10))
def test_every_libero10_task_builds_and_steps(task_id: int) -> None:
    spec = task_spec("libero_10", task_id)
    assert spec.max_steps == 520 and spec.num_init_states == 50
    env = LiberoEnv(spec, images=False)
    try:
        obs = env.reset(task_id)
        assert obs[STATE_KEY].shape == (8,) and obs[STATE_KEY].dtype == np.float32
        start = obs[STATE_KEY].copy()
        for a in _actions(5, task_id):
            obs, reward, success, _ = env.step(a, render=False)
        assert not np.allclose(obs[STATE_KEY][:3], start[:3])  # the arm moved
        assert env.steps == 5 and not success and reward == 0.0
    finally:
        env.close()


def test_all_suites_resolve() -> None:
    assert {s: num_tasks(s) for s in SUITES} == {"libero_10": 10, "libero_spatial": 10, "libero_object": 10,
                                                 "libero_goal": 10, "libero_90": 90}
    assert task_spec("libero_object", 3).max_steps == 280
    by_name = task_spec("libero_10", task_spec("libero_10", 4).name)
    assert by_name.task_id == 4


def test_bad_task_and_init_state_are_user_errors(task0) -> None:
    with pytest.raises(UserError, match="out of range"):
        task_spec("libero_10", 10)
    with pytest.raises(UserError, match="unknown LIBERO suite"):
        task_spec("libero_11", 0)
    env = LiberoEnv(task0, images=False)
    try:
        with pytest.raises(UserError, match="init state 50 is out of range"):
            env.reset(50)
    finally:
        env.close()


def test_goal_objects_in_basket_make_success_true(task0) -> None:
    env = LiberoEnv(task0, images=False)
    try:
        env.reset(0)
        goal = env.raw_env.parsed_problem["goal_state"]
        assert [p[0] for p in goal] == ["in", "in"] and not env.success()
        region = env.sim.data.get_site_xpos(goal[0][2]).copy()
        # Place only the first object: the task is not done yet.
        for n, (_, obj, _) in enumerate(goal):
            joint = env.raw_env.objects_dict[obj].joints[-1]
            qpos = env.sim.data.get_joint_qpos(joint).copy()
            qpos[:3] = region + np.array([0.03 * (2 * n - 1), 0.0, 0.0])
            env.sim.data.set_joint_qpos(joint, qpos)
            env.sim.forward()
            assert env.success() == (n == len(goal) - 1)
        _, _, success, _ = env.step(NOOP_ACTION, render=False)
        assert success
    finally:
        env.close()


def _episode(env: LiberoEnv, init_state: int, actions: np.ndarray, look_every: int):
    obs = env.reset(init_state)
    frames = [obs[k] for k in CAMERAS.values() if k in obs]
    states = [obs[STATE_KEY]]
    for i, a in enumerate(actions):
        look = i % look_every == look_every - 1
        obs, _, _, _ = env.step(a, render=look)
        states.append(obs[STATE_KEY])
        if look and env.images:
            frames += [obs[k] for k in CAMERAS.values()]
        elif not env.render_every_step:
            assert not any(k in obs for k in CAMERAS.values())  # nothing rendered, nothing returned
    return frames, np.array(states)


def test_on_demand_rendering_is_bit_identical_to_always_render(task0) -> None:
    actions = _actions(20, 1)
    always = LiberoEnv(task0, image_size=64, render_every_step=True)
    frames_always, states_always = _episode(always, 3, actions, look_every=7)
    always.close()
    lazy = LiberoEnv(task0, image_size=64)
    frames_lazy, states_lazy = _episode(lazy, 3, actions, look_every=7)
    lazy.close()
    assert len(frames_lazy) == len(frames_always) == 6
    for a, b in zip(frames_always, frames_lazy, strict=True):
        assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
        np.testing.assert_array_equal(a, b)
    assert frames_lazy[0].std() > 10  # a real picture, not a blank buffer
    np.testing.assert_array_equal(states_always, states_lazy)


def test_soft_reset_equals_hard_reset(task0) -> None:
    actions = _actions(25, 2)
    hard = LiberoEnv(task0, images=False, hard_reset=True)
    _, states_hard = _episode(hard, 5, actions, look_every=1000)
    hard.close()
    soft = LiberoEnv(task0, images=False)
    _episode(soft, 9, _actions(25, 3), look_every=1000)  # leave state behind from another episode
    _, states_soft = _episode(soft, 5, actions, look_every=1000)
    soft.close()
    np.testing.assert_array_equal(states_hard, states_soft)


def test_quat_to_axis_angle_matches_lerobot() -> None:
    import torch
    from lerobot.processor.env_processor import LiberoProcessorStep

    quats = np.random.default_rng(0).normal(size=(5, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    ours = np.stack([quat_to_axis_angle(q) for q in quats])
    theirs = LiberoProcessorStep()._quat2axisangle(torch.from_numpy(quats).float()).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_closing_another_env_keeps_this_envs_images() -> None:
    """Closing a second env in the process used to leave this one rendering without a GL context
    (corrupt images; robosuite's EGL teardown releases the current context)."""
    a = LiberoEnv(task_spec("libero_object", 0), image_size=32, images=True)
    try:
        first = a.reset(0)
        b = LiberoEnv(task_spec("libero_goal", 7), image_size=32, images=False)
        b.reset(0)
        b.close()
        again = a.reset(0)
        for key in ("observation.images.image", "observation.images.image2"):
            np.testing.assert_array_equal(first[key], again[key])
    finally:
        a.close()


def test_init_states_are_read_without_torch_and_equal_torch_load(tmp_path) -> None:
    """Env workers read LIBERO's init states without importing torch: same arrays as `torch.load`, and a
    file whose pickle names anything but numpy is refused (nothing in it runs)."""
    import glob
    import pickle
    import zipfile

    import torch

    from grpo_cli.envs.libero import configure_libero, read_init_states

    configure_libero(require_assets=False)
    from libero.libero import get_libero_path

    files = sorted(glob.glob(f"{get_libero_path('init_states')}/*/*.pruned_init"))
    assert len(files) >= 100  # every suite's tasks
    for path in files:
        ours, theirs = read_init_states(path), torch.load(path, weights_only=False)
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), path
    spec = task_spec("libero_10", 0)
    assert spec.num_init_states == len(read_init_states(spec.init_states_file)) == 50

    evil = tmp_path / "evil.pruned_init"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(print))  # a global outside numpy
    with pytest.raises(pickle.UnpicklingError, match="builtins.print is not part of a numpy array"):
        read_init_states(str(evil))


def test_identical_textures_are_uploaded_once() -> None:
    from grpo_cli.envs.libero import merge_duplicate_textures

    xml = """<mujoco><asset>
      <texture name="a" file="wood.png" type="cube"/><texture name="b" file="wood.png" type="cube"/>
      <texture name="c" file="wood.png" type="2d"/>
      <material name="ma" texture="a"/><material name="mb" texture="b"/><material name="mc" texture="c"/>
    </asset><worldbody/></mujoco>"""
    merged = merge_duplicate_textures(xml)
    assert merged.count("<texture") == 2 and 'name="b"' not in merged.split("<material")[0]
    assert '<material name="mb" texture="a"' in merged and '<material name="mc" texture="c"' in merged
    plain = "<mujoco><asset><texture name='a' file='x.png'/></asset></mujoco>"
    assert merge_duplicate_textures(plain) == plain  # nothing to merge: the XML is not rewritten


def test_scene_compile_is_mujocos_own_and_lean_only_drops_render_copies() -> None:
    """`compile_scene` (through an MjSpec, freed at once) gives MuJoCo's model byte for byte; `lean` merges
    copied textures and drops the shadow map when no light casts shadows, and nothing else."""
    import hashlib

    import mujoco

    from grpo_cli.envs.libero import compile_scene

    def digest(model) -> str:
        buffer = np.zeros(mujoco.mj_sizeModel(model), np.uint8)
        mujoco.mj_saveModel(model, None, buffer)
        return hashlib.sha256(buffer.tobytes()).hexdigest()

    def scene(castshadow: str) -> str:
        return f"""<mujoco><asset>
          <texture name="t1" builtin="checker" rgb1="1 0 0" rgb2="0 0 1" width="64" height="64" type="cube"/>
          <texture name="t2" builtin="checker" rgb1="1 0 0" rgb2="0 0 1" width="64" height="64" type="cube"/>
          <material name="m1" texture="t1"/><material name="m2" texture="t2"/></asset>
          <worldbody><light castshadow="{castshadow}"/><body><freejoint/><geom size=".1" material="m1"/></body>
          <geom type="plane" size="1 1 .1" material="m2"/></worldbody></mujoco>"""

    xml = scene("false")
    assert digest(compile_scene(xml, "libero")) == digest(mujoco.MjModel.from_xml_string(xml))
    lean, plain = compile_scene(xml, "lean"), compile_scene(xml, "libero")
    assert (lean.ntex, plain.ntex) == (1, 2) and lean.vis.quality.shadowsize == 0 < plain.vis.quality.shadowsize
    for name in ("body_mass", "geom_size", "geom_friction", "opt.timestep"):
        obj_l, obj_p = lean, plain
        for part in name.split("."):
            obj_l, obj_p = getattr(obj_l, part), getattr(obj_p, part)
        np.testing.assert_array_equal(obj_l, obj_p)
    assert compile_scene(scene("true"), "lean").vis.quality.shadowsize > 0  # a shadow is drawn: kept


def test_one_env_worker_peaks_under_1_2_gib() -> None:
    """Issue 28: one LIBERO-10 env (task 0, 256 px, both cameras, reset + 30 steps) in a fresh process, as
    an env worker runs it (no torch), peaks at <= 1.2 GiB resident."""
    import dataclasses
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "env_memory.py"
    spec = json.dumps(dataclasses.asdict(task_spec("libero_10", 0)))
    proc = subprocess.run([sys.executable, str(script), "--image-size", "256", "--child", "shipped", "--spec", spec],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["torch"]
    assert result["stages"]["reset + 30 steps"] <= 1228, result["stages"]


def test_numba_caches_outside_a_read_only_install(tmp_path) -> None:
    """robosuite's numba functions cache beside their source; a read-only install (an Apptainer image)
    gets a writable per-user folder instead, the first of the candidates that works. /proc stands in
    for read-only folders (not writable even for root)."""
    from pathlib import Path

    from grpo_cli.envs.libero import numba_cache_dir

    source = tmp_path / "robosuite" / "utils"
    source.mkdir(parents=True)
    assert numba_cache_dir(source, [tmp_path / "cache"]) is None  # writable: numba's own default
    read_only = Path("/proc/self")
    assert not os.access(read_only, os.W_OK)
    writable = tmp_path / "cache" / "numba"
    assert numba_cache_dir(read_only, [read_only / "numba", writable]) == writable
    assert (tmp_path / "cache" / "numba").is_dir()
    assert numba_cache_dir(read_only, [read_only / "numba"]) is None  # nowhere writable: numba's default
