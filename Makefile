# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gxd-installed
HYPOTHESIS_PROFILE ?= ci

.PHONY: install demo test lint docs clean

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) examples/continual_demo.py --out demo_out

lint: install
	$(PY) -m ruff check gxd_optim tests examples
	$(PY) -m ruff format --check gxd_optim tests examples
	$(PY) -m mypy

# The integration tests run the real libraries the install brings; a missing one fails.
test: lint
	HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) GXD_INTEGRATION=required $(PY) -m pytest -q

docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) site demo_out .pytest_cache .mypy_cache .ruff_cache .hypothesis
