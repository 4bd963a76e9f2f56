"""LIBERO environments, offline and in lerobot's conventions, rendering only when the policy looks.

Conventions (lerobot's LIBERO env + `LiberoProcessorStep`, which SmolVLA checkpoints were trained on):
- cameras `agentview_image` -> `observation.images.image`, `robot0_eye_in_hand_image` ->
  `observation.images.image2`, both rotated by 180 degrees; uint8 (H, W, 3);
- `observation.state` (8,) = eef position (3) + eef axis-angle (3) + gripper qpos (2), float32;
- actions (7,) in [-1, 1]: OSC_POSE deltas + gripper (-1 open, +1 close);
- after `set_init_state`, 10 no-op steps let objects settle; max steps per suite as lerobot's.

Construction is lazy and belongs inside the worker process that steps the env (EGL contexts do not
survive fork; use the spawn start method). `configure_libero()` must run before anything imports
`libero.libero`: it writes LIBERO's config yaml so the import never prompts on stdin.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import logging
import os
import pickle
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from grpo_cli.envs.cache import first_writable_folder
from grpo_cli.errors import UserError

ASSETS_ENV_VAR = "GRPO_VLA_LIBERO_ASSETS"
ARENA_ENV_VAR = "GRPO_VLA_MUJOCO_ARENA_MB"
"""MuJoCo's arena (contacts, constraints, solver stack) per env, in MiB; unset: LIBERO's own size. LIBERO
compiles robosuite's `<size nconmax="5000" njmax="5000"/>`, a 1,272 MiB arena of which its scenes use
~9 MiB; but MuJoCo 3.8 does not touch the unused part, so it costs address space, not resident memory
(docs/NOTEBOOK.md, "Memory per env"). A smaller one suits sites that limit virtual memory (`ulimit -v`)."""
SUITES = ("libero_10", "libero_spatial", "libero_object", "libero_goal", "libero_90")
# lerobot.envs.libero.TASK_SUITE_MAX_STEPS (copied so that listing suites needs no LIBERO import).
SUITE_MAX_STEPS = {"libero_spatial": 280, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                   "libero_90": 400}
NUM_SETTLE_STEPS = 10
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
CAMERAS = {"agentview_image": "observation.images.image",
           "robot0_eye_in_hand_image": "observation.images.image2"}
STATE_KEY = "observation.state"
ACTION_DIM = 7
STATE_DIM = 8
PRIVILEGED_STATE_DIM = STATE_DIM + 6
"""robot state + world positions of the first goal predicate's object and its target (object or region)"""


@cache
def write_libero_config(config_dir: Path) -> Path:
    """Write LIBERO's `config.yaml` into config_dir unless one is there (container builds call this, so
    the read-only image needs no first-use write); it points at the installed package's BDDL and
    init-state files. Returns the file."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("LIBERO is not installed: run `make install` (it installs hf-libero)")
    package_root = Path(next(iter(spec.submodule_search_locations))) / "libero"
    config_file = config_dir / "config.yaml"
    if not config_file.exists():
        config_dir.mkdir(parents=True, exist_ok=True)
        paths = {"benchmark_root": str(package_root), "bddl_files": str(package_root / "bddl_files"),
                 "init_states": str(package_root / "init_files"),
                 "datasets": str(package_root.parent / "datasets"), "assets": str(package_root / "assets")}
        # Several workers may start at once: write a temp file, then rename (atomic).
        fd, tmp = tempfile.mkstemp(dir=config_dir, suffix=".yaml.tmp")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(paths, f)
        os.replace(tmp, config_file)
    return config_file


def numba_cache_dir(package_dir: Path, candidates: list[Path]) -> Path | None:
    """Where numba should cache robosuite's compiled functions: None (beside the source, numba's default)
    when that folder is writable, else the first candidate folder that can be made writable."""
    if os.access(package_dir, os.W_OK):
        return None
    return first_writable_folder(candidates)


def _writable_numba_cache() -> None:
    """robosuite compiles with numba's `cache=True`, which writes beside robosuite's source; in a read-only
    install (an Apptainer image, a shared site venv) every env then fails with "cannot cache function
    ...: no locator available". Point $NUMBA_CACHE_DIR at a writable per-user folder (before numba loads)."""
    spec = importlib.util.find_spec("robosuite")
    if "NUMBA_CACHE_DIR" in os.environ or spec is None or not spec.submodule_search_locations:
        return
    candidates = [Path.home() / ".cache" / "grpo-vla" / "numba",
                  Path(tempfile.gettempdir()) / f"grpo-vla-{os.getuid()}" / "numba"]
    folder = numba_cache_dir(Path(next(iter(spec.submodule_search_locations))) / "utils", candidates)
    if folder is not None:
        os.environ["NUMBA_CACHE_DIR"] = str(folder)


def configure_libero(assets: str | None = None, require_assets: bool = True) -> Path | None:
    """Make `import libero.libero` work offline and non-interactively; return the assets folder.

    Writes `config.yaml` into `$LIBERO_CONFIG_PATH` (default: a grpo-vla cache folder) unless one is
    there, pointing at the installed package's BDDL and init-state files. The assets come from
    `assets`, else `$GRPO_VLA_LIBERO_ASSETS`, else LIBERO's own lookup (its package folder, then a hub
    download) for users with network. `require_assets=False`: task metadata only (names, instructions,
    init states), which need no assets; nothing is looked up or downloaded (returns None).
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        # submitit's CPU-only jobs hide GPUs with an empty list, which robosuite's EGL set-up cannot parse
        del os.environ["CUDA_VISIBLE_DEVICES"]
    check_gl_backend()
    _writable_numba_cache()
    write_libero_config(Path(os.environ.setdefault(
        "LIBERO_CONFIG_PATH", str(Path.home() / ".cache" / "grpo-vla" / "libero"))))

    if not require_assets:
        logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
        import libero.libero  # noqa: F401 - with the config written, the import asks nothing

        return None
    assets = assets or os.environ.get(ASSETS_ENV_VAR) or None
    if assets is not None:
        assets_path = Path(assets).expanduser().resolve()
        if not (assets_path / "scenes").is_dir():
            raise UserError(f"LIBERO assets not found in {assets_path} (expected a 'scenes' folder): point "
                            f"{ASSETS_ENV_VAR} at LIBERO's assets folder, or unset it to let LIBERO "
                            "download them from the Hugging Face hub")
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)  # "no private macro file" at import
    import libero.libero as libero_pkg

    if assets is not None:
        libero_pkg._assets_path_cache = str(assets_path)  # its yaml key is ignored; this is the hook
        return assets_path
    found = Path(libero_pkg.get_assets_path())
    if not (found / "scenes").is_dir():
        raise UserError(f"LIBERO assets not found (looked in {found}; the hub is unreachable): set "
                        f"{ASSETS_ENV_VAR} to a folder holding LIBERO's assets")
    return found


@dataclass(frozen=True)
class TaskSpec:
    """One LIBERO task, resolved from a suite name and an index."""

    suite: str
    task_id: int
    name: str
    language: str
    bddl_file: str
    init_states_file: str
    num_init_states: int
    max_steps: int


def _benchmark(suite: str) -> Any:
    if suite not in SUITES:
        raise UserError(f"unknown LIBERO suite {suite!r}; choose one of {', '.join(SUITES)}")
    configure_libero(require_assets=False)
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):  # LIBERO prints its task order on every call
        return benchmark.get_benchmark_dict()[suite]()


def num_tasks(suite: str) -> int:
    return _benchmark(suite).get_num_tasks()


def task_spec(suite: str, task_id: int) -> TaskSpec:
    """Resolve a task by index (an int or a decimal string) or by its LIBERO name."""
    bench = _benchmark(suite)
    names = bench.get_task_names()
    if isinstance(task_id, str) and not task_id.isdigit():
        if task_id not in names:
            raise UserError(f"unknown task {task_id!r} in {suite} (it has tasks 0..{len(names) - 1})")
        task_id = names.index(task_id)
    task_id = int(task_id)
    if not 0 <= task_id < len(names):
        raise UserError(f"task {task_id} is out of range: {suite} has tasks 0..{len(names) - 1}")
    from libero.libero import get_libero_path

    task = bench.get_task(task_id)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    init_file = os.path.join(get_libero_path("init_states"), task.problem_folder, task.init_states_file)
    return TaskSpec(suite=suite, task_id=task_id, name=task.name, language=task.language, bddl_file=bddl,
                    init_states_file=init_file, num_init_states=len(read_init_states(init_file)),
                    max_steps=SUITE_MAX_STEPS[suite])


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: no code from the file runs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a numpy array")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever it lives
        return getattr(np, name) if module == "numpy" else super().find_class(module, name)


def read_init_states(path: str) -> np.ndarray:
    """A task's fixed initial MuJoCo states (num_init_states, state_dim), without torch.

    LIBERO stores them with `torch.save` as a numpy array inside torch's zip format, and reads them with
    `torch.load`; importing torch for that costs each env worker process ~470 MiB of RSS. The array's
    pickle holds only numpy objects, so it is read here from the zip with an unpickler that allows
    nothing else (the same array, tested)."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        return np.asarray(_ArrayUnpickler(io.BytesIO(archive.read(name))).load())


def load_init_states(spec: TaskSpec) -> np.ndarray:
    """The task's fixed initial MuJoCo states, (num_init_states, state_dim)."""
    return read_init_states(spec.init_states_file)


def scene_seed(suite: str, task_id: int, init_state: int) -> int:
    """The seed of LIBERO's scene sampling for one episode, a pure function of (suite, task, init state).

    LIBERO re-places fixtures (cabinets, racks, stoves) at every reset from numpy's global random state;
    an init state sets only qpos/qvel. LIBERO's own evaluation seeds the env before resetting it; so do we,
    so that an episode's scene is the same in any process, worker count or shard."""
    return int(np.random.SeedSequence([zlib.crc32(suite.encode()), task_id, init_state]).generate_state(1)[0])


def arena_mb() -> int | None:
    """The arena size to compile with, from $GRPO_VLA_MUJOCO_ARENA_MB (MiB); None keeps LIBERO's own."""
    value = os.environ.get(ARENA_ENV_VAR, "").strip()
    if not value or value.lower() == "libero":
        return None
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"bad {ARENA_ENV_VAR}={value!r}: give MuJoCo's arena size in MiB, or unset it for "
                        "LIBERO's own (njmax/nconmax 5000)")
    return int(value)


def sized_problem_class(problem: type, memory_mb: int) -> type:
    """A LIBERO problem class whose model compiles with `<size memory="...M">` in place of robosuite's
    njmax/nconmax 5000. Nothing else of the model changes: same bodies, geoms, solver and physics."""

    class Sized(problem):  # type: ignore[misc, valid-type]
        def _load_model(self) -> None:
            super()._load_model()
            size = self.model.root.find("size")
            if size is None:
                size = self.model.root.makeelement("size", {})
                self.model.root.insert(0, size)
            for key in ("nconmax", "njmax", "nstack"):
                size.attrib.pop(key, None)
            size.set("memory", f"{memory_mb}M")

    Sized.__name__ = Sized.__qualname__ = problem.__name__  # LIBERO checks the class name against the BDDL
    return Sized


@contextlib.contextmanager
def _arena(problem_name: str, memory_mb: int | None):
    """While LIBERO builds an env, its registry maps the task's problem class to the sized one."""
    from libero.libero.envs.bddl_base_domain import TASK_MAPPING

    if memory_mb is None:
        yield
        return
    original = TASK_MAPPING[problem_name]
    TASK_MAPPING[problem_name] = sized_problem_class(original, memory_mb)
    try:
        yield
    finally:
        TASK_MAPPING[problem_name] = original


SCENE_ENV_VAR = "GRPO_VLA_SCENE"
"""`lean` (default), `libero` or `lowpoly`. All three compile LIBERO's scene to the same physics. `lean` uploads
less to the renderer: textures that are exact copies of another (same file, same type: LIBERO-10 task 0 loads
its 2000 px table texture as two cube maps) are uploaded once, and the 4096 px shadow map is not allocated
when no light casts shadows. Frames and states are bit-identical to `libero`'s (tests/test_reproducibility.py
and benchmarks/scene_sameness.py), which renders LIBERO's model as compiled, texture for texture. `lowpoly`
is `lean` with decimated visual meshes (envs/lowpoly.py): the same states, other images, cheaper frames on a
CPU; files record the scene, and `sft` refuses to mix scenes."""
SCENES = ("lean", "libero", "lowpoly")


def scene_look(scene: str) -> str:
    """What the cameras see in a scene mode: `lowpoly` images, or LIBERO's (`lean` renders LIBERO's to the bit;
    "", a file from before scenes were recorded or an imported result, had LIBERO's)."""
    return "lowpoly" if scene == "lowpoly" else "libero"


def scene_mode() -> str:
    value = os.environ.get(SCENE_ENV_VAR, "").strip().lower() or "lean"
    if value not in SCENES:
        raise UserError(f"bad {SCENE_ENV_VAR}={value!r}: choose lean (the default), libero or lowpoly")
    return value


def merge_duplicate_textures(xml: str) -> str:
    """The scene XML with each `<texture>` that repeats another's attributes (all but its name) dropped
    and its materials pointed at the first; the XML unchanged when there is no such copy."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    for asset in root.iter("asset"):
        for texture in list(asset.findall("texture")):
            key = tuple(sorted((k, v) for k, v in texture.attrib.items() if k != "name"))
            name = texture.get("name")
            if name is None or key not in first:
                first.setdefault(key, name)
                continue
            alias[name] = first[key]
            asset.remove(texture)
    if not alias:
        return xml
    for element in root.iter():
        if element.tag in ("material", "layer") and element.get("texture") in alias:
            element.set("texture", alias[element.get("texture")])
    return ET.tostring(root, encoding="unicode")


def release_freed_memory() -> None:
    """Return the pages malloc keeps after large frees to the OS (glibc's `malloc_trim`; elsewhere nothing)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def compile_scene(xml: str, scene: str) -> Any:
    """MuJoCo model of a scene XML, compiled through an `MjSpec` that is freed right after: MuJoCo's
    `MjModel.from_xml_string` keeps the decoded meshes and textures (~400 MiB for LIBERO-10 task 0)
    for the life of the process. The model is byte-identical to `from_xml_string`'s (tested).
    scene: `libero`, `lean` or `lowpoly` (SCENE_ENV_VAR)."""
    import mujoco

    lean = scene != "libero"
    spec = mujoco.MjSpec.from_string(merge_duplicate_textures(xml) if lean else xml)
    model = spec.compile()
    if scene == "lowpoly":
        from grpo_cli.envs.lowpoly import compile_lowpoly

        model = compile_lowpoly(spec, model)
    del spec
    release_freed_memory()  # else the freed spec stays resident and the renderer's buffers come on top
    if lean and not model.light_castshadow.any():
        model.vis.quality.shadowsize = 0  # no light casts a shadow: the shadow map would never be drawn
    return model


@contextlib.contextmanager
def _scene_compiler(scene: str):
    """While LIBERO builds an env, robosuite's `MjSim.from_xml_string` compiles with `compile_scene`."""
    from robosuite.utils.binding_utils import MjSim

    original = MjSim.__dict__["from_xml_string"]
    MjSim.from_xml_string = classmethod(lambda cls, xml: cls(compile_scene(xml, scene)))
    try:
        yield
    finally:
        MjSim.from_xml_string = original


RENDER_ENV_VAR = "GRPO_VLA_RENDER"
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "swiftshader")


def gl_renderer() -> str:
    """'vendor / renderer / version' of the current GL context, e.g. 'Mesa/X.org / llvmpipe (LLVM 15.0.6, 256 bits)
    / 4.5 (Compatibility Profile) Mesa 22.3.6' (CPU) or 'NVIDIA Corporation / NVIDIA H200/PCIe/SSE2 / ...'."""
    from OpenGL import GL

    return " / ".join(GL.glGetString(name).decode(errors="replace")
                      for name in (GL.GL_VENDOR, GL.GL_RENDERER, GL.GL_VERSION))


def require_gpu_rendering() -> bool:
    """$GRPO_VLA_RENDER: `gpu` makes a software (CPU) renderer an error; `any` (default) accepts it."""
    value = os.environ.get(RENDER_ENV_VAR, "any").strip().lower() or "any"
    if value not in ("any", "gpu"):
        raise UserError(f"bad {RENDER_ENV_VAR}={value!r}: use `gpu` (a CPU fallback is an error) or `any`")
    return value == "gpu"


def egl_device(worker: int, visible: str | None, num_devices: int) -> int | None:
    """The EGL device that env worker `worker` renders on: the GPUs SLURM / CUDA_VISIBLE_DEVICES gave the
    job (`visible`, e.g. '2,3'), round-robin over workers; None when no GPU is assigned (MuJoCo's default).
    NVIDIA's EGL lists the GPUs in the order of their physical CUDA ids, which CUDA_VISIBLE_DEVICES holds."""
    if not visible or not visible.strip():
        return None
    try:
        ids = [int(x) for x in visible.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"CUDA_VISIBLE_DEVICES={visible!r} holds GPU UUIDs, which cannot be mapped to EGL "
                        "devices: set MUJOCO_EGL_DEVICE_ID to an EGL device number") from None
    device = ids[worker % len(ids)]
    if not 0 <= device < num_devices:
        raise UserError(f"GPU {device} (CUDA_VISIBLE_DEVICES={visible}) is not among the {num_devices} EGL "
                        f"device(s) of this node: check the job's GPUs or set MUJOCO_EGL_DEVICE_ID")
    return device


def check_gl_backend() -> None:
    """MuJoCo loads its GL backend ($MUJOCO_GL) at import; a GPU image without libglvnd's libEGL.so.1
    fails there with PyOpenGL's AttributeError, which names nothing a user can act on."""
    try:
        import mujoco  # noqa: F401
    except (AttributeError, ImportError, RuntimeError) as err:
        backend = os.environ.get("MUJOCO_GL", "egl")
        raise UserError(f"MuJoCo cannot load its GL backend MUJOCO_GL={backend} ({type(err).__name__}: {err}): "
                        "for egl install libglvnd's libEGL.so.1 (Debian: libegl1), or set MUJOCO_GL=osmesa") from None


def _egl_device_count() -> int:
    from mujoco.egl import egl_ext as EGL

    return len(EGL.eglQueryDevicesEXT())


class ArenaFull(UserError):
    """MuJoCo ran out of arena for contacts or constraints: it would drop them, so the episode stops."""


class RenderError(RuntimeError):
    """A camera frame that is not a valid render (its GL objects are gone): it must not reach the policy."""


def render_gl_objects(context: Any) -> list[tuple[Any, int]]:
    """The GL objects a MuJoCo render context (robosuite's MjRenderContext) renders with and that exist
    in the current GL context, as (glIs* check, name): framebuffers, renderbuffers, textures, display lists.

    Taken when the env is built and checked after each render (`gl_objects_intact`): an object freed
    under another env's context (robosuite frees in `__del__`, in whatever context is current) leaves
    renders of black frames with coloured streaks, or another camera's image."""
    from OpenGL import GL  # PyOpenGL comes with robosuite; imported late, after MUJOCO_GL picks the platform

    con = context.con
    names = [(GL.glIsFramebuffer, con.offFBO), (GL.glIsFramebuffer, con.offFBO_r),
             (GL.glIsRenderbuffer, con.offColor), (GL.glIsRenderbuffer, con.offColor_r),
             (GL.glIsRenderbuffer, con.offDepthStencil), (GL.glIsRenderbuffer, con.offDepthStencil_r)]
    names += [(GL.glIsTexture, int(t)) for t in con.texture[:con.ntexture]]
    # MuJoCo reserves a range of display-list names and defines only some (meshes with geometry)
    names += [(GL.glIsList, base + i) for base, size in ((con.baseMesh, con.rangeMesh), (con.basePlane, con.rangePlane),
                                                          (con.baseHField, con.rangeHField),
                                                          (con.baseBuiltin, con.rangeBuiltin)) for i in range(size)]
    return [(is_object, name) for is_object, name in names if name and is_object(name)]


def gl_objects_intact(objects: list[tuple[Any, int]]) -> bool:
    """True when the last render raised no GL error and every object of `render_gl_objects` still exists
    in the current GL context (a render into a deleted framebuffer leaves INVALID_FRAMEBUFFER_OPERATION)."""
    from OpenGL import GL, error

    if GL.glGetError() != GL.GL_NO_ERROR:
        return False
    try:
        return all(is_object(name) for is_object, name in objects)
    except error.GLError:
        return False


def free_render_context(context: Any) -> None:
    """Free a render context's GL objects inside its own GL context, then the context itself. robosuite
    leaves this to `MjRenderContext.__del__`, which runs whenever the garbage collector gets to it, under
    whatever context is current then: another env's, whose objects carry the same names (issue 30)."""
    import mujoco

    context.gl_ctx.make_current()
    context.con.free()
    context.con = mujoco.MjrContext()  # empty: robosuite's later __del__ frees nothing
    context.gl_ctx.free()


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) of a unit quaternion (x, y, z, w), as lerobot's LIBERO processor computes it."""
    w = float(np.clip(quat_xyzw[3], -1.0, 1.0))
    den = np.sqrt(max(1.0 - w * w, 0.0))
    if den <= 1e-10:
        return np.zeros(3, dtype=np.float32)
    return (quat_xyzw[:3] / den * 2.0 * np.arccos(w)).astype(np.float32)


class LiberoEnv:
    """One LIBERO task scene that renders its cameras only on steps whose observation is read.

    robosuite samples camera observables during `step()` (at the first physics substep of a control
    step). Disabling them skips rendering; re-enabling them with the sampling phase copied from an
    always-on low-dim observable yields images bit-identical to rendering every step.
    """

    def __init__(self, spec: TaskSpec, image_size: int = 256, images: bool = True,
                 render_every_step: bool = False, hard_reset: bool = False, privileged_state: bool = False,
                 worker: int = 0):
        configure_libero()
        from libero.libero.envs import OffScreenRenderEnv

        self.spec = spec
        self.images = images
        self.render_every_step = render_every_step and images
        self.hard_reset = hard_reset
        self.privileged_state = privileged_state
        import mujoco
        from libero.libero.envs.bddl_utils import get_problem_info

        # MuJoCo keeps decoded meshes and textures in a process-wide cache (500 MiB) to speed up
        # recompiles; an env compiles its scene once (soft resets), so the cache only holds ~350 MiB
        # of RSS per env process. Compiled models are the same without it (tested).
        mujoco.mj_setCacheCapacity(mujoco.mj_getCache(), 0)
        self.arena_mb = arena_mb()
        device = None
        if images and os.environ.get("MUJOCO_GL", "egl") == "egl" and "MUJOCO_EGL_DEVICE_ID" not in os.environ:
            device = egl_device(worker, os.environ.get("CUDA_VISIBLE_DEVICES"), _egl_device_count())
        self.scene = scene_mode()
        with _arena(get_problem_info(spec.bddl_file)["problem_name"], self.arena_mb), \
                _scene_compiler(self.scene):
            self._env = OffScreenRenderEnv(bddl_file_name=spec.bddl_file, camera_heights=image_size,
                                           camera_widths=image_size, hard_reset=hard_reset,
                                           use_camera_obs=images, render_gpu_device_id=-1 if device is None else device)
        self._init_states = load_init_states(spec)
        self._raw = self._env.env
        self._cameras = [self._raw._observables[name] for name in CAMERAS] if images else []
        self._clock = self._raw._observables["robot0_eef_pos"]
        self._gl_objects: list[tuple[Any, int]] = []
        self._gl_con = None
        self.renderer = "none (no cameras)"
        if images:  # the render context exists from construction on; its objects are all alive now
            self._claim_gl_context()
            self._gl_con, self._gl_objects = self._render_context.con, render_gl_objects(self._render_context)
            self.renderer = gl_renderer()
            if require_gpu_rendering() and any(name in self.renderer.lower() for name in SOFTWARE_RENDERERS):
                self.close()
                raise UserError(f"{RENDER_ENV_VAR}=gpu, but the cameras render on the CPU ({self.renderer}): "
                                "run on a node with a GPU and its EGL driver (Apptainer: --nv), or unset it")
        self._env.seed(scene_seed(spec.suite, spec.task_id, 0))
        self._env.reset()
        self.steps = 0
        self.goal = [tuple(str(x) for x in p) for p in self._raw.parsed_problem["goal_state"]]
        self._start_satisfied: list[bool] = []
        self._start_distance: list[float] = []
        self._start_target: np.ndarray | None = None
        self._closest_reach: list[float] = []  # per goal predicate: the gripper's closest approach (m)

    # --- rendering control -------------------------------------------------------------------------
    def _set_cameras(self, on: bool) -> None:
        for cam in self._cameras:
            if cam.is_enabled() == on:
                continue
            cam.set_enabled(on)  # also resets the observable's sampling clock
            if on:
                # Copy the sampling phase so the frame is taken exactly when always-render takes it.
                cam._time_since_last_sample = self._clock._time_since_last_sample
                cam._sampled = self._clock._sampled
                cam._current_delay = self._clock._current_delay

    def _observation(self, raw: dict[str, np.ndarray], with_images: bool) -> dict[str, np.ndarray]:
        state = np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                                raw["robot0_gripper_qpos"]]).astype(np.float32)
        if self.privileged_state:
            state = np.concatenate([state, self.goal_positions()]).astype(np.float32)
        obs = {STATE_KEY: state}
        if with_images:
            for name, key in CAMERAS.items():
                obs[key] = np.ascontiguousarray(raw[name][::-1, ::-1])  # lerobot's 180 degree rotation
        return obs

    def _claim_gl_context(self) -> None:
        """Make this env's offscreen GL context current before it renders: closing any other env in
        this process releases the thread's current context (robosuite's EGL teardown), and a render
        without one returns garbage images, quickly (tested)."""
        context = self._render_context
        if context is not None:
            context.gl_ctx.make_current()

    @property
    def _render_context(self) -> Any:
        sim = getattr(self._raw, "sim", None)
        return getattr(sim, "_render_context_offscreen", None)

    def _check_arena(self) -> None:
        """MuJoCo drops contacts or constraints that do not fit its arena and only counts a warning:
        turn that into an error that names the setting."""
        import mujoco

        warnings = self.sim.data._data.warning
        full = [name for name, kind in (("contacts", mujoco.mjtWarning.mjWARN_CONTACTFULL),
                                        ("constraints", mujoco.mjtWarning.mjWARN_CNSTRFULL))
                if warnings[kind].number > 0]
        if full:
            size = f"{self.arena_mb} MiB" if self.arena_mb else "LIBERO's own size, 1,272 MiB"
            raise ArenaFull(f"task {self.spec.task_id} of {self.spec.suite}: MuJoCo's arena ({size}) is full, "
                            f"{' and '.join(full)} would be dropped: set {ARENA_ENV_VAR} to more MiB")

    def _check_frames(self, raw: dict[str, np.ndarray]) -> None:
        """Fail loudly on a frame that is not a valid render (RenderError), before the policy sees it."""
        context = self._render_context
        if context is not None and context.con is not self._gl_con:  # robosuite rebuilt it, larger
            self._gl_con, self._gl_objects = context.con, render_gl_objects(context)
        if not gl_objects_intact(self._gl_objects):
            raise RenderError(f"task {self.spec.task_id} of {self.spec.suite}: the camera frames are not valid "
                              "renders (the env's GL objects were freed under another context)")
        frames = [raw[name] for name in CAMERAS]
        if len(frames) == 2 and np.array_equal(frames[0], frames[1]):
            raise RenderError(f"task {self.spec.task_id} of {self.spec.suite}: both cameras returned the same "
                              "image, which is not a valid render")

    # --- episode API -------------------------------------------------------------------------------
    def reset(self, init_state: int) -> dict[str, np.ndarray]:
        """Reset to fixed init state `init_state`, settle with no-ops, return the first observation."""
        if not 0 <= init_state < len(self._init_states):
            raise UserError(f"init state {init_state} is out of range: task {self.spec.task_id} of "
                            f"{self.spec.suite} has init states 0..{len(self._init_states) - 1}")
        self._set_cameras(False)
        if self.hard_reset:
            self._free_render_context()  # the hard reset rebuilds the sim and drops this context
        self._env.seed(scene_seed(self.spec.suite, self.spec.task_id, init_state))
        with _scene_compiler(self.scene):  # a hard reset recompiles the scene
            self._env.reset()
        self._env.set_init_state(self._init_states[init_state])
        # A soft reset keeps state that a hard reset (which rebuilds the model) starts from zero: the
        # Panda gripper's integrated command and MuJoCo's solver warm-start. Zero both so that soft and
        # hard resets give the same trajectory.
        for robot in self._env.robots:
            robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)
        self.sim.data.qacc_warmstart[:] = 0
        self.steps = 0
        for i in range(NUM_SETTLE_STEPS):
            obs, _, _, _ = self.step(NOOP_ACTION, render=i == NUM_SETTLE_STEPS - 1, count=False)
        self._start_satisfied = self.goal_flags()
        self._start_distance = [self._goal_distance(p) for p in self.goal]
        target = self.goal[0][1] if len(self.goal[0]) > 1 else None
        self._start_target = self.position(target) if target in self._raw.objects_dict else None
        self._closest_reach = [self._reach_distance(p) for p in self.goal]
        return obs

    def step(self, action: np.ndarray, render: bool = True, count: bool = True
             ) -> tuple[dict[str, np.ndarray], float, bool, dict[str, Any]]:
        """Apply one 7-dim action; images are in the observation only when `render` is true.

        Returns (obs, reward, success, info). `success` is LIBERO's goal check after this step.
        """
        look = self.images and (render or self.render_every_step)
        renders = look or self.render_every_step
        self._set_cameras(renders)
        if renders:
            self._claim_gl_context()
        raw, reward, _, info = self._env.step(np.asarray(action, dtype=np.float64))
        self._check_arena()
        if look:
            self._check_frames(raw)
        if count:
            self.steps += 1
            self._closest_reach = [min(c, self._reach_distance(p, raw["robot0_eef_pos"]))
                                   for c, p in zip(self._closest_reach, self.goal, strict=True)]
        return self._observation(raw, look), float(reward), bool(self._env.check_success()), info

    def success(self) -> bool:
        return bool(self._env.check_success())

    # --- privileged information: goal predicates and object poses ---------------------------------
    def position(self, name: str) -> np.ndarray:
        """World position (3,) of a BDDL object, fixture or region site."""
        return np.array(self._raw.object_states_dict[name].get_geom_state()["pos"], dtype=np.float64)

    def goal_positions(self) -> np.ndarray:
        """(6,): positions of the first goal predicate's two arguments (the object twice for unary ones)."""
        args = self.goal[0][1:3] if len(self.goal[0]) > 2 else self.goal[0][1:2] * 2
        return np.concatenate([self.position(a) for a in args]).astype(np.float32)

    def target_displacement(self) -> float:
        """How far (m) the first goal predicate's object has moved since reset; inf when it is not a movable
        object (a fixture, e.g. a stove to turn on), so stall rules never fire on such tasks."""
        if self._start_target is None:
            return float("inf")
        return float(np.linalg.norm(self.position(self.goal[0][1]) - self._start_target))

    def goal_flags(self) -> list[bool]:
        """Which of the BDDL goal predicates hold now."""
        return [bool(self._raw._eval_predicate(list(p))) for p in self.goal]

    def _goal_distance(self, predicate: tuple[str, ...]) -> float:
        if len(predicate) < 3:
            return float("nan")
        return float(np.linalg.norm(self.position(predicate[1]) - self.position(predicate[2])))

    def _reach_distance(self, predicate: tuple[str, ...], eef: np.ndarray | None = None) -> float:
        """Gripper-to-object distance (m) for a predicate whose first argument is a movable object, else inf."""
        if len(predicate) < 2 or predicate[1] not in self._raw.objects_dict:
            return float("inf")
        if eef is None:
            eef = self._raw._observables["robot0_eef_pos"].obs
        return float(np.linalg.norm(self.position(predicate[1]) - np.asarray(eef)))

    def progress(self, shaping: float = 0.0, reach: float = 0.0) -> float:
        """Dense progress in [0, 1]: the share of goal predicates satisfied now.

        Predicates that already held after reset are left out (LIBERO-10 task 8 starts with the stove
        on), unless all did. With `shaping` > 0 an unsatisfied binary predicate earns up to `shaping`
        for bringing its object closer to its target than at the start: shaping * (1 - d / d_start).
        With `reach` > 0 it also earns reach * (1 - tanh(10 d_reach)) for the closest the gripper came
        to the predicate's object during the episode (robosuite's reaching reward): a missed grasp
        leaves the object where it was, so only this term ranks the near misses among such failures.
        """
        flags = self.goal_flags()
        keep = [i for i, done in enumerate(self._start_satisfied) if not done] or list(range(len(flags)))
        score = 0.0
        for i in keep:
            if flags[i]:
                score += 1.0
            elif shaping > 0 and np.isfinite(self._start_distance[i]) and self._start_distance[i] > 0:
                closer = 1.0 - self._goal_distance(self.goal[i]) / self._start_distance[i]
                score += shaping * float(np.clip(closer, 0.0, 1.0))
            if not flags[i] and reach > 0 and np.isfinite(self._closest_reach[i]):
                score += reach * float(1.0 - np.tanh(10.0 * self._closest_reach[i]))
        return score / len(keep)

    @property
    def sim(self) -> Any:
        return self._env.sim

    @property
    def raw_env(self) -> Any:
        """The underlying LIBERO/robosuite env (BDDL predicates, object poses)."""
        return self._raw

    def _free_render_context(self) -> None:
        context = self._render_context
        if context is not None and getattr(context.gl_ctx, "_context", None):
            free_render_context(context)
            self._raw.sim._render_context_offscreen = None

    def close(self) -> None:
        self._free_render_context()
        self._env.close()
