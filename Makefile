# The two commands a user types: `make test` and `make benchmark`.
# Everything else (the virtual environment, the editable install) happens on demand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROFILE ?= default
ARGS   ?=
# `make benchmark PROFILE=smoke pretrain.steps=50`: command-line variables other than the
# Makefile's own become config overrides.
OVERRIDES := $(filter-out PROFILE=% ARGS=% PYTHON=%,$(-*-command-variables-*-))

.PHONY: install test test-slow benchmark bench bench-gpu lint clean tracking-server tracking-server-stop

# Recreate the install when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Everything but the slow tests. That includes tests/scaleout (marker `services`: a real
# one-node Slurm cluster, PostgreSQL, MLflow servers), which skip where those engines are
# missing; under CI=true their fixtures install the packages (as root) and a missing engine
# fails, so CI runs them: about 16 min more on a busy 2-core machine (docs/SCALEOUT.md).
# `make test ARGS='-m "not slow and not services"'` leaves them out.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

# `make benchmark PROFILE=smoke key=value ...`: extra words on the command line become overrides.
benchmark: $(STAMP)
	$(PY) -m benchmark run --profile $(PROFILE) $(OVERRIDES) $(ARGS)

# A local MLflow tracking server on PostgreSQL (data under runs/tracking-server/), for plans
# whose steps run in several processes or Slurm jobs; it prints the URIs to set and the
# PGPASSFILE to export. `make tracking-server ARGS="--host 0.0.0.0"` serves a cluster's nodes.
tracking-server: $(STAMP)
	$(PY) -m benchmark tracking-server start $(ARGS)

tracking-server-stop: $(STAMP)
	$(PY) -m benchmark tracking-server stop

bench: $(STAMP)
	$(PY) -m benchmark.perf $(ARGS)

# On a machine with a GPU (issue #16's figures, a few minutes on one H200-class GPU): `make
# bench` on CUDA, then the `paper` encoder (full EfficientNet-B0, 128 pairs) timed over 300
# pre-training steps, projected to its 10,000, and its channels-last and bf16 paths against
# fp32 over 300 steps.
bench-gpu: $(STAMP)
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu: no CUDA device')"
	$(PY) -m benchmark.perf --out runs/bench.json
	$(PY) -m benchmark.perf --profile paper --only pretrain,precision --steps 300 --out runs/bench-paper.json

lint: $(STAMP)
	$(VENV)/bin/ruff check benchmark methods tasks reports tests
	$(VENV)/bin/ruff format --check benchmark methods tasks reports tests

clean:
	rm -rf runs .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
