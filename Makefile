# dho-gateway: the two commands a newcomer needs are `make demo` and `make test`.
# Both run `setup` first, which creates .venv and (when root) installs the Debian packages.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup system-packages test lint typecheck pytest demo bench chaos clean

setup: system-packages $(STAMP)

system-packages:
	@scripts/ensure-system-packages.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check agent dho_cli dho_protocol provisioning receiver bench tests hw-mocks

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

demo: setup
	$(VENV)/bin/dho-agent demo

bench: setup $(VENV)/.bench-installed
	$(PY) -m bench.run

$(VENV)/.bench-installed: pyproject.toml
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build dist

# The fault campaign (docs/proof.md): writes bench/chaos-report.json; FULL=1 for the long run,
# which also runs 1,000 simulated power cuts instead of the suite's 200.
chaos: setup
	FULL=$(FULL) $(PY) -m bench.chaos
	@if [ "$(FULL)" = "1" ]; then DHO_POWERLOSS_CUTS=1000 $(VENV)/bin/pytest -q tests/powerloss; fi
