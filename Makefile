# dl-fp: everything a fresh machine needs goes through these targets.
#   make demo   set up .venv and run the main job (dvc repro on params.yaml)
#   make test   set up .venv and run the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0

.PHONY: venv browser exiftool demo test test-fast test-slow lint bench snakemake-demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Headless Chromium renders the HTML reports in tests (Debian package; needs root or sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed and no root: the browser tests will be skipped (and fail under CI=true)"; fi; }

# exiftool (Debian's libimage-exiftool-perl): the independent reader of dlfp restore's XMP provenance label in tests.
exiftool:
	@command -v exiftool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libimage-exiftool-perl >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq libimage-exiftool-perl >/dev/null; \
	  else echo "exiftool not installed and no root: its label test will be skipped (and fail under CI=true)"; fi; }

demo: venv
	dvc repro

snakemake-demo: venv
	snakemake --cores 2 evaluate

# Everything, slow tests included; CI runs this.
test: venv browser exiftool
	$(PY) -m pytest -q

# Without the tests marked slow (the 200-face identity parity, the CNN detector, the GPU-script smoke run).
test-fast: venv browser exiftool
	$(PY) -m pytest -q -m "not slow"

test-slow: venv browser
	$(PY) -m pytest -q -m slow

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

bench: venv
	$(PY) benchmarks/bench_degrade.py
	$(PY) benchmarks/bench_identity.py
	$(PY) benchmarks/bench_models.py
	$(PY) benchmarks/bench_pipeline.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_restore_photos.py

clean:
	rm -rf data logs reports .snakemake
