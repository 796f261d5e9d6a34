# Slimbench: `make run` starts the dashboard, `make test` runs every test. Both set everything up first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQS  := requirements.txt requirements-ray.txt
PORT  ?= 8501

.PHONY: setup run test bench bench-gpu clean

setup: $(STAMP)
	@bash scripts/setup_debian.sh

# Re-install only when a requirements file changed (a second `make` adds seconds, not minutes).
$(STAMP): $(REQS)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(addprefix -r ,$(REQS))
	@touch $(STAMP)

run: setup
	$(VENV)/bin/streamlit run dashboard.py --server.port $(PORT)

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m bench cpu

bench-gpu: setup
	$(PY) -m bench gpu

clean:
	rm -rf $(VENV) workspace test-artifacts .pytest_cache
