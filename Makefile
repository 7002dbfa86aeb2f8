# Vox2Vox bundle: `make demo` (set up, make demo data, train, evaluate, infer) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: setup demo test clean-demo

setup: $(STAMP)

# idempotent: the venv is rebuilt only when requirements.txt changes
$(STAMP): requirements.txt
	@echo "setting up $(VENV) with the pinned dependencies of requirements.txt (a minute or two)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --output-dir $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest tests -q

clean-demo:
	rm -rf $(DEMO_DIR)
