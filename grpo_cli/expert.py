"""A scripted pick-and-place expert for LIBERO's "pick up the X and place it in the Y" tasks.

It reads privileged state (object bounding boxes, the goal region) and emits OSC_POSE delta actions,
as ../shared/design/expert-notes.md describes: approach above the object, descend (stop on contact),
close, lift over the rim, move over the region, lower, open, retreat. Orientation is held at its
start value, because a zero rotation delta lets injected noise tilt the hand. Works for the ten
LIBERO-Object tasks (goal `(in OBJECT basket_1_contain_region)`); other families raise a clear error.

Demos are written in the LIBERO/robomimic HDF5 layout (see storage.write_demos), so `grpo-vla sft`
reads ours and the official LIBERO demos alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from grpo_cli.envs.libero import STATE_KEY, LiberoEnv, TaskSpec, task_spec
from grpo_cli.errors import UserError

GAIN = 20.0  # a_xyz = clip(GAIN * error): saturates at 5 cm, about 1.3 cm per step
ROT_GAIN = 2.0
RIM_Z = 0.141  # basket rim height
CLEARANCE = 0.04
RELEASE_Z = 0.125  # the hand box hits the rim below about 0.114
CLOSE_STEPS, OPEN_STEPS, RETREAT_STEPS = 10, 15, 10


def object_bbox(env: LiberoEnv, name: str) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned bounding box (lo, hi) of all geoms of a BDDL object's body subtree.

    Body origins are not centres (cream cheese: body z 0.0, centre 0.009), so grasp heights use this.
    """
    model, data = env.sim.model._model, env.sim.data._data
    root = env.raw_env.obj_body_id[name]
    bodies = {root}
    for b in range(model.nbody):  # parents come before children in MuJoCo's body order
        if model.body_parentid[b] in bodies and b != 0:
            bodies.add(b)
    corners = []
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    for g in np.flatnonzero(np.isin(model.geom_bodyid, list(bodies))):
        centre, half = model.geom_aabb[g, :3], model.geom_aabb[g, 3:]
        local = centre + signs * half  # (8, 3)
        corners.append(data.geom_xpos[g] + local @ data.geom_xmat[g].reshape(3, 3).T)
    pts = np.concatenate(corners)
    return pts.min(0), pts.max(0)


@dataclass
class PickPlaceExpert:
    """A phase machine over privileged state. `act(env)` returns the next 7-dim action."""

    env: LiberoEnv
    noise_std: float = 0.0
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    phase: str = "approach"
    counter: int = 0
    history: list[float] = field(default_factory=list)
    retries: int = 0

    def __post_init__(self) -> None:
        goal = self.env.goal
        if len(goal) != 1 or goal[0][0] != "in" or len(goal[0]) != 3:
            raise UserError(f"the scripted expert handles 'pick X, place it in Y' tasks; task "
                            f"{self.env.spec.name!r} has goal {goal}")
        self.object, self.region = goal[0][1], goal[0][2]
        self.q0 = self._eef_rotation()

    def _eef_rotation(self) -> Rotation:
        quat = self.env.raw_env._observables["robot0_eef_quat"].obs
        return Rotation.from_quat(quat)  # xyzw

    def _eef(self) -> np.ndarray:
        return np.array(self.env.raw_env._observables["robot0_eef_pos"].obs, dtype=np.float64)

    def _move(self, target: np.ndarray, gripper: float) -> np.ndarray:
        action = np.zeros(7)
        action[:3] = np.clip(GAIN * (target - self._eef()), -1, 1)
        error = (self.q0 * self._eef_rotation().inv()).as_rotvec()
        action[3:6] = np.clip(ROT_GAIN * error, -1, 1)
        action[6] = gripper
        return action

    def _stalled(self, z: float) -> bool:
        self.history.append(z)
        return len(self.history) > 3 and abs(self.history[-4] - z) < 0.002

    def _next(self, phase: str) -> None:
        self.phase, self.counter, self.history = phase, 0, []

    def act(self) -> np.ndarray:
        """The clean expert action for the current state (noise is added by `noisy`)."""
        env, eef = self.env, self._eef()
        lo, hi = object_bbox(env, self.object)
        centre = (lo + hi) / 2
        grasp_z = max(float(centre[2]), 0.01)
        region = env.position(self.region)
        self.counter += 1
        if self.phase == "approach":
            target = np.array([centre[0], centre[1], grasp_z + 0.10])
            if np.linalg.norm((target - eef)[:2]) < 0.01 and abs(target[2] - eef[2]) < 0.02:
                self._next("descend")
            return self._move(target, -1.0)
        if self.phase == "descend":
            target = np.array([centre[0], centre[1], grasp_z])
            if abs(eef[2] - grasp_z) < 0.01 or self._stalled(eef[2]) or self.counter > 40:
                self._next("close")
                self.grasp_bottom = float(lo[2])
            return self._move(target, -1.0)
        if self.phase == "close":
            if self.counter >= CLOSE_STEPS:
                self._next("lift")
                self.lift_z = max(0.25, (eef[2] - self.grasp_bottom) + RIM_Z + CLEARANCE)
                self.bottom_at_grasp = float(lo[2])
            return self._move(np.array([eef[0], eef[1], eef[2]]), 1.0)
        if self.phase == "lift":
            if self.counter == 8 and lo[2] - self.bottom_at_grasp < 0.01 and self.retries < 2:
                self.retries += 1  # the object did not come up: reopen and start again
                self._next("reopen")
                return self._move(eef + np.array([0, 0, 0.05]), -1.0)
            target = np.array([eef[0], eef[1], self.lift_z])
            if abs(eef[2] - self.lift_z) < 0.01:
                self._next("carry")
            return self._move(target, 1.0)
        if self.phase == "reopen":
            if self.counter >= OPEN_STEPS:
                self._next("approach")
            return self._move(eef + np.array([0, 0, 0.05]), -1.0)
        if self.phase == "carry":
            target = np.array([region[0], region[1], self.lift_z])
            if np.linalg.norm((target - eef)[:2]) < 0.01:
                self._next("lower")
            return self._move(target, 1.0)
        if self.phase == "lower":
            target = np.array([region[0], region[1], RELEASE_Z])
            if eef[2] < RELEASE_Z + 0.01 or self._stalled(eef[2]) or self.counter > 30:
                self._next("open")
            return self._move(target, 1.0)
        if self.phase == "open":
            if self.counter >= OPEN_STEPS:
                self._next("retreat")
            return self._move(eef, -1.0)
        return self._move(eef + np.array([0, 0, 0.05]), -1.0)  # retreat

    @property
    def done(self) -> bool:
        return self.phase == "retreat" and self.counter >= RETREAT_STEPS

    def noisy(self, action: np.ndarray) -> np.ndarray:
        """Gaussian noise on the pose dims (diversity for imitation), gripper untouched."""
        out = action.copy()
        if self.noise_std > 0:
            out[:6] = np.clip(out[:6] + self.rng.normal(0.0, self.noise_std, 6), -1, 1)
        return out


@dataclass
class Demo:
    """One expert episode, every step observed (images rotated as lerobot's, state as the policy sees)."""

    task_id: int
    init_state: int
    actions: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    images: dict[str, list[np.ndarray]] = field(default_factory=dict)
    success: bool = False

    @property
    def length(self) -> int:
        return len(self.actions)


def run_expert(env: LiberoEnv, init_state: int, noise_std: float, seed: int, max_steps: int | None = None
               ) -> Demo:
    """One expert episode from `init_state`; records through release (LIBERO's success fires while
    the object is still held above the basket) and stops after the retreat or at the step limit."""
    obs = env.reset(init_state)
    expert = PickPlaceExpert(env, noise_std, np.random.default_rng([seed, env.spec.task_id, init_state]))
    demo = Demo(env.spec.task_id, init_state)
    limit = max_steps or env.spec.max_steps
    while demo.length < limit and not expert.done:
        action = expert.noisy(expert.act())
        demo.states.append(obs[STATE_KEY])
        for key, value in obs.items():
            if key != STATE_KEY:
                demo.images.setdefault(key, []).append(value)
        demo.actions.append(action.astype(np.float32))
        obs, _, success, _ = env.step(action, render=env.images)
        demo.success = demo.success or success
    demo.success = env.success()
    return demo


def _collect_task(args: tuple[TaskSpec, list[int], float, int, bool, bool, int, int]) -> list[Demo]:
    """Worker: demos of one task over some init states (one env; no torch, see grpo_cli/envs/slots.py)."""
    spec, init_states, noise_std, image_size, images, privileged, seed, repeats = args
    env = LiberoEnv(spec, image_size=image_size, images=images, privileged_state=privileged)
    try:
        return [run_expert(env, i, noise_std, seed + r) for r in range(repeats) for i in init_states]
    finally:
        env.close()


def collect_demos(suite: str, task_ids: list[int], init_states: list[int], noise_std: float, image_size: int,
                  privileged_state: bool, seed: int = 0, repeats: int = 1, workers: int = 1,
                  images: bool = True, on_demo: Any = None) -> list[Demo]:
    """Expert demos for every (task, init state, repeat), over `workers` spawned processes."""
    import concurrent.futures as cf
    import multiprocessing as mp

    specs = {t: task_spec(suite, t) for t in task_ids}  # resolved here: LIBERO's task registry imports torch
    jobs = [(specs[t], init_states[w::workers], noise_std, image_size, images, privileged_state, seed, repeats)
            for t in task_ids for w in range(min(workers, len(init_states)))]
    demos: list[Demo] = []
    if workers <= 1:
        for job in jobs:
            demos += _collect_task(job)
            if on_demo:
                on_demo(len(demos))
    else:
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for part in pool.map(_collect_task, jobs):
                demos += part
                if on_demo:
                    on_demo(len(demos))
    return sorted(demos, key=lambda d: (d.task_id, d.init_state))
