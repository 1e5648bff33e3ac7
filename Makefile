# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gxd-installed
HYPOTHESIS_PROFILE ?= ci

.PHONY: install demo test lint docs docs-check clean

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

# The built site as a reader gets it: docstring examples rendered as code, nothing loaded
# from another host, links that work from disk (scripts/check_docs_html.py); then every page
# opened in headless Chromium at 1280 px (scripts/check_site.py: raw TeX, overflowing tables
# and code, console errors, search), with screenshots in build/site-check/. Installs Chromium
# with apt when it is missing and this is root.
docs-check: docs
	$(PY) scripts/check_docs_html.py site
	bash scripts/install_chromium.sh
	GXD_DOCS_BROWSER=1 GXD_DOCS_SITE=site GXD_DOCS_SCREENSHOTS=build/site-check \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_docs_site.py tests/test_docs_browser.py

clean:
	rm -rf $(VENV) site demo_out .pytest_cache .mypy_cache .ruff_cache .hypothesis
