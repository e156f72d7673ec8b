# SegDepth: `make reproduce` runs the pipeline on small defaults, `make test` runs the tests.
# Both create and fill .venv by themselves (torch pinned to the CPU build this machine has on disk).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segdepth-installed
TORCH := torch==2.13.0
RUN_NB := $(PY) -m segdepth.notebook

.PHONY: all venv test test-fast reproduce data notebooks lint sync benchmark clean

all: reproduce

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,notebooks]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check segdepth tests benchmarks

# Keep the paired .ipynb files in step with the .py sources (the .py files are the source of truth).
sync: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/*.py

# Step 01: simulated dataset + Fig. 3 (small defaults; set preset=paper for the paper's size)
data: $(STAMP)
	$(RUN_NB) notebooks/01_data_generation.py

reproduce: data

benchmark: $(STAMP)
	$(PY) benchmarks/simulation_throughput.py

clean:
	rm -rf notebooks/executed data/simulated/nb01_* .pytest_cache
