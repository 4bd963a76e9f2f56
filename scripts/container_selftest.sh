#!/usr/bin/env bash
# The containers' self-test (Apptainer `%test`, `make image-test`, `make sif-test`): inside the image, on
# its read-only file system, a real LIBERO eval with the tiny policy (LIBERO-10 task 0, three short
# episodes, EGL: llvmpipe on a CPU node, the GPU with `--nv`). Everything it writes goes to OUT_DIR.
#   container_selftest.sh [OUT_DIR]      (default $TMPDIR/grpo-vla-selftest; LIBERO's assets: bind them
#                                         and set GRPO_VLA_LIBERO_ASSETS; without them only the install
#                                         is checked, and the script says so)
set -euo pipefail
out="${1:-${TMPDIR:-/tmp}/grpo-vla-selftest}"
mkdir -p "$out"
cd "$out"  # MuJoCo writes its warnings log into the working directory: never into the image
test -f "${LIBERO_CONFIG_PATH:?}/config.yaml"  # written at build time, read-only at run time
grpo-vla --help >/dev/null
if [ -z "${GRPO_VLA_LIBERO_ASSETS:-}" ]; then
  echo "selftest: install ok; LIBERO eval skipped (no assets bound: set GRPO_VLA_LIBERO_ASSETS)"
  exit 0
fi
grpo-vla eval --policy tiny --suite libero_10 --tasks 0 --episodes-per-task 3 --max-steps 40 \
  --image-size 64 --out "$out/selftest_eval.h5" --overwrite
python -c "import h5py, sys; f = h5py.File(sys.argv[1]); print('selftest: renderers', f.attrs['renderers'])" \
  "$out/selftest_eval.h5"
echo "selftest: ok (wrote $out/selftest_eval.h5)"
