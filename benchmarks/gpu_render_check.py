"""Which GL renderer MuJoCo's EGL gets on this machine, and how fast it renders, per EGL device.

    MUJOCO_GL=egl PYOPENGL_PLATFORM=egl python benchmarks/gpu_render_check.py [--out render.json]

For each EGL device (and for the one grpo-vla's `egl_device` picks from CUDA_VISIBLE_DEVICES): the GL
vendor / renderer / version string an env would log and record, and the time of a 256 x 256 frame of a
small scene (median of 50 after 5 warm-up). On a CPU-only machine this is Mesa's llvmpipe; on a GPU
node it should name the GPU. No LIBERO needed: MuJoCo and PyOpenGL only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

SCENE = """<mujoco><worldbody><light pos="0 0 3"/><geom type="plane" size="2 2 .1" rgba=".8 .8 .8 1"/>
{bodies}<camera name="cam" pos="0 -2.5 1.5" xyaxes="1 0 0 0 .5 .87"/></worldbody></mujoco>"""


def gl_renderer() -> str:  # the same query as grpo_cli.envs.libero.gl_renderer
    from OpenGL import GL

    return " / ".join(GL.glGetString(n).decode(errors="replace") for n in (GL.GL_VENDOR, GL.GL_RENDERER, GL.GL_VERSION))


def measure(device: int | None) -> dict[str, object]:
    if device is not None:
        os.environ["MUJOCO_EGL_DEVICE_ID"] = str(device)
    grid = np.linspace(-1, 1, 8)
    bodies = "".join(f'<body pos="{x:.2f} {y:.2f} .3"><freejoint/><geom type="box" size=".08 .08 .08" '
                     f'rgba="{x % 1:.2f} .4 .6 1"/></body>' for x in grid for y in grid)
    model = mujoco.MjModel.from_xml_string(SCENE.format(bodies=bodies))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    renderer = mujoco.Renderer(model, 256, 256)  # makes its EGL context current
    name = gl_renderer()
    times = []
    for i in range(55):
        mujoco.mj_step(model, data)
        start = time.perf_counter()
        renderer.update_scene(data, camera="cam")
        frame = renderer.render()
        if i >= 5:
            times.append(time.perf_counter() - start)
    renderer.close()
    return {"device": device, "renderer": name, "frame_ms": 1000 * float(np.median(times)),
            "mean_pixel": float(frame.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from mujoco.egl import egl_ext as EGL

    count = len(EGL.eglQueryDevicesEXT())
    result: dict[str, object] = {"egl_devices": count, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                 "date": time.strftime("%Y-%m-%d"), "rows": []}
    try:
        from grpo_cli.envs.libero import egl_device

        result["picked_for_worker_0"] = egl_device(0, os.environ.get("CUDA_VISIBLE_DEVICES"), count)
    except Exception as err:  # noqa: BLE001 - recorded: the check runs without grpo-vla's dependencies too
        result["picked_for_worker_0"] = f"{type(err).__name__}: {err}"
    print(f"{count} EGL device(s); CUDA_VISIBLE_DEVICES={result['cuda_visible_devices']}; "
          f"egl_device(worker 0) = {result['picked_for_worker_0']}", flush=True)
    here = os.path.dirname(os.path.abspath(__file__))
    for device in range(count):  # each in a fresh process: MuJoCo's EGL display is per process
        code = f"import json, sys; sys.path.insert(0, {here!r}); import gpu_render_check as g; " \
               f"print(json.dumps(g.measure({device})))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
        row = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else
               {"device": device, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]})
        result["rows"].append(row)  # type: ignore[union-attr]
        print(row, flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
