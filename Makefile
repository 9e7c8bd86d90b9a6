# made-service developer commands. `make test` and (once the service lands) `make serve` need only Python:
# they create .venv and install everything into it.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel by default (a bare `torch` pulls several GB of CUDA packages). GPU users override, e.g.
#   make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu130"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test serve clean gpu-bundle gpu-check bench-tools

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# ruff checks and formatting (pinned in pyproject.toml, so every machine formats alike), then the suite
lint: $(STAMP)
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The service on the bundled model repository (models/), at http://127.0.0.1:8000 (MADE_* variables apply).
serve: $(STAMP)
	$(BIN)/made serve $(SERVE_ARGS)

# What the benchmarks need beyond the test setup (never CI): Debian's compiled load generators hey and wrk
# (apt, as root), the bench extra (PyOD, matplotlib), psutil and TorchServe for bench/peers.py (--no-deps:
# nothing may replace the pinned CPU torch), and PyTriton in a venv of its own, since it pins numpy<2:
#   make bench-tools && PYTRITON_PYTHON=.pytriton-venv/bin/python .venv/bin/python bench/peers.py
PYTRITON_VENV ?= .pytriton-venv
bench-tools: $(STAMP)
	command -v hey >/dev/null && command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq hey wrk)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]" psutil
	$(BIN)/python -m pip install --quiet --no-deps torchserve==0.12.0 torch-model-archiver==0.12.0
	test -x $(PYTRITON_VENV)/bin/python || $(PYTHON) -m venv $(PYTRITON_VENV)
	$(PYTRITON_VENV)/bin/python -m pip install --quiet nvidia-pytriton==0.7.0

# The GPU check (docs/gpu.md): every CUDA path tested and measured, and a time-boxed MNIST training run, in
# one command that writes $(GPU_CHECK_OUT)/summary.md. On a GPU machine whose image lacks our web stack:
#   make gpu-bundle                                      # here: wheels + data into .gpu/ (ignored, travels)
#   make gpu-check GPU_CHECK_BUNDLE=.gpu GPU_CHECK_OUT=out   # there
# On CPU, small (how it is tested): make gpu-check GPU_CHECK_DEVICE=cpu GPU_CHECK_SCALE=tiny GPU_CHECK_OUT=dir
GPU_CHECK_DEVICE ?= cuda
GPU_CHECK_SCALE ?= full
GPU_CHECK_OUT ?= gpu-check-out
GPU_CHECK_BUNDLE ?=
ifeq ($(GPU_CHECK_DEVICE),cpu)
GPU_CHECK_PYTHON ?= $(BIN)/python
GPU_CHECK_NEEDS := $(STAMP)
else
# a GPU machine's own Python (with its CUDA torch), unless this checkout has a .venv
GPU_CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_NEEDS :=
endif

gpu-bundle: $(STAMP)
	bench/gpu_bundle.sh fetch .gpu

gpu-check: $(GPU_CHECK_NEEDS)
	$(GPU_CHECK_PYTHON) bench/gpu_check.py --device $(GPU_CHECK_DEVICE) --scale $(GPU_CHECK_SCALE) \
		--out $(GPU_CHECK_OUT) $(if $(GPU_CHECK_BUNDLE),--bundle $(GPU_CHECK_BUNDLE))
