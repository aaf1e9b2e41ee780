# Two commands do all the set-up: `make demo` and `make test`. `make notebooks` executes the
# notebooks at full settings and stores them with their outputs (scripts/run_notebooks.py).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test notebooks venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sdift demo

test: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -n 2 --dist loadfile tests

# Seconds per notebook before it is stopped (left unchanged); the log goes to scratch/.
NOTEBOOK_TIMEOUT ?= 3600
notebooks: $(STAMP)
	$(PY) scripts/run_notebooks.py --timeout $(NOTEBOOK_TIMEOUT)

clean:
	rm -rf $(VENV) .pytest_cache
