# grpo-vla runtime: thin over scripts/install.sh (the script CI runs).
#   docker build -t grpo-vla .
#   docker run --gpus all -v /path/to/libero/assets:/assets -e GRPO_VLA_LIBERO_ASSETS=/assets grpo-vla eval --help
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV MUJOCO_GL=egl PYOPENGL_PLATFORM=egl TOKENIZERS_PARALLELISM=false \
    LIBERO_CONFIG_PATH=/opt/libero-config HF_HOME=/opt/hf-cache GRPO_VLA_CACHE=/opt/grpo-vla-cache \
    PYTHON=python3.11 PATH=/opt/venv/bin:$PATH

WORKDIR /opt/grpo-vla
# Dependency layer first: changes to the source do not reinstall torch.
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/install.sh scripts/install.sh
COPY grpo_cli/__init__.py grpo_cli/__init__.py
RUN bash scripts/install.sh /opt/venv
COPY . .
RUN /opt/venv/bin/pip install -q --no-deps -e . \
 && /opt/venv/bin/python -c "from grpo_cli.policies.offline_vlm import write_tiny_vlm; write_tiny_vlm('/opt/grpo-vla-cache/tiny-smolvlm')" \
 && /opt/venv/bin/python -c "from pathlib import Path; from grpo_cli.envs.libero import write_libero_config; write_libero_config(Path('/opt/libero-config'))" \
 && chmod -R a+rX /opt/libero-config && chmod -R a+rwX /opt/grpo-vla-cache \
 && grpo-vla --help

RUN useradd --create-home grpo
USER grpo
ENTRYPOINT ["grpo-vla"]
