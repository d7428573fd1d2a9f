# Two commands do all the set-up:   make train   (install + the default experiment)   make test   (install + tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Data: ../shared/data when it sits beside the checkout (CI, the team's machines), else ./data (filled from the hub).
export ATTNLAB_DATA_DIR ?= $(abspath $(firstword $(wildcard ../shared/data) data))
# make train runs the quick MNIST recipe (minutes on 2 cores); make train EXPERIMENT=mnist_cnn runs the full one.
EXPERIMENT ?= mnist_quick
ARGS ?=

.PHONY: install train test test-all test-fast bench clean

install: $(VENV)/.installed

# The package is installed with its dependencies, so a range in pyproject.toml that the pins do not meet shows here
# (pip keeps the pins when they satisfy it and downloads nothing).
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q -e .
	touch $@

train: install
	$(BIN)/python app/train.py experiment=$(EXPERIMENT) $(ARGS)

# make test is what CI runs: everything but the heaviest end-to-end runs (marker heavy), which make test-all adds.
test: install
	$(BIN)/python -m pytest -q -m "not heavy" $(ARGS)

test-all: install
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: install
	$(BIN)/python scripts/bench_overhead.py $(ARGS)

clean:
	rm -rf $(VENV) src/*.egg-info .pytest_cache
