# jrag: `make demo` ingests the sample documents into Milvus Lite, searches and asks them;
# `make test` runs the test suite. Both install everything first, into .venv.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo model exists offline (it ships inside a pip package). With real jina-v2 weights, use
# DEMO_MODEL=jinaai/jina-embeddings-v2-small-en or a local folder.
DEMO_MODEL ?= sentence-transformers/all-MiniLM-L6-v2
DEMO_DB ?= .jrag/demo.db
DEMO_QUERY ?= Who re-ground the Fresnel lens at Gull Point?

export DO_NOT_TRACK = 1
export HF_HUB_DISABLE_TELEMETRY = 1

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install_milvus_server.sh scripts/install_browser.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	@# PDF's fast path needs unstructured-inference, but its dependencies pull timm and a
	@# CUDA-only torchvision that breaks transformers: install it alone.
	$(BIN)/pip install --quiet -c constraints.txt --no-deps unstructured-inference
	bash scripts/install_milvus_server.sh
	bash scripts/install_browser.sh
	touch $(STAMP)

demo: install
	$(BIN)/jrag ingest samples --model $(DEMO_MODEL) --uri $(DEMO_DB) --collection demo --mode late
	$(BIN)/jrag search "$(DEMO_QUERY)" --uri $(DEMO_DB) --collection demo -k 3
	$(BIN)/jrag ask "$(DEMO_QUERY)" --uri $(DEMO_DB) --collection demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python benchmarks/bench_encoder.py
	$(BIN)/python benchmarks/bench_ingest.py

clean:
	rm -rf $(VENV) .venv-milvus .jrag .pytest_cache
