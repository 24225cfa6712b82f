# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install, build recipes/demo.yaml on a real model (no Hub needed)
#   make test   create .venv, install, lint and run the test suite (what CI runs)
# TORCH picks the torch build pip installs first. The default takes PyPI's build for this
# platform (on Linux x86_64 that is the CUDA build); a CPU-only machine can save gigabytes with
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: venv demo test integration clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: venv
	$(BIN)/synth-disco build recipes/demo.yaml --out runs/demo
	$(BIN)/synth-disco show runs/demo --limit 4

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf runs/demo
