# Two commands do all set-up on a fresh Debian/Ubuntu box: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests and CI read LIBERO's scene assets from the shared folder beside the checkout.
SHARED_ASSETS := $(abspath ../shared/libero/assets)
export GRPO_VLA_LIBERO_ASSETS ?= $(if $(wildcard $(SHARED_ASSETS)),$(SHARED_ASSETS),)
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
DEMO_OUT ?= demo-out
GRPO := $(VENV)/bin/grpo-vla
DEMO_EVAL := --suite libero_object --tasks 0 --init-states 0-15 --episodes-per-task 16 --image-size 64 \
    --n-action-steps 10 --num-envs 2 --parallel-envs

.PHONY: install test demo lint bench clean image sif image-test sif-test

$(VENV)/.installed: pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/ruff check grpo_cli tests benchmarks
	$(VENV)/bin/lint-imports  # the layering contract in pyproject.toml: no import circles, no upward imports
	# loadfile: a file runs on one xdist worker, so module fixtures (the test SLURM cluster) start once
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

demo: install
	rm -rf $(DEMO_OUT)/sft $(DEMO_OUT)/run-rec
	# 1. Scripted-expert demos on LIBERO-Object task 0 (init states 0-15), then behaviour cloning (~7 min)
	$(GRPO) demos --suite libero_object --tasks 0 --init-states 0-15 --workers 2 --out $(DEMO_OUT)/demos.h5 --overwrite
	$(GRPO) sft $(DEMO_OUT)/demos.h5 --privileged-state --steps 1250 --lr 1e-3 --out $(DEMO_OUT)/sft
	# 2. Its eval on those init states (a demo of the machinery, not a held-out result), Wilson intervals
	$(GRPO) eval --policy $(DEMO_OUT)/sft $(DEMO_EVAL) --out $(DEMO_OUT)/eval_sft.h5 --overwrite
	# 3. Two GRPO steps of `recommended` from it (small groups), then the same eval episodes again
	$(GRPO) train --exp recommended --policy $(DEMO_OUT)/sft --run-dir $(DEMO_OUT)/run-rec --set steps=2 \
	    --set suite=libero_object --set tasks=0 --set init_states=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 --set num_generations=4 \
	    --set tasks_per_step=1 --set image_size=64 --set n_action_steps=10 --set num_envs=2 --set parallel_envs=true
	$(GRPO) eval --policy $(DEMO_OUT)/run-rec/checkpoints/step_000002.h5 $(DEMO_EVAL) --out $(DEMO_OUT)/eval_rec.h5 --overwrite
	# 4. The report (tables, paired test, curves, diagnosis), and the seed's own tables re-analysed
	$(GRPO) report sft=$(DEMO_OUT)/eval_sft.h5 rec=$(DEMO_OUT)/eval_rec.h5 $(DEMO_OUT)/run-rec --baseline sft \
	    --out $(DEMO_OUT)/report --title "make demo: SFT and two GRPO steps"
	for e in Base E1 E2 E3 E4 E5 E6; do $(GRPO) import-eval docs/seed_table1.csv --label $$e \
	    --out $(DEMO_OUT)/seed/$$e.h5 --overwrite >/dev/null || exit 1; done
	$(GRPO) report $(DEMO_OUT)/seed/*.h5 --baseline Base --out $(DEMO_OUT)/seed-report \
	    --title "The seed's Tables 1 and 2, with intervals and tests"
	@echo "open $(DEMO_OUT)/report/report.html and $(DEMO_OUT)/seed-report/report.html"

lint: install
	$(VENV)/bin/ruff check grpo_cli tests benchmarks
	$(VENV)/bin/lint-imports

bench: install
	$(PY) benchmarks/env_throughput.py
	$(PY) benchmarks/rollout_throughput.py

# Containers: `make image` (docker or podman) and `make sif` (Apptainer), from a clean checkout; the build
# context is what .dockerignore lets through. SITE_CA=ca.pem: a CA bundle for builds behind a proxy that
# intercepts TLS (build-time only, never in the image). The self-tests run a LIBERO eval inside each
# container on a read-only file system; LIBERO_ASSETS is the assets folder they bind.
comma := ,
# docker when its daemon answers, else podman (a docker CLI without a daemon is common on clusters)
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
IMAGE ?= grpo-vla:latest
SIF ?= grpo-vla.sif
APPTAINER ?= apptainer
SIF_FROM ?= $(if $(shell command -v $(firstword $(APPTAINER)) 2>/dev/null),def,image)
LIBERO_ASSETS ?= $(GRPO_VLA_LIBERO_ASSETS)
SELFTEST_OUT ?= $(CURDIR)/build/selftest
IMAGE_BUILD_FLAGS ?=

image:
	$(ENGINE) build $(IMAGE_BUILD_FLAGS) $(if $(SITE_CA),--secret id=site_ca$(comma)src=$(abspath $(SITE_CA))) -t $(IMAGE) .

sif:
ifeq ($(SIF_FROM),def)
	$(APPTAINER) build --force $(if $(SITE_CA),--bind $(abspath $(SITE_CA)):/run/secrets/site_ca) $(SIF) apptainer.def
else
	mkdir -p build && rm -f build/grpo-vla-image.tar
	$(ENGINE) save -o build/grpo-vla-image.tar $(IMAGE)
	$(APPTAINER) build --force $(SIF) apptainer-image.def
	rm -f build/grpo-vla-image.tar
endif

image-test:
	@test -d "$(LIBERO_ASSETS)" || { echo "make image-test: set LIBERO_ASSETS to LIBERO's assets folder" >&2; exit 2; }
	mkdir -p $(SELFTEST_OUT)/image && chmod a+rwx $(SELFTEST_OUT)/image
	$(ENGINE) run --rm --read-only --tmpfs /tmp -v $(abspath $(LIBERO_ASSETS)):/assets:ro \
	    -e GRPO_VLA_LIBERO_ASSETS=/assets -v $(SELFTEST_OUT)/image:/out --entrypoint bash $(IMAGE) \
	    /opt/grpo-vla/scripts/container_selftest.sh /out

sif-test:
	@test -d "$(LIBERO_ASSETS)" || { echo "make sif-test: set LIBERO_ASSETS to LIBERO's assets folder" >&2; exit 2; }
	mkdir -p $(SELFTEST_OUT)/sif
	$(APPTAINER) test --bind $(abspath $(LIBERO_ASSETS)):/assets:ro --bind $(SELFTEST_OUT)/sif:/out \
	    --env GRPO_VLA_LIBERO_ASSETS=/assets$(comma)TMPDIR=/out $(SIF)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache build
