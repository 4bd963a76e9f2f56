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

.PHONY: install test demo lint bench clean

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
	$(VENV)/bin/grpo-vla rollout --policy tiny --suite libero_10 --tasks 0 --init-states 0 \
	    --num-generations 2 --max-steps 60 --out $(DEMO_OUT)/rollout.h5 --overwrite
	$(VENV)/bin/grpo-vla eval --policy tiny --suite libero_10 --tasks 0,1 --episodes-per-task 2 \
	    --max-steps 60 --out $(DEMO_OUT)/eval.h5 --overwrite
	rm -rf $(DEMO_OUT)/run-e2
	$(VENV)/bin/grpo-vla train --exp e2 --policy tiny --steps 2 --run-dir $(DEMO_OUT)/run-e2 \
	    --set tasks=0 --set max_steps=30 --set n_action_steps=10 --set image_size=128 --set num_envs=2
	$(VENV)/bin/grpo-vla drift $(DEMO_OUT)/run-e2/checkpoints/step_000002.h5
	for e in Base E1 E2 E3 E4 E5 E6; do $(VENV)/bin/grpo-vla import-eval docs/seed_table1.csv --label $$e \
	    --out $(DEMO_OUT)/seed/$$e.h5 --overwrite || exit 1; done
	$(VENV)/bin/grpo-vla report $(DEMO_OUT)/seed/*.h5 --baseline Base --out $(DEMO_OUT)/seed-report \
	    --title "The seed's Tables 1 and 2, with intervals and tests"
	rm -rf $(DEMO_OUT)/learning
	$(PY) benchmarks/learning/run.py --quick --out $(DEMO_OUT)/learning

lint: install
	$(VENV)/bin/ruff check grpo_cli tests benchmarks
	$(VENV)/bin/lint-imports

bench: install
	$(PY) benchmarks/env_throughput.py
	$(PY) benchmarks/rollout_throughput.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
