# The two set-up commands of the README: `make serve` and `make test`. Both create .venv on first use,
# rebuild it when it is broken or made by an unsuitable Python, and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# requires-python in pyproject.toml; checked before anything is created.
MIN_PYTHON := 3.10

.DEFAULT_GOAL := help
# A recipe that fails part-way leaves no stamp file behind, so the next run redoes the step.
.DELETE_ON_ERROR:
.PHONY: help serve test lint check-python compose-up compose-up-cpu

help:
	@echo "make serve           install (first run: a few minutes, ~3 GB) and start the service on :8000"
	@echo "make test            install the dev extras and run ruff and all tests"
	@echo "make lint            ruff only"
	@echo "make compose-up      docker compose up --build (GPU worker, Redis, Prometheus)"
	@echo "make compose-up-cpu  the same on the CPU with the demo checkpoint (Compose >= 2.24)"
	@echo "PYTHON=python3.12 make serve   builds the venv with another interpreter"

check-python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: '$(PYTHON)' not found; install Python >= $(MIN_PYTHON) or run PYTHON=/path/to/python3 make ..." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; need = tuple(map(int, "$(MIN_PYTHON)".split("."))); sys.exit(0 if sys.version_info[:2] >= need else 1)' \
	  || { echo "error: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); LSMSeg needs >= $(MIN_PYTHON). Run PYTHON=python3.11 make ... (or any Python >= $(MIN_PYTHON))" >&2; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null \
	  || { echo "error: $(PYTHON) cannot create virtual environments (no venv/ensurepip module); on Debian/Ubuntu: apt install python3-venv" >&2; exit 1; }

# The venv is usable when its python runs, is new enough and has pip; otherwise (a half-made venv, one made by
# an older Python) it is removed and made again.
$(BIN)/python: check-python
	@if [ -x $(BIN)/python ] && $(BIN)/python -c 'import sys, pip; sys.exit(0 if sys.version_info[:2] >= tuple(map(int, "$(MIN_PYTHON)".split("."))) else 1)' 2>/dev/null; then \
	  :; \
	else \
	  [ ! -e $(VENV) ] || echo "$(VENV) is broken or made by an unsuitable Python; making it again"; \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --upgrade pip; \
	fi

# torch and torchvision resolve together from the package index (see pyproject.toml).
$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev,onnx]'
	touch $@ $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/python -m lsmseg.service

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

compose-up:
	deploy/check-compose.sh
	docker compose up --build

compose-up-cpu:
	deploy/check-compose.sh 2.24
	docker compose -f docker-compose.yml -f docker-compose.cpu.yml up --build
