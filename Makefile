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

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
