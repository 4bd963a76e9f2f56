# grpo-vla runtime image, thin over scripts/install.sh (the script CI runs). From a clean checkout:
#   make image                                   (docker or podman; SITE_CA=/path/ca.pem behind a TLS proxy)
#   make image-test LIBERO_ASSETS=/path/to/libero/assets    (the self-test: a LIBERO eval inside, read-only)
#   docker run --rm --gpus all -v /path/to/assets:/assets:ro -e GRPO_VLA_LIBERO_ASSETS=/assets \
#       -v "$PWD:/work" -w /work grpo-vla eval --policy tiny --out /work/eval.h5
# The build context is only what .dockerignore lets through (the package, not .venv or run outputs).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV MUJOCO_GL=egl PYOPENGL_PLATFORM=egl TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 \
    LIBERO_CONFIG_PATH=/opt/libero-config GRPO_VLA_CACHE=/opt/grpo-vla-cache \
    PYTHON=python3.11 PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib MESA_SHADER_CACHE_DISABLE=true

WORKDIR /opt/grpo-vla
# Dependency layer first: changes to the source do not reinstall torch. A site CA bundle (build-time only,
# never in a layer): `--secret id=site_ca,src=ca.pem`, which `make image SITE_CA=ca.pem` passes.
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/install.sh scripts/container_selftest.sh scripts/
COPY grpo_cli/__init__.py grpo_cli/__init__.py
RUN --mount=type=secret,id=site_ca \
    GRPO_VLA_SITE_CA=/run/secrets/site_ca GRPO_VLA_EXTRAS= GRPO_VLA_PURGE_BUILD_DEPS=1 \
    bash scripts/install.sh /opt/venv
COPY grpo_cli/ grpo_cli/
RUN /opt/venv/bin/pip install -q --no-deps --no-build-isolation -e . \
 && /opt/venv/bin/python -c "from grpo_cli.policies.offline_vlm import write_tiny_vlm; write_tiny_vlm('/opt/grpo-vla-cache/tiny-smolvlm')" \
 && /opt/venv/bin/python -c "from pathlib import Path; from grpo_cli.envs.libero import write_libero_config; write_libero_config(Path('/opt/libero-config'))" \
 && chmod -R a+rX /opt/libero-config /opt/grpo-vla-cache \
 && grpo-vla --help >/dev/null

RUN useradd --create-home grpo
USER grpo
ENTRYPOINT ["grpo-vla"]
