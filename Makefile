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

.PHONY: install lint test serve clean

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
