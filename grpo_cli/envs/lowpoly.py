"""The low-poly scene (`GRPO_VLA_SCENE=lowpoly`): LIBERO's physics to the bit, visual meshes decimated.

On a CPU, software GL pays per triangle drawn (~0.5 ms per 1000 for two 64 px frames here): LIBERO-Object
task 2 draws ~300k triangles (1.03M vertices), most in visual-only meshes (contype = conaffinity = 0) that a
64 px camera cannot resolve. Here each visual-only mesh above `FACE_BUDGET` triangles is replaced by a quadric
decimation of itself (`fast-simplification`, UVs carried through its vertex map). Physics is kept exact:
- every body's inertial is first set explicitly to what the full scene compiles to, since MuJoCo can infer
  mass and inertia from geoms, visual ones included;
- only meshes that no colliding geom uses change; collision geoms, joints, actuators are untouched.
Decimations are cached on disk, keyed by the mesh's content and the budget, in a writable per-user folder
(GRPO_VLA_CACHE, else ~/.cache/grpo-vla, else the temp dir), so a second env build does no decimation and
read-only installs work.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from grpo_cli.envs.cache import first_writable_folder

FACE_BUDGET = 300
"""triangles of a decimated visual-only mesh up to 20 cm across (a robot link, an object); a larger one
(a table, a kitchen wall) gets this many per 20 cm, up to 8 times as many (`mesh_budget`)"""
CACHE_VERSION = "fast-simplification-0.2.0-agg7-welded-faces-clustered-v5"  # in every cache key


def cache_folder() -> Path:
    """The first writable of $GRPO_VLA_CACHE/lowpoly, ~/.cache/grpo-vla/lowpoly, $TMPDIR/grpo-vla-UID/lowpoly."""
    candidates = [Path(os.environ["GRPO_VLA_CACHE"]) / "lowpoly"] if os.environ.get("GRPO_VLA_CACHE") else []
    candidates += [Path.home() / ".cache" / "grpo-vla" / "lowpoly",
                   Path(tempfile.gettempdir()) / f"grpo-vla-{os.getuid()}" / "lowpoly"]
    folder = first_writable_folder(candidates)
    if folder is not None:
        return folder
    raise OSError("no writable cache folder for the low-poly scene: set GRPO_VLA_CACHE")


def mesh_budget(extent: float, budget: int = FACE_BUDGET) -> int:
    """Triangles for a visual mesh `extent` metres across: a table fills more of the image than a can."""
    return int(min(8 * budget, budget * max(1.0, extent / 0.2)))


def decimate(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None, budget: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A triangle mesh cut to at most ~`budget` triangles. vertices (V, 3), faces (F, 3), uv (V, 2) per vertex
    or None -> the same for the smaller mesh; each new vertex keeps the UV of an original vertex merged into it.
    Quadric decimation first; where it stalls, vertex clustering finishes the cut."""
    # Weld vertices at the same position first: some LIBERO meshes (.msh) are triangle soups, three vertices
    # of their own per face, which no edge collapse can reduce. A welded vertex keeps its first UV.
    vertices, first, welded = np.unique(vertices.astype(np.float64), axis=0, return_index=True, return_inverse=True)
    faces = welded.reshape(-1)[faces].astype(np.int64)
    uv = uv[first] if uv is not None else None
    points, faces_out, uv = _quadric(vertices, faces, uv, budget)
    if len(faces_out) > 2 * budget:
        # Quadric decimation refuses collapses that flip a neighbouring triangle, so meshes of many thin parts
        # (LIBERO-10's kitchen background: 69,764 triangles, stuck at 15,277) keep most of their triangles.
        # Clustering to a finer grid merges the thin parts; quadric decimation then places the last cut.
        points, faces_out, uv = cluster(points, faces_out, uv, 4 * budget)
        points, faces_out, uv = _quadric(points, faces_out, uv, budget)
    if len(faces_out) > 2 * budget:  # stalled again: the budget's own grid
        points, faces_out, uv = cluster(points, faces_out, uv, budget)
    return points.astype(np.float32), faces_out.astype(np.int32), uv


def _quadric(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None, budget: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    import fast_simplification

    points, new_faces, collapses = fast_simplification.simplify(
        vertices, faces, target_reduction=max(0.0, 1 - budget / len(faces)), return_collapses=True)
    new_uv = None
    if uv is not None:  # each new vertex keeps the UV of one that collapsed into it
        _, _, mapping = fast_simplification.replay_simplification(vertices, faces, collapses)
        new_uv = np.zeros((len(points), 2), dtype=np.float32)
        new_uv[mapping] = uv
    return points, new_faces, new_uv


def cluster(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None, budget: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vertex clustering (Rossignac and Borrel): vertices in one cell of a uniform grid become their mean,
    triangles left with fewer than three corners go. The cell is the smallest (of a bisection over 24
    halvings) that leaves at most `budget` triangles. Same arrays in and out as `decimate`."""
    low, extent = vertices.min(0), float(np.ptp(vertices, 0).max()) or 1.0

    def merge(cell: float) -> tuple[np.ndarray, np.ndarray]:
        _, members = np.unique(np.floor((vertices - low) / cell).astype(np.int64), axis=0, return_inverse=True)
        merged = members.reshape(-1)[faces]
        kept = merged[(merged[:, 0] != merged[:, 1]) & (merged[:, 1] != merged[:, 2]) & (merged[:, 0] != merged[:, 2])]
        _, unique_rows = np.unique(np.sort(kept, axis=1), axis=0, return_index=True)  # a face twice: once
        return members.reshape(-1), kept[np.sort(unique_rows)]

    small, large = 0.0, extent  # one cell of the whole extent leaves no triangle: always within budget
    for _ in range(24):
        middle = (small + large) / 2
        small, large = (middle, large) if len(merge(middle)[1]) > budget else (small, middle)
    members, kept = merge(large)
    # renumber to the clusters that triangles still use
    used, new_faces = np.unique(kept, return_inverse=True)
    counts = np.bincount(members, minlength=members.max() + 1)[used][:, None]
    points = np.stack([np.bincount(members, weights=vertices[:, k])[used] for k in range(3)], axis=1) / counts
    new_uv = None
    if uv is not None:
        first = np.full(members.max() + 1, -1)
        first[members[::-1]] = np.arange(len(members))[::-1]  # each cluster's first original vertex
        new_uv = uv[first[used]]
    return points, new_faces.reshape(-1, 3), new_uv


def cached_decimation(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None, budget: int
                      ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray | None], bool]:
    """`decimate`, from the cache when this mesh was decimated before; returns (mesh, computed now)."""
    key = hashlib.sha1(CACHE_VERSION.encode() + str(budget).encode())
    for array in (vertices, faces, uv):
        if array is not None:
            key.update(np.ascontiguousarray(array).tobytes())
    path = cache_folder() / f"{key.hexdigest()}.npz"
    if path.is_file():
        with np.load(path) as f:
            return (f["vertices"], f["faces"], f["uv"] if "uv" in f else None), False
    mesh = decimate(vertices, faces, uv, budget)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")  # concurrent env workers: rename, atomic
    with os.fdopen(fd, "wb") as out:
        np.savez(out, vertices=mesh[0], faces=mesh[1], **({"uv": mesh[2]} if mesh[2] is not None else {}))
    os.replace(tmp, path)
    return mesh, True


def compile_lowpoly(spec: Any, full: Any, budget: int = FACE_BUDGET) -> Any:
    """The low-poly model of `spec` (an MjSpec) whose full compile is `full`; edits `spec`.

    Past physics, what code reads of a geom stays as in `full`: MuJoCo places a mesh in its own inertial frame
    and moves its geoms to match, so a decimated mesh would move its geoms' frames and bounding boxes (the
    scripted expert reads those for grasp heights). Each decimated mesh is put back into the frame of the
    mesh it replaces, and its geoms get their full-scene pos, quat and bounds."""
    import mujoco

    replaced = lowpoly(spec, full, budget)[1]
    model = spec.compile()
    # MuJoCo sizes a rotational dof (its "length") from its bodies' geoms, visual ones included
    model.dof_length[:] = full.dof_length
    for name in replaced:
        f, m = full.mesh(name).id, model.mesh(name).id
        rotations = []
        for quat in (model.mesh_quat[m], full.mesh_quat[f]):
            matrix = np.zeros(9)
            mujoco.mju_quat2Mat(matrix, quat)
            rotations.append(matrix.reshape(3, 3))
        low_to_full = rotations[0].T @ rotations[1]  # row vectors: x_full = x_low R_low^T R_full (+ shift)
        va, vn = model.mesh_vertadr[m], model.mesh_vertnum[m]
        na, nn = model.mesh_normaladr[m], model.mesh_normalnum[m]
        shift = (model.mesh_pos[m] - full.mesh_pos[f]) @ rotations[1]
        model.mesh_vert[va:va + vn] = model.mesh_vert[va:va + vn] @ low_to_full + shift
        model.mesh_normal[na:na + nn] = model.mesh_normal[na:na + nn] @ low_to_full
        model.mesh_pos[m], model.mesh_quat[m] = full.mesh_pos[f], full.mesh_quat[f]
        geoms = np.flatnonzero((model.geom_dataid == m) & (model.geom_type == mujoco.mjtGeom.mjGEOM_MESH))
        for field in ("geom_pos", "geom_quat", "geom_aabb", "geom_rbound", "geom_size"):
            getattr(model, field)[geoms] = getattr(full, field)[geoms]
    return model


def lowpoly(spec: Any, model: Any, budget: int = FACE_BUDGET) -> tuple[int, list[str]]:
    """Edit `spec` (an MjSpec) in place so that it compiles to the low-poly scene of `model` (its full
    compile): inertials frozen, visual-only meshes above their `mesh_budget` decimated. Returns how many
    meshes were
    decimated now (0 when every one came from the cache) and the names of the meshes replaced."""
    import mujoco

    for body in spec.bodies[1:]:  # the world body has no inertial
        compiled = model.body(body.name)
        body.explicitinertial = True
        body.mass, body.ipos = float(compiled.mass[0]), compiled.ipos.copy()
        body.iquat, body.inertia = compiled.iquat.copy(), compiled.inertia.copy()
    mesh_geoms = [g for g in range(model.ngeom) if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH]
    colliding = {int(model.geom_dataid[g]) for g in mesh_geoms
                 if model.geom_contype[g] != 0 or model.geom_conaffinity[g] != 0}
    computed, replaced = 0, []
    for mesh in list(spec.meshes):
        i = model.mesh(mesh.name).id
        if i in colliding or model.mesh_facenum[i] <= budget:
            continue
        va, vn = model.mesh_vertadr[i], model.mesh_vertnum[i]
        fa, fn = model.mesh_faceadr[i], model.mesh_facenum[i]
        rotation = np.zeros(9)
        mujoco.mju_quat2Mat(rotation, model.mesh_quat[i])
        # compiled vertices are in the mesh's inertial frame: back to the asset's frame, where the geom's
        # own pos and quat place them (MuJoCo recentres the decimated mesh and moves the geom to match)
        vertices = model.mesh_vert[va:va + vn].astype(np.float64) @ rotation.reshape(3, 3).T + model.mesh_pos[i]
        faces = model.mesh_face[fa:fa + fn]
        ta, tn = model.mesh_texcoordadr[i], model.mesh_texcoordnum[i]
        per_vertex_uv = tn == vn and ta >= 0 and np.array_equal(model.mesh_facetexcoord[fa:fa + fn], faces)
        uv = model.mesh_texcoord[ta:ta + tn] if per_vertex_uv else None
        size = float(np.ptp(vertices, 0).max())
        if model.mesh_facenum[i] <= mesh_budget(size, budget):
            continue
        (points, new_faces, new_uv), now = cached_decimation(vertices, faces, uv, mesh_budget(size, budget))
        computed += now
        # A new mesh of the same name: a mesh loaded from a .msh file keeps that file's normals inside the
        # spec, which would no longer match the new faces. MuJoCo computes the new mesh's normals.
        name, material = mesh.name, mesh.material
        replaced.append(name)
        spec.delete(mesh)
        small = spec.add_mesh()
        small.name, small.material = name, material
        small.uservert = points.reshape(-1).tolist()
        small.userface = new_faces.reshape(-1).tolist()
        if new_uv is not None:
            small.usertexcoord = new_uv.reshape(-1).tolist()
            small.userfacetexcoord = new_faces.reshape(-1).tolist()
    return computed, replaced


def physics_arrays(model: Any) -> dict[str, np.ndarray]:
    """Every array of a compiled model that the simulation or our code reads, by name: all of them but the
    meshes, textures, materials and names (drawing only), with the data of the meshes that collide; the
    global options and the statistics the solver uses. Equal for `lean` and `lowpoly` (tested)."""
    import mujoco

    drawing = ("mesh_", "tex_", "mat_", "skin_", "name_", "names", "paths", "geom_", "flex_", "bvh_", "oct_")
    arrays = {name: getattr(model, name) for name in dir(model)
              if not name.startswith(("_", *drawing)) and isinstance(getattr(model, name), np.ndarray)}
    colliding = (model.geom_contype != 0) | (model.geom_conaffinity != 0)
    non_mesh = model.geom_type != mujoco.mjtGeom.mjGEOM_MESH
    for name in dir(model):  # geom_dataid: the meshes are renumbered, their data is compared below
        if name.startswith("geom_") and name != "geom_dataid" and isinstance(getattr(model, name), np.ndarray):
            arrays[name] = getattr(model, name)
    for g in np.flatnonzero(colliding & ~non_mesh):
        i = model.geom_dataid[g]
        va, vn, fa, fn = model.mesh_vertadr[i], model.mesh_vertnum[i], model.mesh_faceadr[i], model.mesh_facenum[i]
        arrays[f"mesh of geom {g}"] = np.concatenate([model.mesh_vert[va:va + vn].ravel(),
                                                      model.mesh_face[fa:fa + fn].ravel(), model.mesh_pos[i],
                                                      model.mesh_quat[i], model.mesh_scale[i]])
    arrays["opt"] = np.array([getattr(model.opt, f) for f in ("timestep", "impratio", "tolerance", "noslip_tolerance")])
    arrays["stat"] = np.array([model.stat.meaninertia, model.stat.meanmass])
    return arrays
