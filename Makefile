# Every target builds its own isolated environment in .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: train test test-all bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

train: $(STAMP)  ## the main job: train.py on configs/default.py (IMDB)
	$(PY) train.py $(ARGS)

test: $(STAMP)  ## lint + the whole fast suite (what CI runs)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not slow" -n 2 -q

test-all: $(STAMP)  ## everything, slow tests included
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV)
