"""The low-poly scene (issue 39): decimation within budget, LIBERO's physics to the bit, a cache that is reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from grpo_cli.envs import lowpoly
from grpo_cli.envs.libero import LiberoEnv, task_spec


def _sphere(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A closed UV sphere of 2 n (n - 1) triangles."""
    theta, phi = np.meshgrid(np.linspace(0, np.pi, n + 1)[1:-1], np.linspace(0, 2 * np.pi, n, endpoint=False),
                             indexing="ij")
    ring = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1).reshape(-1, 3)
    vertices = np.concatenate([ring, [[0, 0, 1], [0, 0, -1]]])
    top, bottom = len(ring), len(ring) + 1
    faces = []
    for i in range(n - 1):
        for j in range(n):
            a, b = i * n + j, i * n + (j + 1) % n
            if i == 0:
                faces.append([top, a, b])
            if i == n - 2:
                faces.append([bottom, b, a])
            else:
                c, d = a + n, b + n
                faces += [[a, c, b], [b, c, d]]
    return vertices, np.array(faces)


def _soup(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same mesh as LIBERO's .msh files hold it: three vertices of its own per triangle."""
    return vertices[faces.reshape(-1)], np.arange(3 * len(faces)).reshape(-1, 3)


def _check_cut(before: tuple, after: tuple, budget: int) -> None:
    (vertices, _, uv), (points, faces, new_uv) = before, after
    assert 0 < len(faces) <= 2 * budget and faces.min() >= 0 and faces.max() < len(points)
    assert new_uv is not None and len(new_uv) == len(points)
    assert {tuple(x) for x in new_uv} <= {tuple(x) for x in uv.astype(np.float32)}  # each UV an original one
    slack = 0.02 * np.ptp(vertices, 0).max()  # quadric decimation places a merged vertex where error is least
    assert (points.min(0) >= vertices.min(0) - slack).all() and (points.max(0) <= vertices.max(0) + slack).all()


def test_decimate_welds_a_triangle_soup_and_cuts_it_to_the_budget() -> None:
    vertices, faces = _soup(*_sphere(60))  # 7,080 triangles, 21,240 vertices
    uv = np.round(vertices[:, :2], 3)  # a UV per vertex, equal where positions are
    after = lowpoly.decimate(vertices, faces, uv, 300)
    _check_cut((vertices, faces, uv), after, 300)
    assert len(after[0]) < 300  # a closed mesh of F triangles has about F / 2 vertices


def test_decimate_falls_back_to_clustering_where_edge_collapse_stalls() -> None:
    # 400 separate thin slivers, as LIBERO-10's kitchen background is built: quadric decimation stalls
    rng = np.random.default_rng(0)
    parts = []
    for k in range(400):
        v, f = _sphere(8)
        parts.append((v * [0.002, 0.05, 0.002] + rng.uniform(-1, 1, 3), f + 58 * k))
    vertices, faces = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    uv = rng.uniform(0, 1, (len(vertices), 2))
    import fast_simplification

    stalled = fast_simplification.simplify(vertices, faces, target_count=300)[1]
    assert len(stalled) > 2 * 300  # the case this covers
    _check_cut((vertices, faces, uv), lowpoly.decimate(vertices, faces, uv, 300), 300)


def test_cache_folder_falls_back_to_a_writable_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GRPO_VLA_CACHE", str(tmp_path / "cache"))
    assert lowpoly.cache_folder() == tmp_path / "cache" / "lowpoly"
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("GRPO_VLA_CACHE", str(tmp_path / "file"))  # a read-only install's unusable setting
    monkeypatch.setenv("HOME", str(tmp_path / "file"))
    assert lowpoly.cache_folder().name == "lowpoly" and lowpoly.cache_folder().is_dir()
    assert not str(lowpoly.cache_folder()).startswith(str(tmp_path))


def _physics(suite: str, task: int) -> tuple[dict, int, int]:
    env = LiberoEnv(task_spec(suite, task), images=False)
    try:
        model = env.sim.model._model
        return ({k: np.array(v) for k, v in lowpoly.physics_arrays(model).items()}, int(model.nmeshface),
                int(model.nmesh))
    finally:
        env.close()


@pytest.mark.slow
def test_lowpoly_model_has_leans_physics_and_reuses_its_decimations(tmp_path: Path, monkeypatch) -> None:
    """Every physical array of the compiled model equals the lean scene's; the second build of the scene
    decimates nothing (decimate raises) and gives the same model."""
    monkeypatch.setenv("GRPO_VLA_CACHE", str(tmp_path))
    monkeypatch.setenv("GRPO_VLA_SCENE", "lean")
    lean, lean_faces, lean_meshes = _physics("libero_10", 3)
    calls = []
    decimate = lowpoly.decimate
    monkeypatch.setattr(lowpoly, "decimate", lambda *a: calls.append(1) or decimate(*a))
    monkeypatch.setenv("GRPO_VLA_SCENE", "lowpoly")
    first, faces, meshes = _physics("libero_10", 3)
    cached = sorted((tmp_path / "lowpoly").glob("*.npz"))
    assert len(calls) == len(cached) > 10 and meshes == lean_meshes and faces < lean_faces / 10

    def refuse(*_):
        raise AssertionError("decimated again: the cache was not used")

    monkeypatch.setattr(lowpoly, "decimate", refuse)
    second, _, _ = _physics("libero_10", 3)
    assert sorted((tmp_path / "lowpoly").glob("*.npz")) == cached
    assert lean.keys() == first.keys() == second.keys() and len(lean) > 250
    for name in lean:
        np.testing.assert_array_equal(first[name], lean[name], err_msg=name)
        np.testing.assert_array_equal(second[name], lean[name], err_msg=name)
