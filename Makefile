# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= .models/tiny-sd-img2img
TRITON_ARGS ?=
# Where the tiny model and the venv come from is the only set-up; everything below depends on it.
SETUP_STAMP := $(VENV)/.setup-stamp
MODEL_STAMP := $(MODEL_DIR)/tiny_model_build.json

.PHONY: setup model triton serve test lint reliability bench bench-batching bench-latency clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and by exact version: it takes the CPU wheel; an unpinned torch pulls CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[model,dev]" -e "./client[triton]"
	touch $@

model: $(MODEL_STAMP)

$(MODEL_STAMP): $(SETUP_STAMP) embedded/tiny_model.py
	$(PY) -m embedded.tiny_model $(MODEL_DIR)

# Triton in the foreground on :8000 (HTTP), :8001 (gRPC), :8002 (metrics); Ctrl-C stops it.
triton: model
	$(PY) -m embedded.triton_server --model-path $(MODEL_DIR) $(TRITON_ARGS)

# Triton (tiny model) + the frontend on :8080. SD_API_KEYS unset: a dev key is generated and printed.
serve: model
	$(PY) -m embedded.stack --model-path $(MODEL_DIR)

test: model lint
	$(PY) -m pytest

# The reliability groups at full scale (under 20 min here); writes docs/reliability.md. `make test` runs them small.
reliability: model
	$(PY) -m pytest tests/reliability --reliability-full; status=$$?; \
	$(PY) -m tests.reliability.report && exit $$status

# Every benchmark side by side (about 10 min here); writes docs/benchmarks.md and docs/img/*.png.
# On a GPU machine: make bench BENCH_ARGS="--model-path /weights/sd15 --size 512 --steps 50 --strength 0.8"
BENCH_ARGS ?=
bench: model
	$(PY) -m bench.run_all $(BENCH_ARGS)

bench-batching: model
	$(PY) -m bench.batching

bench-latency: model
	$(PY) -m bench.e2e_latency

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy embedded bench frontend model_repository/sd_img2img/1
	$(VENV)/bin/mypy client/sd_img2img_client

clean:
	rm -rf .build .models
