# Every target builds its own isolated environment in .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PY := $(VENV)/bin/python
# Where pip finds the CPU build of torch for the `peers` extra (empty: the configured indexes).
PIP_PEERS_INDEX ?=

.PHONY: train test test-slow test-all clean

$(STAMP): pyproject.toml  ## jaxnn and what it needs to run (no test tools, no PyTorch)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[tune]"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)  ## + the test tools and the PyTorch peer (CPU build) of the comparison tests
	$(PY) -m pip install -q $(if $(PIP_PEERS_INDEX),--extra-index-url $(PIP_PEERS_INDEX)) -e ".[test,peers]"
	touch $(TEST_STAMP)

train: $(STAMP)  ## the main job: train.py on configs/default.py (IMDB)
	$(PY) train.py $(ARGS)

test: $(TEST_STAMP)  ## lint + the whole fast suite (what CI runs)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not slow" -n 2 -q

test-slow: $(TEST_STAMP)  ## only the slow tests (CI runs them after `make test`); none selected = ok
	$(PY) -m pytest -m slow -n 2 -q || [ $$? -eq 5 ]

test-all: $(TEST_STAMP)  ## everything, slow tests included
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV)
