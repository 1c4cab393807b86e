# The two commands that matter: `make demo` (main job) and `make test`. Both set everything up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.daonet-installed

.PHONY: setup demo test lint bench sweep clean

$(STAMP): pyproject.toml constraints.txt scripts/install-data.sh scripts/install-browser.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,bench,ray,plan,docs]"  # exact pins: torch stays the CPU 2.13.0
	scripts/install-data.sh $(PY)
	scripts/install-browser.sh
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/daonet demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy

sweep: setup
	$(VENV)/bin/daonet sweep --out reports/sweep

clean:
	rm -rf $(VENV) .daonet-cache runs bundles reports
