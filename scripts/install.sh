#!/usr/bin/env bash
# One install script for every runtime: `make`, CI, the Dockerfile and apptainer.def all call it.
#   scripts/install.sh [VENV_DIR]     (default .venv; VENV_DIR=system installs into the current python)
# As root on Debian/Ubuntu it also installs the system libraries (EGL/Mesa for headless MuJoCo).
# Settings: GRPO_VLA_EXTRAS (default dev; empty for a runtime-only install, as the images do);
# GRPO_VLA_SITE_CA=FILE, a CA bundle pip trusts (sites whose proxy intercepts TLS; used if the file exists);
# GRPO_VLA_PURGE_BUILD_DEPS=1, see below.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${GRPO_VLA_VENV:-$here/.venv}}"
python="${PYTHON:-python3.11}"

# Three dependencies have no wheel and compile: evdev (lerobot -> pynput; the kernel's input headers)
# and egl-probe / hf-egl-probe (LIBERO; CMake and a C++ compiler).
# GRPO_VLA_PURGE_BUILD_DEPS=1 (the container builds) removes the build tools this script added, afterwards.
build_deps="gcc g++ make cmake libc6-dev linux-libc-dev libegl-dev"
added_build_deps=""
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  pkgs="libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libglib2.0-0 libosmesa6 $build_deps"
  missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  for p in $build_deps; do case " $missing " in *" $p "*) added_build_deps="$added_build_deps $p";; esac; done
  if [ -n "$missing" ]; then
    echo "install.sh: apt-get install$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
  fi
fi

if [ "$venv" = system ]; then
  pip="$python -m pip"
else
  if [ ! -x "$venv/bin/python" ]; then
    command -v "$python" >/dev/null || { echo "install.sh: $python not found (grpo-vla needs Python 3.11)" >&2; exit 1; }
    "$python" -m venv "$venv"
  fi
  pip="$venv/bin/python -m pip"
fi

if [ -n "${GRPO_VLA_SITE_CA:-}" ] && [ -s "$GRPO_VLA_SITE_CA" ]; then
  export PIP_CERT="$GRPO_VLA_SITE_CA"
  echo "install.sh: pip trusts the CA bundle $GRPO_VLA_SITE_CA"
fi
extras="${GRPO_VLA_EXTRAS-dev}"
# Exact pins (constraints.txt) make every install resolve the same; lerobot's own pins stay authoritative.
$pip install -q -c "$here/constraints.txt" -e "$here${extras:+[$extras]}"
$pip check
if [ "${GRPO_VLA_PURGE_BUILD_DEPS:-0}" = 1 ] && [ -n "$added_build_deps" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --auto-remove $added_build_deps >/dev/null
  rm -rf /var/lib/apt/lists/*
  echo "install.sh: removed the build tools again:$added_build_deps"
fi
echo "install.sh: ok ($($pip --version | cut -d' ' -f1-2), grpo-vla in ${venv})"
