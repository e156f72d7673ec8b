# SegDepth: `make reproduce` runs the pipeline on small defaults, `make test` runs the tests.
# Both create and fill .venv by themselves (torch pinned to the CPU build this machine has on disk).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segdepth-installed
TORCH := torch==2.13.0
RUN_NB := $(PY) -m segdepth.notebook

.PHONY: all venv test test-fast reproduce data train evaluate reproduce-evaluate lint sync benchmark clean

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

# Step 02: train the shipped model (base 16, lambda 2.5) on a training set made by 01 with
# `-p output data/simulated/cpu_train -p n_structures 100 -p n_defocus 4 -p seed 0` (see README).
train: $(STAMP)
	$(RUN_NB) notebooks/02_training.py

# Step 03: Table I, Figs. 1, 6, 7, 8 on the test split of the training set (committed results).
evaluate: $(STAMP)
	$(RUN_NB) notebooks/03_evaluation.py

# Step 03 on the small dataset of step 01 with the shipped model; writes under */reproduce/.
reproduce-evaluate: $(STAMP)
	$(RUN_NB) notebooks/03_evaluation.py -o notebooks/executed/03_evaluation_reproduce.ipynb \
		-p data data/simulated/nb01_cpu -p results data/results/reproduce/evaluation_lam2.5.nc \
		-p examples data/results/reproduce/evaluation_examples_lam2.5.nc \
		-p table data/results/reproduce/table1_lam2.5.md -p figure_prefix figures/reproduce/

reproduce: data reproduce-evaluate

benchmark: $(STAMP)
	$(PY) benchmarks/simulation_throughput.py

clean:
	rm -rf notebooks/executed data/simulated/nb01_* data/results/reproduce figures/reproduce .pytest_cache
