# kalshi-data: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit demo bench chaos deps pg clean ops-tools infra-files release

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

deps: $(STAMP)

# System packages (PostgreSQL server, promtool) from Debian when missing.
pg:
	@bash scripts/ensure-system-packages.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) pg
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# The chaos-marked tests (fuzzing 10^5 inputs per target, the long fault tests, and a 3-minute
# `kalshi-data chaos` schedule of every fault kind): about 10 minutes on 2 cores.
chaos: $(STAMP) pg
	$(BIN)/pytest -m chaos -o addopts="-ra --import-mode=importlib" -s

bench: $(STAMP) pg
	$(BIN)/python -m bench

demo: $(STAMP) pg
	$(BIN)/kalshi-data demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache

# Copy systemd/ and infra/scripts/ into the Terraform module (it must be complete on its own).
infra-files:
	@bash scripts/sync-terraform-files.sh

# The release every host installs: the wheel and the CloudFormation deploy bundle, with sha256s.
release:
	@bash scripts/build-release.sh
