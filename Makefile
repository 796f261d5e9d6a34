# Slimbench: `make run` starts the dashboard, `make test` runs every test, `make test-fast` the quick
# lane (tests marked `fast`, a few minutes). All of them set everything up first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQS  := requirements.txt requirements-ray.txt
PORT  ?= 8501

.PHONY: setup run test test-fast bench bench-gpu bench-gpu-bases bench-gpu-literature bench-gpu-autocompress clean

setup: $(STAMP)
	@bash scripts/setup_debian.sh

# Re-install only when a requirements file or the package metadata changed (a second `make` adds
# seconds, not minutes). pip, not uv: pip takes torch from this machine's local wheels.
$(STAMP): $(REQS) pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(addprefix -r ,$(REQS))
	$(PY) -m pip install -q -e .
	@touch $(STAMP)

run: setup
	$(VENV)/bin/streamlit run serve.py --server.port $(PORT)

# One process, one torch thread (OMP_NUM_THREADS=1; a test's jobs inherit it). The suite's models are tiny and
# its jobs, workers, servers and browsers run beside the test process: on the 2-core AMD EPYC the whole suite took
# 29.0 min on one thread (with a helper's tests beside it; alone on 2026-12-03: 24.2 min, then 24.7 min with the
# GPU-session rehearsals, 855 tests; 27.2 min in the next run) against 43.6 min on torch's
# default two (loaded), and
# three heavy files (test_jobs, test_engine_core, test_browser) 447 s against 513 s on a near-idle box
# (docs/BENCHMARKS.md). `make test TEST_WORKERS=2` runs pytest-xdist workers instead (tests/conftest.py gives
# each its share of the cores; tests sharing a resource stay on one worker, `--dist loadgroup`); two workers
# took 41.3 min against 43.6 serial, and their extra load made a browser wait and a timing test fail.
TEST_WORKERS ?= 0
TEST_THREADS ?= 1
test: setup
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup)

test-fast: setup
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -m fast

bench: setup
	$(PY) -m bench cpu

bench-gpu: setup
	$(PY) -m bench gpu

# The literature's CIFAR-10 bases (ResNet-18/56/20), sized for one 9-minute GPU call.
bench-gpu-bases: setup
	$(PY) -m bench gpu-bases

# Issue 19's literature table, one net per 9-minute GPU call: make bench-gpu-literature PART=resnet56 (resnet18, resnet20).
PART ?= resnet56
bench-gpu-literature: setup
	$(PY) -m bench literature --part $(PART)

# Issue 21's GPU targets (auto-compress from the literature ResNet-18 base), sized for one 9-minute GPU call.
bench-gpu-autocompress: setup
	$(PY) -m bench autocompress --gpu

clean:
	rm -rf $(VENV) workspace test-artifacts .pytest_cache *.egg-info
