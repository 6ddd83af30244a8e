# Two commands for a newcomer: `make run` (the main job) and `make test` (the test suite).
# Both create .venv and install the project from its own files first.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
PROMPT ?= a green circle
# JAX CPU devices for the main job: the sampler splits its CFG batch over them, one core each (~1.5x faster
# on a 2-core machine than one device; harmless elsewhere: only JAX's CPU backend is affected).
CPU_DEVICES ?= 2
# pytest-xdist workers of `make test` (auto = one per core; 0 = serial). Tests are independent: each has its own
# tmp_path, and subprocess tests keep their compilation cache under it.
TEST_WORKERS ?= auto

.PHONY: install run test lint format

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned to 2.13.0 by the test extra: the CPU build on this project's machines and CI (a bare `torch`
	# pulls a multi-GB CUDA build; elsewhere pre-install the CPU wheel into .venv, see README).
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# The main job: FIND on the shipped shapes-world model, reward `shapes`, 150 iterations.
run: install
	$(BIN)/find-jax --cpu-devices $(CPU_DEVICES) optimize --prompt "$(PROMPT)"

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
