# Two entry points, each doing all set-up on a fresh machine:
#   make quickstart   -> the built-in default job
#   make test         -> the test suite
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python

.PHONY: setup quickstart test lint

$(VENV)/.installed: setup.py requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c requirements/constraints.txt torch torchvision
	$(PIP) install -q -c requirements/constraints.txt -e ".[dev,slurm,export]"
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(PY) -m axial_deeplab.quickstart

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check axial_deeplab tools tests bench
