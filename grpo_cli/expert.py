"""A scripted expert for LIBERO tasks whose BDDL goal is a set of placements: "put X in Y", "put X on Y".

It reads privileged state (object bounding boxes, goal regions and objects) and emits OSC_POSE delta
actions, as ../shared/design/expert-notes.md describes. The goal's predicates become sub-goals in an order
that can be carried out (`plan_subgoals`), each a pick-and-place (`PickPlace`): approach above the object,
descend (stop on contact), close, lift clear of the target, move over it, lower, open, retreat.
Orientation is held at its start value, because a zero rotation delta lets injected noise tilt the hand.
Heights are taken from the scene (the object's bottom at the grasp, the target's top), so the tables of
LIBERO-Object (z 0) and of LIBERO-10's rooms (z 0.43, 0.90) are the same problem. Articulated sub-goals have
their own skills (`ARTICULATIONS`): a drawer pushed shut (`CloseSlide`), a knob gripped and turned on
(`TurnKnob`). A task whose goal has a predicate the expert cannot carry out raises a one-line error naming
the task, before its episode starts.

Demos are written in the LIBERO/robomimic HDF5 layout (see storage.write_demos), so `grpo-vla sft`
reads ours and the official LIBERO demos alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from grpo_cli.envs.libero import STATE_KEY, LiberoEnv, TaskSpec, task_spec
from grpo_cli.errors import UserError

GAIN = 20.0  # a_xyz = clip(GAIN * error): saturates at 5 cm, about 1.3 cm per step
ROT_GAIN = 2.0
RIM_ABOVE_REGION = 0.004  # the basket's rim stands 4 mm above the top of its contain region (z 0.141 vs 0.137)
CLEARANCE = 0.04  # carried object's bottom above the target's top
RELEASE_BELOW_RIM = 0.016  # release the hand here, below a container's rim: the hand box hits it about 2.7 cm down
ON_RELEASE_GAP = 0.015  # placing on a surface: the object's bottom this far above it when the hand opens
LIFT_ABOVE_TABLE = 0.25  # the lowest carry height of the hand above the table the object stood on
GRASP_TOLERANCE = 0.005  # descend until the hand is this close to the grasp height (1 cm let flat boxes slip)
CLOSE_STEPS, OPEN_STEPS, RETREAT_STEPS = 10, 15, 10
HAND_HALF_XY = np.array([0.032, 0.047])  # the hand's collision box around the grip site (fingers close along y)
HAND_BELOW = 0.03  # ...which reaches this far below the grip site
HAND_BOXES = (  # (middle, half-size) about the grip site, fingers closing along y: the closed fingers, the palm
    (np.array([0.0, 0.0, 0.018]), np.array([0.013, 0.025, 0.031])),
    (np.array([0.0, 0.0, 0.075]), np.array([0.039, 0.105, 0.051])),
)  # from robosuite's Panda gripper collision geoms
FINGER_OPENING = 0.075  # what fits between the open fingers (0.078 at most)
RIM_GRASP_DEPTH = 0.025  # a mug is held this far below its rim
PUSH_TILT = 0.6  # rad: the hand's tilt, fingertips forward, while it pushes a drawer shut
OPEN_AJAR = 0.05  # m short of its open limit: a drawer open at least this far, with room for the fingers inside
SLOT_SPREAD = 0.6  # several objects on one surface region: the outer ones this far out, as a share of its half-size
TIGHT_TOLERANCE = 0.002  # m: how closely the hand is aligned over a grasp with millimetres to spare
FINGER_HALF_WIDTH = 0.0125
FINGERS_OPEN_HALF = np.array([0.013, 0.068])  # the open fingers' footprint about the grip site (closing along y)
PALM_HALF, PALM_ABOVE = np.array([0.039, 0.105]), 0.024  # the palm: footprint, and its height over the grip
PLACEMENTS = ("in", "on")  # what `PickPlace` carries out; `ARTICULATIONS` (below) closes and turns on
KNOB_LEAD = 0.3  # rad: the hand turns this far ahead of the knob's joint
KNOB_MARGIN = 0.15  # rad: turned this far past the joint's "on" threshold, so noise cannot turn it back off


def _subtree_geoms(env: LiberoEnv, name: str) -> np.ndarray:
    """Ids of the geoms of a BDDL object's body subtree: its colliding ones where it has any (a mug's visual
    mesh is a box 17 cm tall around an 11 cm mug), else all."""
    model = env.sim.model._model
    bodies = {env.raw_env.obj_body_id[name]}
    for b in range(model.nbody):  # parents come before children in MuJoCo's body order
        if model.body_parentid[b] in bodies and b != 0:
            bodies.add(b)
    geoms = np.flatnonzero(np.isin(model.geom_bodyid, list(bodies)))
    colliding = geoms[(model.geom_contype[geoms] != 0) | (model.geom_conaffinity[geoms] != 0)]
    return colliding if len(colliding) else geoms


def geom_boxes(env: LiberoEnv, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned boxes (lo, hi), each (n, 3), of geoms, from their local boxes (MuJoCo's geom_aabb)."""
    model, data = env.sim.model._model, env.sim.data._data
    rotation = data.geom_xmat[geoms].reshape(-1, 3, 3)
    middle = data.geom_xpos[geoms] + np.einsum("nij,nj->ni", rotation, model.geom_aabb[geoms, :3])
    extent = np.einsum("nij,nj->ni", np.abs(rotation), model.geom_aabb[geoms, 3:])
    return middle - extent, middle + extent


def colliding_geoms(env: LiberoEnv, body: int) -> np.ndarray:
    """Ids of a body's geoms with a contact type (its solid parts; visual meshes have none)."""
    model = env.sim.model._model
    return np.flatnonzero((model.geom_bodyid == body) & (model.geom_contype != 0))


def object_bbox(env: LiberoEnv, name: str) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned bounding box (lo, hi) of a BDDL object's geoms (`_subtree_geoms`).

    Body origins are not centres (cream cheese: body z 0.0, centre 0.009), so grasp heights use this.
    """
    lo, hi = geom_boxes(env, _subtree_geoms(env, name))
    return lo.min(0), hi.max(0)


def rim_grasp(env: LiberoEnv, name: str, yaw: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Where to grasp a mug (x, y, z), and its ring's centre (x, y): on its rim, the wall across the fingers
    (they close along y, turned by `yaw`) on the side away from the handle, one finger inside the mug. The
    ring's centre is the median of the geoms' positions (the handle is a few of them); the handle is the
    geom farthest from it."""
    xy = env.sim.data._data.geom_xpos[_subtree_geoms(env, name), :2]
    centre = np.median(xy, axis=0)
    radial = np.linalg.norm(xy - centre, axis=1)
    handle = xy[np.argmax(radial)] - centre
    ring = float(np.median(radial[radial > 0.5 * radial.max()]))  # the walls' distance from the centre
    closing = np.array([-np.sin(yaw), np.cos(yaw)])
    side = -1.0 if handle @ closing > 0 else 1.0
    _, hi = object_bbox(env, name)
    return np.array([*(centre + side * ring * closing), hi[2] - RIM_GRASP_DEPTH]), centre


def hand_boxes(grip: np.ndarray, yaw: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """World boxes (lo, hi) of the closed fingers and of the palm with the grip site at `grip`, turned `yaw`."""
    c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
    boxes = []
    for middle, half in HAND_BOXES:
        turned = np.array([c * half[0] + s * half[1], s * half[0] + c * half[1], half[2]])
        boxes.append((grip + middle - turned, grip + middle + turned))
    return boxes


def lowered_spot(env: LiberoEnv, centre: np.ndarray, half: np.ndarray, held: str, release_z: float, top: float,
                 skip: set[int]) -> tuple[np.ndarray, float] | None:
    """Where a rim-held object (`rim_grasp`) can be lowered into a container, and the hand's yaw for it: the
    point of the region's box nearest its centre (2.5 mm grid) at which the object's geoms and the hand
    (closed fingers and palm, the fingers closing along y or turned 90 degrees), moved straight down from
    the carry height to the release height `release_z` of the hand, meet no colliding geom outside `skip`
    (the held object, the robot). In a drawer under two closed ones a 10.7 cm bowl has 5 mm of such room,
    between the drawer's front wall and the handles above. None if there is none."""
    model = env.sim.model._model
    geoms = np.flatnonzero(((model.geom_contype != 0) | (model.geom_conaffinity != 0))
                           & ~np.isin(model.geom_bodyid, list(skip)))
    o_lo, o_hi = geom_boxes(env, geoms)
    reach = half[:2] + 0.2  # obstacles further than this from the region cannot meet what is lowered into it
    near = np.all(o_lo[:, :2] < centre[:2] + reach, axis=1) & np.all(o_hi[:, :2] > centre[:2] - reach, axis=1)
    o_lo, o_hi = o_lo[near], o_hi[near]
    b_lo, b_hi = geom_boxes(env, _subtree_geoms(env, held))
    steps = [np.arange(-h, h + 1e-9, 0.0025) if h > 0.0025 else np.zeros(1) for h in half[:2]]
    grid = np.stack(np.meshgrid(*steps), -1).reshape(-1, 2) + centre[:2]
    grid = grid[np.argsort(np.linalg.norm(grid - centre[:2], axis=1), kind="stable")]
    for yaw in (0.0, np.pi / 2):
        grip, ring = rim_grasp(env, held, yaw)
        lift = max(float(b_lo[:, 2].min()) + LIFT_ABOVE_TABLE, grip[2] - float(b_lo[:, 2].min()) + top + CLEARANCE)
        boxes = [(lo - grip, hi - grip) for lo, hi in zip(b_lo, b_hi, strict=True)] + hand_boxes(np.zeros(3), yaw)
        rel_lo = np.array([lo for lo, _ in boxes]) + [0.0, 0.0, release_z]  # swept from the release height...
        rel_hi = np.array([hi for _, hi in boxes]) + [0.0, 0.0, lift]  # ...up to the carry height
        for start in range(0, len(grid), 256):
            grips = grid[start:start + 256] + (grip[:2] - ring)  # (n, 2)
            lo = rel_lo[None, :, :] + np.c_[grips, np.zeros(len(grips))][:, None, :]
            hi = rel_hi[None, :, :] + np.c_[grips, np.zeros(len(grips))][:, None, :]
            hit = np.all(lo[:, :, None] < o_hi[None, None], -1) & np.all(o_lo[None, None] < hi[:, :, None], -1)
            free = np.flatnonzero(~hit.any(axis=(1, 2)))
            if len(free):
                return grid[start + free[0]], yaw
    return None


def grasp_offset(lo: np.ndarray, hi: np.ndarray, grasp_z: float, others: Sequence[tuple[np.ndarray, np.ndarray]],
                 margin: float = 0.01) -> float:
    """Shift (m) of the grasp along the object's x (its long side in LIBERO's layouts) that keeps the hand's
    box clear of neighbours standing above the hand's lowest point: the smallest shift with no overlap, else
    the one with the least overlap. Up to 1.5 cm short of the object's ends; only for objects longer along x
    than across (a grasp off a can's axis closes on a narrower chord, and the can slips)."""
    size = hi[:2] - lo[:2]
    reach = max(0.0, float(size[0]) / 2 - 0.015) if size[0] > 1.4 * size[1] else 0.0
    centre = (lo[:2] + hi[:2]) / 2
    half = HAND_HALF_XY + margin
    best, best_overlap = 0.0, np.inf
    for dx in sorted(np.linspace(-reach, reach, 9), key=abs):
        hand_lo, hand_hi = centre + [dx, 0] - half, centre + [dx, 0] + half
        overlap = sum(float(np.prod(np.clip(np.minimum(hand_hi, o_hi[:2]) - np.maximum(hand_lo, o_lo[:2]), 0, None)))
                      for o_lo, o_hi in others if o_hi[2] > grasp_z - HAND_BELOW)
        if overlap < best_overlap - 1e-9:
            best, best_overlap = float(dx), overlap
        if overlap == 0:
            break
    return best


def finger_yaw(env: LiberoEnv, geoms: np.ndarray, grasp_z: float) -> float:
    """How far (rad) to turn the hand about z so the fingers (closing along y at the start) close across the
    object's thin side, where they will hold it: 0 for objects about as wide as long (cans) or already
    across; otherwise the angle of the thin side, if it fits between the open fingers (a book standing on
    its edge, diagonal on the desk). From the principal axes of the geoms' box corners in the fingers' band."""
    model, data = env.sim.model._model, env.sim.data._data
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    corners = []
    for g in geoms:
        rotation = data.geom_xmat[g].reshape(3, 3)
        pts = data.geom_xpos[g] + (model.geom_aabb[g, :3] + signs * model.geom_aabb[g, 3:]) @ rotation.T
        if pts[:, 2].max() > grasp_z - 0.01 and pts[:, 2].min() < grasp_z + 0.05:  # the fingers' band
            corners.append(pts[:, :2])
    if not corners:
        return 0.0
    xy = np.concatenate(corners)
    _, axes = np.linalg.eigh(np.cov((xy - xy.mean(0)).T))  # ascending: axes[:, 0] is the thin side
    widths = np.ptp(xy @ axes, axis=0)
    if widths[1] < 1.2 * widths[0] or widths[0] > FINGER_OPENING:
        return 0.0
    yaw = float(np.arctan2(axes[1, 0], axes[0, 0]) - np.pi / 2)  # the angle that takes y onto the thin side
    yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2  # either way round: within +-90 degrees
    return 0.0 if abs(yaw) < np.radians(15) else yaw


def band_points(env: LiberoEnv, geoms: np.ndarray, grasp_z: float, per_side: int = 6) -> np.ndarray:
    """(n, 2) xy of points filling the geoms' boxes within the fingers' band around `grasp_z`."""
    model, data = env.sim.model._model, env.sim.data._data
    steps = np.linspace(-1, 1, per_side)
    grid = np.stack(np.meshgrid(steps, steps, steps), -1).reshape(-1, 3)
    rotation = data.geom_xmat[geoms].reshape(-1, 3, 3)
    local = model.geom_aabb[geoms, None, :3] + grid[None] * model.geom_aabb[geoms, None, 3:]
    points = (data.geom_xpos[geoms, None] + np.einsum("nij,npj->npi", rotation, local)).reshape(-1, 3)
    return points[(points[:, 2] > grasp_z - 0.01) & (points[:, 2] < grasp_z + 0.05), :2]


def chord(points: np.ndarray, at: np.ndarray, yaw: float) -> tuple[float, np.ndarray]:
    """What the fingers, turned `yaw` from closing along y and centred on `at`, close on: the width of the
    points in their 2.5 cm wide strip, and that chord's middle (xy)."""
    closing, across = np.array([-np.sin(yaw), np.cos(yaw)]), np.array([np.cos(yaw), np.sin(yaw)])
    strip = (points - at)[np.abs((points - at) @ across) < FINGER_HALF_WIDTH] @ closing
    if not len(strip):
        return 0.0, np.array(at, dtype=np.float64)
    return float(np.ptp(strip)), at + closing * (strip.max() + strip.min()) / 2


def narrowest_grasp(points: np.ndarray, at: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(yaw, the chord's middle, its width) at the yaw, in 15 degree steps, where the chord through `at` is
    narrowest: a moka pot's handle and spout stick out along one axis, and its body is 7 cm across the other."""
    widths = [(chord(points, at, yaw), yaw) for yaw in np.radians(np.arange(-75, 91, 15))]
    (width, middle), yaw = min(widths, key=lambda w: (round(w[0][0], 3), abs(w[1])))
    return float(yaw), middle, width


def hand_hits(grip: np.ndarray, grasp_z: float, yaw: float, others: Sequence[tuple[np.ndarray, np.ndarray]]) -> int:
    """How many points of the hand's footprint, its open fingers and its palm (21 cm long across the fingers,
    from 2.4 cm above the grip site up), turned `yaw` with the grip site at (`grip`, `grasp_z`), fall inside
    a neighbour's box that reaches above that part's bottom."""
    turn = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    hits = 0
    for half, above in ((FINGERS_OPEN_HALF, -HAND_BELOW), (PALM_HALF, PALM_ABOVE)):
        local = np.stack(np.meshgrid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 9)), -1).reshape(-1, 2) * half
        points = grip + local @ turn.T
        for lo, hi in others:
            if hi[2] > grasp_z + above:
                hits += int(np.sum(np.all((points > lo[:2]) & (points < hi[:2]), axis=1)))
    return hits


def clear_grasp(points: np.ndarray, lo: np.ndarray, hi: np.ndarray, grasp_z: float,
                others: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, np.ndarray]:
    """The grasp (yaw, grip xy) whose hand meets neighbours least (`hand_hits`; a carton beside a flat box
    lies under the palm of the straight grasp) among those whose fingers still fit across the object
    (`chord`): the hand turned up to 60 degrees either way, and moved along the object's x up to 1.5 cm
    short of its ends. The least change wins a tie."""
    centre = (lo[:2] + hi[:2]) / 2
    reach = max(0.0, float(hi[0] - lo[0]) / 2 - 0.015)
    moves = [(float(yaw), float(dx)) for yaw in np.radians([0, 15, -15, 30, -30, 45, -45, 60, -60])
             for dx in np.linspace(-reach, reach, 9)]
    best = None
    for yaw, dx in sorted(moves, key=lambda m: abs(m[0]) / np.radians(15) + abs(m[1]) / 0.01):
        width, middle = chord(points, centre + [dx, 0.0], yaw)
        if width < FINGER_OPENING - 0.005:
            hits = hand_hits(middle, grasp_z, yaw, others)
            if best is None or hits < best[0]:
                best = (hits, yaw, middle)
            if hits == 0:
                break
    return (best[1], best[2]) if best is not None else (0.0, centre)


def plan_subgoals(goal: Sequence[tuple[str, ...]], satisfied: Sequence[bool]) -> list[tuple[str, ...]]:
    """The goal's predicates in an order that can be carried out, those already true left out: turning
    something on first (the knob before the pot goes on the stove), then placements in the file's order,
    then closing (the bowl goes into the drawer before it is closed, whatever order the BDDL lists)."""
    rank = {"turnon": 0, "in": 1, "on": 1, "close": 2}
    todo = [p for p, done in zip(goal, satisfied, strict=True) if not done]
    return sorted(todo, key=lambda p: rank.get(p[0], 1))  # sorted() is stable: the file's order within a rank


def with_drawers_opened(subgoals: Sequence[tuple[str, ...]], drawers: set[str]) -> list[tuple[str, ...]]:
    """Each placement into a drawer's region preceded by opening that drawer all the way (`OpenSlide`): a
    bowl fits between a half-open drawer's front wall and the handles above only once it is fully open."""
    out: list[tuple[str, ...]] = []
    for predicate in subgoals:
        if predicate[0] == "in" and predicate[-1] in drawers and ("open", predicate[-1]) not in out:
            out.append(("open", predicate[-1]))
        out.append(tuple(predicate))
    return out


@dataclass
class Target:
    """Where a carried object goes: over `xy`, its bottom cleared above `top` while carried, and the hand
    opened at `release_z` (the hand's height) — or, with `release_z` None, when the object's bottom is
    `ON_RELEASE_GAP` above `top` (placing on a surface)."""

    xy: np.ndarray
    top: float
    release_z: float | None
    slot_along_y: bool = False  # a narrow container long in y (a caddy's compartment): thin objects go in edgewise
    yaw: float | None = None  # where a rim-held object goes in with the hand turned (`lowered_spot`)


def body_top(env: LiberoEnv, body: int) -> float:
    """The highest point of a body's colliding geoms (inf if it has none)."""
    geoms = colliding_geoms(env, body)
    return float(geom_boxes(env, geoms)[1][:, 2].max()) if len(geoms) else float("inf")


def clear_spot(env: LiberoEnv, centre: np.ndarray, half: np.ndarray, hand_z: float, skip: set[int]) -> np.ndarray:
    """The point of a region's xy box nearest its centre where the hand's box, down to `hand_z`, meets no
    colliding geom outside the bodies in `skip` (the region's own body, the held object, the robot): an open
    drawer's region reaches under the drawer above it."""
    model = env.sim.model._model
    geoms = np.flatnonzero(((model.geom_contype != 0) | (model.geom_conaffinity != 0))
                           & ~np.isin(model.geom_bodyid, list(skip)))
    lo, hi = geom_boxes(env, geoms)
    boxes = [(a, b) for a, b in zip(lo, hi, strict=True) if b[2] > hand_z - HAND_BELOW]
    grid = [centre[:2] + half[:2] * np.array([u, v]) for u in np.linspace(-1, 1, 5) for v in np.linspace(-1, 1, 9)]
    for point in sorted(grid, key=lambda q: float(np.linalg.norm(q - centre[:2]))):
        lo, hi = point - HAND_HALF_XY - 0.01, point + HAND_HALF_XY + 0.01
        if not any(np.all(lo < b_hi[:2]) and np.all(b_lo[:2] < hi) for b_lo, b_hi in boxes):
            return point
    return np.array(centre[:2])


def place_target(env: LiberoEnv, kind: str, name: str, held: str, slot: tuple[int, int] = (0, 1),
                 rim_held: bool = False) -> Target:
    """The target of `(in OBJ name)` or `(on OBJ name)`: a region site (its box from the model) or an object.
    `slot` (k, n): this is the k-th of n placements on one surface region, which get their own places along
    the axis where the held object is narrower (two moka pots side by side on the stove). A `rim_held` object
    (a mug, a bowl) goes into a container where it and the hand can be lowered (`lowered_spot`)."""
    raw = env.raw_env
    model = raw.sim.model
    if name in raw.objects_dict or name in getattr(raw, "fixtures_dict", {}):
        lo, hi = object_bbox(env, name)
        return Target((lo[:2] + hi[:2]) / 2, float(hi[2]), None)
    site = model.site_name2id(name)
    centre, half = raw.sim.data.site_xpos[site], model.site_size[site]
    if kind == "in":  # a container: carried over its rim, released just below it, where the hand fits
        mj = env.sim.model._model
        # the rim: the region's top, or the container's own top where that is lower (a drawer's region
        # reaches up under the drawer above it)
        rim = min(float(centre[2] + half[2]) + RIM_ABOVE_REGION, body_top(env, int(mj.site_bodyid[site])))
        skip = {int(mj.site_bodyid[site]), *(int(mj.geom_bodyid[g]) for g in _subtree_geoms(env, held))}
        skip |= {b for b in range(mj.nbody) if (mj.body(b).name or "").startswith(("robot0", "gripper0", "mount0"))}
        if rim_held:
            found = lowered_spot(env, centre, half, held, rim - RELEASE_BELOW_RIM, rim,
                                 skip - {int(mj.site_bodyid[site])})
            if found is not None:
                return Target(found[0], rim, rim - RELEASE_BELOW_RIM, yaw=found[1])
        spot = clear_spot(env, centre, half, rim - RELEASE_BELOW_RIM, skip)
        return Target(spot, rim, rim - RELEASE_BELOW_RIM, slot_along_y=half[1] > 1.8 * half[0])
    xy = np.array(centre[:2])  # a surface region: set down on it
    k, n = slot
    if n > 1:
        lo, hi = object_bbox(env, held)
        axis = 0 if hi[0] - lo[0] < hi[1] - lo[1] else 1
        xy[axis] += SLOT_SPREAD * half[axis] * (2 * k - (n - 1)) / (n - 1)
    return Target(xy, float(centre[2]), None)


@dataclass(kw_only=True)
class Skill:
    """What every skill shares: the hand's pose, a position-and-orientation servo, and a phase counter."""

    env: LiberoEnv
    q0: Rotation | None = None  # the hand's orientation at the episode's start, fingers closing along y
    phase: str = "approach"
    counter: int = 0
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        # yaws are turned from the start orientation, not from where the last skill left the hand
        self.q0 = self.q0 if self.q0 is not None else self._eef_rotation()
        self.goal_rotation = self.q0  # turned about z by `finger_yaw` while approaching

    def _eef_rotation(self) -> Rotation:
        quat = self.env.raw_env._observables["robot0_eef_quat"].obs
        return Rotation.from_quat(quat)  # xyzw

    def _eef(self) -> np.ndarray:
        return np.array(self.env.raw_env._observables["robot0_eef_pos"].obs, dtype=np.float64)

    def _move(self, target: np.ndarray, gripper: float) -> np.ndarray:
        action = np.zeros(7)
        action[:3] = np.clip(GAIN * (target - self._eef()), -1, 1)
        error = (self.goal_rotation * self._eef_rotation().inv()).as_rotvec()
        action[3:6] = np.clip(ROT_GAIN * error, -1, 1)
        action[6] = gripper
        return action

    def _stalled(self, z: float) -> bool:
        self.history.append(z)
        return len(self.history) > 3 and abs(self.history[-4] - z) < 0.002

    def _next(self, phase: str) -> None:
        self.phase, self.counter, self.history = phase, 0, []

    def _thin_side_leading(self, axis: np.ndarray) -> Rotation:
        """The hand turned so its thin side (2 x 3.2 cm, across the fingers) leads along `axis`: it pushes a
        drawer flush with the one above without its palm (2 x 4.7 cm along the fingers) meeting that face."""
        return Rotation.from_euler("z", np.pi / 2 if abs(axis[1]) > abs(axis[0]) else 0.0) * self.q0

    def _come_over(self, point: np.ndarray, rotation: Rotation) -> np.ndarray:
        """Travel level, at least 15 cm above `point`, turning to `rotation`; "descend" once over it and turned."""
        eef = self._eef()
        self.goal_rotation = rotation
        above = np.array([point[0], point[1], max(eef[2], point[2] + 0.15)])
        turned = (self.goal_rotation * self._eef_rotation().inv()).magnitude() < 0.1
        if np.linalg.norm((above - eef)[:2]) < 0.01 and turned:
            self._next("descend")
        return self._move(above, 1.0)

    def _let_go(self, eef: np.ndarray) -> np.ndarray:
        """A grasping skill's last phases: "open" the hand where it is, then "retreat" upwards."""
        if self.phase == "open":
            if self.counter >= OPEN_STEPS:
                self._next("retreat")
            return self._move(eef, -1.0)
        return self._move(eef + np.array([0, 0, 0.05]), -1.0)

    @property
    def done(self) -> bool:
        return self.phase == "retreat" and self.counter >= RETREAT_STEPS

    @property
    def steady(self) -> bool:
        """No demo noise now (a grasp with millimetres to spare is being lowered onto)."""
        return False


def articulation_joint(env: LiberoEnv, name: str) -> int:
    """The joint id behind a BDDL articulated object or region (a drawer's region, a stove, a microwave)."""
    raw = env.raw_env
    joints = raw.object_sites_dict[name].joints if name in raw.object_sites_dict else raw.get_object(name).joints
    return int(env.sim.model._model.joint(joints[0]).id)


def cannot(env: LiberoEnv, predicate: tuple[str, ...], why: str) -> UserError:
    return UserError(f"the scripted expert cannot carry out {' '.join(map(str, predicate))!r} of task "
                     f"{env.spec.task_id} ({env.spec.name}): {why}")


@dataclass(kw_only=True)
class CloseSlide(Skill):
    """Close a drawer (a slide joint; LIBERO's `close` holds once the joint's position passes its close
    range): come down in front of its front face, fingers closed, and push along the joint's axis until
    the predicate holds, then back off and rise."""

    predicate: tuple[str, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.joint = articulation_joint(self.env, self.predicate[1])
        if self.env.sim.model._model.jnt_type[self.joint] != 2:  # mjJNT_SLIDE
            raise cannot(self.env, self.predicate, "it closes drawers (slide joints) only, and this is a hinged door")

    def _face(self) -> tuple[np.ndarray, np.ndarray]:
        """(the push direction, the middle of the drawer's face that the hand pushes)."""
        model, data = self.env.sim.model._model, self.env.sim.data._data
        axis = data.xaxis[self.joint] / np.linalg.norm(data.xaxis[self.joint])  # closing raises the position
        lo, hi = geom_boxes(self.env, colliding_geoms(self.env, model.jnt_bodyid[self.joint]))
        lo, hi = lo.min(0), hi.max(0)
        centre = (lo + hi) / 2
        face = centre - axis * (np.abs(axis) @ (hi - lo)) / 2
        return axis, face

    def act(self) -> np.ndarray:
        eef = self._eef()
        axis, face = self._face()
        start = face - axis * 0.06
        self.counter += 1
        if self.phase == "approach":  # level first, then down in front of the face
            # the fingertips lead, the palm tilted back: it passes under a handle above the face
            tilt = Rotation.from_rotvec(np.cross(axis, [0.0, 0.0, 1.0]) * PUSH_TILT)
            return self._come_over(start, tilt * self._thin_side_leading(axis))
        if self.phase == "descend":
            if abs(eef[2] - start[2]) < 0.01 or self.counter > 40:
                self._next("push")
            return self._move(start, 1.0)
        if self.phase == "push":
            if bool(self.env.raw_env._eval_predicate(list(self.predicate))) or self.counter > 60:
                self._next("back")
            return self._move(face + axis * 0.03, 1.0)
        if self.phase == "back":
            return self._move(eef - axis * 0.05 + np.array([0, 0, 0.03]), 1.0)
        return self._move(eef, 1.0)

    @property
    def done(self) -> bool:
        return self.phase == "back" and self.counter >= RETREAT_STEPS


@dataclass(kw_only=True)
class OpenSlide(Skill):
    """Open an ajar drawer all the way: the closed fingers come down inside it, just behind its front wall,
    the hand's thin side leading, and push the wall out along the joint's axis until the joint is within
    2 mm of its limit, then rise."""

    predicate: tuple[str, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        model = self.env.sim.model._model
        self.joint = articulation_joint(self.env, self.predicate[1])
        if model.jnt_type[self.joint] != 2 or self._position() > OPEN_AJAR + model.jnt_range[self.joint][0]:
            raise cannot(self.env, self.predicate, "it opens drawers that are already open part of the way only")
        self.limit = float(model.jnt_range[self.joint][0])  # opening lowers the position

    def _position(self) -> float:
        return float(self.env.sim.data._data.qpos[self.env.sim.model._model.jnt_qposadr[self.joint]])

    def _inside(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(the closing direction, the point just behind the front wall's inner face, the drawer floor's top)."""
        model, data = self.env.sim.model._model, self.env.sim.data._data
        axis = data.xaxis[self.joint] / np.linalg.norm(data.xaxis[self.joint])
        lo, hi = geom_boxes(self.env, colliding_geoms(self.env, model.jnt_bodyid[self.joint]))
        across = np.abs(np.cross(axis, [0.0, 0.0, 1.0]))  # the drawer's width direction
        walls = np.flatnonzero((hi - lo) @ across > 0.8 * np.ptp(np.r_[lo, hi] @ across))  # not the handle
        front = walls[np.argmin(((lo + hi) / 2)[walls] @ axis)]  # the wall farthest out
        inner = float(max(lo[front] @ axis, hi[front] @ axis))
        middle = (lo.min(0) + hi.max(0)) / 2
        point = middle + axis * (inner - middle @ axis + FINGERS_OPEN_HALF[0] + 0.01)
        floor = float(np.min(hi[walls, 2]))  # the lowest-topped wide box: the floor
        return axis, point, floor

    def act(self) -> np.ndarray:
        eef = self._eef()
        axis, point, floor = self._inside()
        start = np.array([point[0], point[1], floor + 0.03])
        self.counter += 1
        if self.phase == "approach":  # level first, then down inside, behind the front wall
            return self._come_over(start, self._thin_side_leading(axis))
        if self.phase == "descend":
            if abs(eef[2] - start[2]) < 0.01 or self._stalled(eef[2]) or self.counter > 40:
                self._next("pull")
            return self._move(start, 1.0)
        if self.phase == "pull":
            if self._position() < self.limit + 0.002 or self.counter > 40:
                self._next("back")
            return self._move(start - axis * 0.03, 1.0)
        return self._move(np.array([eef[0], eef[1], start[2] + 0.15]), 1.0)  # back: straight up

    @property
    def done(self) -> bool:
        return self.phase == "back" and self.counter >= RETREAT_STEPS


@dataclass(kw_only=True)
class TurnKnob(Skill):
    """Turn a knob on (a hinge about the vertical; LIBERO's `turnon` holds once the joint passes the low end
    of its "on" range): grasp the knob's fin across its thin side, turn the hand about the joint's axis a
    little ahead of the knob until it is past the threshold, then open and rise."""

    predicate: tuple[str, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        model = self.env.sim.model._model
        self.joint = articulation_joint(self.env, self.predicate[1])
        axis = self.env.sim.data._data.xaxis[self.joint]
        if model.jnt_type[self.joint] != 3 or abs(axis[2]) < 0.9 * np.linalg.norm(axis):  # mjJNT_HINGE, upright
            raise cannot(self.env, self.predicate, "it turns knobs on upright hinges only")
        self.geoms = colliding_geoms(self.env, model.jnt_bodyid[self.joint])
        on = self.env.raw_env.get_object(self.predicate[1]).object_properties["articulation"]["default_turnon_ranges"]
        self.on_at = float(min(on)) + KNOB_MARGIN

    def _angle(self) -> float:
        return float(self.env.sim.data._data.qpos[self.env.sim.model._model.jnt_qposadr[self.joint]])

    def act(self) -> np.ndarray:
        eef = self._eef()
        data = self.env.sim.data._data
        anchor = data.xanchor[self.joint]
        grasp_z = float(geom_boxes(self.env, self.geoms)[1][:, 2].max()) - 0.015  # the fin, above the knob's base
        grasp = np.array([anchor[0], anchor[1], grasp_z])
        self.counter += 1
        if self.phase == "approach":  # level first, then down over the joint's axis
            self.goal_rotation = Rotation.from_euler("z", finger_yaw(self.env, self.geoms, grasp_z)) * self.q0
            above = np.array([grasp[0], grasp[1], max(eef[2], grasp_z + 0.10)])
            turned = (self.goal_rotation * self._eef_rotation().inv()).magnitude() < 0.1
            if np.linalg.norm((above - eef)[:2]) < 0.01 and abs(above[2] - eef[2]) < 0.02 and turned:
                self._next("descend")
            return self._move(above, -1.0)
        if self.phase == "descend":
            if abs(eef[2] - grasp_z) < GRASP_TOLERANCE or self._stalled(eef[2]) or self.counter > 40:
                self._next("close")
            return self._move(grasp, -1.0)
        if self.phase == "close":
            if self.counter >= CLOSE_STEPS:
                self._next("turn")
                self.grasped_rotation, self.grasped_angle = self._eef_rotation(), self._angle()
            return self._move(grasp, 1.0)
        if self.phase == "turn":  # the hand leads the knob by KNOB_LEAD about the joint's axis
            axis = data.xaxis[self.joint] / np.linalg.norm(data.xaxis[self.joint])
            ahead = min(self._angle() + KNOB_LEAD, self.on_at + KNOB_LEAD) - self.grasped_angle
            self.goal_rotation = Rotation.from_rotvec(axis * ahead) * self.grasped_rotation
            if self._angle() >= self.on_at or self.counter > 60:
                self._next("open")
            return self._move(grasp, 1.0)
        return self._let_go(eef)


@dataclass(kw_only=True)
class PickPlace(Skill):
    """One pick-and-place as a phase machine over privileged state. `act()` returns the next 7-dim action."""

    object: str
    kind: str
    target_name: str
    slot: tuple[int, int] = (0, 1)  # see `place_target`
    retries: int = 0
    target: Target | None = None
    tight: bool = False  # a grasp with millimetres to spare: aligned closely, then lowered without noise

    @property
    def _hollow(self) -> bool:
        """Mugs and bowls are held by the rim (`rim_grasp`): a 10 cm bowl does not fit between the fingers."""
        return any(word in self.object for word in ("mug", "bowl"))

    def _neighbours(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [object_bbox(self.env, n) for n in self.env.raw_env.objects_dict if n != self.object]

    def act(self) -> np.ndarray:
        env, eef = self.env, self._eef()
        lo, hi = object_bbox(env, self.object)
        centre = (lo + hi) / 2
        grasp_z = max(float(centre[2]), float(lo[2]) + 0.01)
        middle = centre[:2]  # the xy that goes over the target
        if self._hollow and self.kind == "in" and self.phase == "approach" and self.counter == 0:
            # which side of the rim to hold depends on how the hand fits into the container
            self.target = place_target(env, self.kind, self.target_name, self.object, self.slot, rim_held=True)
        lowered = self._hollow and self.kind == "in" and self.target is not None and self.target.yaw is not None
        if self._hollow:  # held by the rim
            centre, middle = rim_grasp(env, self.object, self.target.yaw if lowered else 0.0)
            grasp_z = float(centre[2])
        self.counter += 1
        if self.phase == "approach":  # the grasp point is chosen while approaching (neighbours may still settle)
            geoms = _subtree_geoms(env, self.object)
            self.yaw = (self.target.yaw if lowered else 0.0) if self._hollow else finger_yaw(env, geoms, grasp_z)
            self.shift = np.zeros(2)  # of the grasp from `centre`
            self.tight = False
            if not self.yaw and not self._hollow:
                self.shift[0] = grasp_offset(lo, hi, grasp_z, self._neighbours())
                points = band_points(env, geoms, grasp_z)
                if chord(points, centre[:2], 0.0)[0] > FINGER_OPENING:  # a handle or spout under a finger
                    self.yaw, grip, _ = narrowest_grasp(points, points.mean(0))
                    self.shift, self.tight = grip - centre[:2], True
                elif hand_hits(centre[:2] + self.shift, grasp_z, 0.0, self._neighbours()):
                    self.yaw, grip = clear_grasp(points, lo, hi, grasp_z, self._neighbours())
                    self.shift = grip - centre[:2]
            self.goal_rotation = Rotation.from_euler("z", self.yaw) * self.q0
            centre[:2] += self.shift
            above = grasp_z + 0.10
            far = np.linalg.norm((centre - eef)[:2]) > 0.02  # travel level first: a diagonal drags what it passes
            target = np.array([centre[0], centre[1], max(eef[2], above) if far else above])
            turned = (self.goal_rotation * self._eef_rotation().inv()).magnitude() < (0.03 if self.tight else 0.1)
            near = TIGHT_TOLERANCE if self.tight else 0.01
            if np.linalg.norm((target - eef)[:2]) < near and abs(above - eef[2]) < 0.02 and turned:
                self._next("descend")
            return self._move(target, -1.0)
        if self.phase == "descend":
            target = np.array([*(centre[:2] + self.shift), grasp_z])
            if self.tight and np.linalg.norm((target - eef)[:2]) > TIGHT_TOLERANCE and eef[2] - HAND_BELOW < hi[2]:
                self.history = []  # the fingertips are at the object's top: align before going lower
                return self._move(np.array([target[0], target[1], eef[2]]), -1.0)
            if abs(eef[2] - grasp_z) < GRASP_TOLERANCE or self._stalled(eef[2]) or self.counter > 40:
                self._next("close")
                self.grasp_bottom = float(lo[2])
            return self._move(target, -1.0)
        if self.phase == "close":
            if self.counter >= CLOSE_STEPS:
                self._next("lift")
                if not lowered:  # (a lowered rim-held object's target was chosen before the grasp)
                    self.target = place_target(env, self.kind, self.target_name, self.object, self.slot)
                self.hold = eef[2] - self.grasp_bottom  # the hand's height above the object's bottom
                self.offset = eef[:2] - middle  # ...and its place over the object's middle
                self.lift_z = max(self.grasp_bottom + LIFT_ABOVE_TABLE, self.hold + self.target.top + CLEARANCE)
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
            if self.target.slot_along_y and self.yaw and self.counter == 1:  # thin, held across: edgewise in
                turn = np.pi / 2 if self.yaw > 0 else -np.pi / 2
                self.goal_rotation = Rotation.from_euler("z", turn) * self.q0
                self.offset = Rotation.from_euler("z", turn - self.yaw).apply([*self.offset, 0.0])[:2]
            target = np.array([*(self.target.xy + self.offset), self.lift_z])
            if np.linalg.norm((target - eef)[:2]) < 0.01:
                self._next("lower")
            return self._move(target, 1.0)
        if self.phase == "lower":
            release_z = (self.target.release_z if self.target.release_z is not None
                         else self.target.top + ON_RELEASE_GAP + self.hold)
            if self.target.slot_along_y:  # ~1 cm to spare: steer by where the object is, not where it was held
                self.offset = eef[:2] - env.position(self.object)[:2]
            if lowered:  # millimetres to spare: steer by where the ring is
                self.offset = eef[:2] - middle
            target = np.array([*(self.target.xy + self.offset), release_z])
            if eef[2] < release_z + 0.01 or self._stalled(eef[2]) or self.counter > 30:
                self._next("open")
            return self._move(target, 1.0)
        return self._let_go(eef)

    @property
    def steady(self) -> bool:
        lowered = self.target is not None and self.target.yaw is not None
        return (self.tight and self.phase in ("descend", "close")) or (lowered and self.phase in ("carry", "lower"))


ARTICULATIONS: dict[str, type[Skill]] = {"close": CloseSlide, "open": OpenSlide, "turnon": TurnKnob}


@dataclass
class GoalExpert:
    """The task's sub-goals (`plan_subgoals`) carried out one after another. `act()` gives the clean action;
    `noisy` adds the demo noise."""

    env: LiberoEnv
    noise_std: float = 0.0
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def __post_init__(self) -> None:
        self.subgoals = with_drawers_opened(plan_subgoals(self.env.goal, self.env.goal_flags()), self._drawers())
        unknown = [p for p in self.subgoals if not ((p[0] in PLACEMENTS and len(p) == 3) or p[0] in ARTICULATIONS)]
        if unknown:
            raise cannot(self.env, unknown[0], "it places objects in or on targets, closes drawers and turns knobs")
        for predicate in self.subgoals:  # a hinged door is refused now, not halfway through the episode
            if predicate[0] in ARTICULATIONS:
                ARTICULATIONS[predicate[0]](env=self.env, predicate=predicate)
        self.q0 = Rotation.from_quat(self.env.raw_env._observables["robot0_eef_quat"].obs)
        self.index = 0
        self.skill = self._skill(0)

    def _drawers(self) -> set[str]:
        """The goal's regions that are drawers (on a slide joint)."""
        raw, model = self.env.raw_env, self.env.sim.model._model
        names = {p[-1] for p in self.env.goal if p[0] == "in" and p[-1] in raw.object_sites_dict}
        return {n for n in names if raw.object_sites_dict[n].joints
                and model.jnt_type[model.joint(raw.object_sites_dict[n].joints[0]).id] == 2}

    def _skill(self, index: int) -> Skill | None:
        if index >= len(self.subgoals):
            return None
        predicate = self.subgoals[index]
        if predicate[0] in ARTICULATIONS:
            return ARTICULATIONS[predicate[0]](env=self.env, q0=self.q0, predicate=predicate)
        kind, obj, target = predicate
        sharing = [p for p in self.env.goal if p[0] == "on" and p[-1] == target]  # the file's order: slots stay put
        slot = (sharing.index(predicate), len(sharing)) if predicate in sharing else (0, 1)
        return PickPlace(env=self.env, q0=self.q0, object=obj, kind=kind, target_name=target, slot=slot)

    def act(self) -> np.ndarray:
        if self.skill is not None and self.skill.done:
            self.index += 1
            self.skill = self._skill(self.index)
        if self.skill is None:
            return np.zeros(7) + np.array([0, 0, 0, 0, 0, 0, -1.0])  # all done: hold still, hand open
        return self.skill.act()

    @property
    def done(self) -> bool:
        return self.skill is None or (self.index == len(self.subgoals) - 1 and self.skill.done)

    def noisy(self, action: np.ndarray) -> np.ndarray:
        """Gaussian noise on the pose dims (diversity for imitation), gripper untouched."""
        out = action.copy()
        if self.noise_std > 0 and not (self.skill is not None and self.skill.steady):
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
    """One expert episode from `init_state`; records through the last release (LIBERO's success fires while
    the object is still held above the basket) and stops after the last retreat or at the step limit. It
    succeeds if the goal held at some step, as LIBERO's `done` (a book held into the caddy's compartment is
    "in" it; resting on the compartment's floor its origin is 4 mm below the region's box)."""
    obs = env.reset(init_state)
    expert = GoalExpert(env, noise_std, np.random.default_rng([seed, env.spec.task_id, init_state]))
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
        demo.success = demo.success or success  # LIBERO's rule: the goal held at some step (an eval ends there)
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
