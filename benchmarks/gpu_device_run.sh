#!/usr/bin/env bash
# One prepared run of benchmarks/gpu_smolvla.py on a lent GPU machine whose image lacks lerobot 0.4.4's
# pins (../shared/design/gpu-notes.md): the wheels in WHEELS (default .whl) go into a private site folder
# that wins over the image's newer packages. Results are written to OUT as they come.
#   bash benchmarks/gpu_device_run.sh [OUT]      (OUT defaults to $OUT, then runs/gpu)
set -uo pipefail
out="${1:-${OUT:-runs/gpu}}"
wheels="${WHEELS:-.whl}"
mkdir -p "$out"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 --version; python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} 2>&1 | tee "$out/machine.txt"
site=/tmp/grpo-site
pip install -q --no-index --no-deps --target "$site" "$wheels"/*.whl 2>&1 | tail -3
export PYTHONPATH="$site:$PWD" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 benchmarks/gpu_smolvla.py --device cuda --groups "${GROUPS_:-1,6,16,64}" --dtypes "${DTYPES:-bf16,fp32}" \
  --out "$out/gpu_smolvla.json" 2>&1 | tee "$out/gpu_smolvla.log"
# The renderer check: MuJoCo's EGL on every device of the node (wheels in WHEELS_EGL, default .whl-egl;
# its lib/ holds libglvnd's libEGL.so.1, libOpenGL.so.0, libGL.so.1, libGLX.so.0, libGLdispatch.so.0 from
# Debian's libegl1 etc., which the GPU image lacks: it has only NVIDIA's vendor library)
pip install -q --no-index --no-deps --target /tmp/grpo-egl "${WHEELS_EGL:-.whl-egl}"/*.whl 2>&1 | tail -3
LD_LIBRARY_PATH="$PWD/${WHEELS_EGL:-.whl-egl}/lib:${LD_LIBRARY_PATH:-}" PYTHONPATH="/tmp/grpo-egl:$PWD" MUJOCO_GL=egl PYOPENGL_PLATFORM=egl python3 benchmarks/gpu_render_check.py \
  --out "$out/gpu_render_check.json" 2>&1 | tee "$out/gpu_render_check.log"
