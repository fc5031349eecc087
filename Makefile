# Two entry points, each doing all set-up on a fresh machine:
#   make quickstart   -> the built-in default job
#   make test         -> the test suite
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python

.PHONY: setup quickstart test lint

# The venv takes about 6.5 GB (torch's CUDA build from PyPI; README, "Installation"): check the
# disk first, so that a full disk is one clear line and not pip's OSError halfway through.
NEED_GB ?= 7

# The C sources: pip compiles them at install (setup.py), so a change to one reinstalls.
$(VENV)/.installed: setup.py requirements/constraints.txt axial_deeplab/evaluation/_png_runs.c \
		axial_deeplab/layers/_fused_eval.c axial_deeplab/layers/_fused_train.c \
		axial_deeplab/layers/_fused_simd.h
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$free" -lt $(NEED_GB) ]; then \
	  echo "error: $$free GB free on the disk of $$(pwd); the .venv needs about $(NEED_GB) GB" \
	    "(free some space, or NEED_GB=N make ... to try with less)" >&2; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-cache-dir --upgrade pip
	$(PIP) install -q --no-cache-dir -c requirements/constraints.txt torch torchvision
	$(PIP) install -q --no-cache-dir -c requirements/constraints.txt -e ".[dev,slurm,export]"
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(PY) -m axial_deeplab.quickstart

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check axial_deeplab tools tests bench
	$(VENV)/bin/ruff format --check axial_deeplab tools tests bench
