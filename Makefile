# mlprod: two commands set everything up on a fresh machine.
#   make demo   creates .venv, installs mlprod, runs `mlprod demo` on the embedded defaults
#   make test   installs and runs every check and test (what CI runs)
#   make system-deps   the Debian packages the tests use (run by make test; needs root or sudo)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Debian packages the tests use: PostgreSQL (tests/pg.py) and Chromium (tests/test_dashboard_browser.py, driven by
# Playwright through /usr/bin/chromium: no browser download). Tests never apt-get; a missing one fails naming this target.
SYSTEM_PACKAGES := postgresql chromium
# pytest workers: tests of one module (or of modules that share state, see tests/conftest.py) run on one worker
PYTEST_WORKERS ?= 2

.PHONY: install system-deps demo test check-sync nbtest pytest bench clean sync

install: $(STAMP)

# Reinstall only when the packaging inputs change; repeated runs skip the install.
$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# idempotent: skips what is installed, runs apt-get update once only when something is missing
system-deps:
	@bash .ci/system-deps $(SYSTEM_PACKAGES)

demo: $(STAMP)
	$(BIN)/mlprod demo

# 0. system packages, 1. package and notebooks in sync, 2. notebook tests, 3. pytest (closing line is pytest's)
test: $(STAMP) system-deps check-sync nbtest pytest

check-sync: $(STAMP)
	@bash .ci/check-sync $(BIN)

nbtest: $(STAMP)
	@bash .ci/nbtest $(BIN)

pytest: $(STAMP) system-deps
	$(BIN)/python -m pytest tests --ignore=tests/benchmarks -p no:cacheprovider --durations=15 -n $(PYTEST_WORKERS)

bench: $(STAMP)
	$(BIN)/python -m pytest tests/benchmarks -s -p no:cacheprovider -o python_files='bench_*.py'

# regenerate mlprod/ and README.md from the notebooks and clean the notebooks
sync: $(STAMP)
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export && $(BIN)/python .ci/readme.py

# documentation site in _docs/ from nbs/, nbs/tutorials/, runbooks/ and README (docs/about.md says how and why)
.PHONY: docs
docs: $(STAMP)
	$(BIN)/python -c "import mkdocs, material, latex2mathml" 2>/dev/null || $(BIN)/python -m pip install -q "mkdocs>=1.6,<2" "mkdocs-material>=9.5,<10" "latex2mathml>=3.77"
	$(BIN)/python docs/build.py $(DOCS_ARGS)

clean:
	rm -rf $(VENV) .mlprod
