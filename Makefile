# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Which Stable Diffusion the tiny model is: sd1 (SD 1.5's shape), sd2-v (SD 2.1 768, v-prediction), sdxl or
# sdxl-refiner. `make serve FAMILY=sdxl` serves that one; a MODEL_DIR of yours says its own family.
FAMILY ?= sd1
TINY_MODEL_DIR := .models/$(if $(filter sd1,$(FAMILY)),tiny-sd-img2img,tiny-$(FAMILY))
MODEL_DIR ?= $(TINY_MODEL_DIR)
SD15_DIR ?= .models/sd15-random
SDXL_DIR ?= .models/sdxl-random
TRITON_ARGS ?=
SERVE_ARGS ?=
# Where the tiny model and the venv come from is the only set-up; everything below depends on it.
SETUP_STAMP := $(VENV)/.setup-stamp
TINY_STAMP := $(TINY_MODEL_DIR)/tiny_model_build.json
# Only the default tiny-model folder is ever built: a MODEL_DIR of yours is served as it is, never written.
SERVED_MODEL := $(if $(filter $(abspath $(TINY_MODEL_DIR)),$(abspath $(MODEL_DIR))),model,setup)

.PHONY: setup model model-sd15 model-sdxl postgres browser perf-analyzer playground-shot triton serve serve-replicas serve-fleet serve-sd15 real-size real-size-sdxl test lint reliability bench \
	bench-replicas gpu-carry gpu-rehearsal gpu-report mutation clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and by exact version: it takes the CPU wheel; an unpinned torch pulls CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[model,dev]" -e "./client[triton]"
	touch $@

model: $(TINY_STAMP)

$(TINY_STAMP): $(SETUP_STAMP) embedded/tiny_model.py
	$(PY) -m embedded.tiny_model --family $(FAMILY) $(TINY_MODEL_DIR)

# Full-size SD 1.5 with random weights (4.3 GB fp32, about a minute here): real size without a download.
model-sd15: setup
	$(PY) -m embedded.sd15_model $(SD15_DIR)

# Full-size SDXL base 1.0 with random weights (13.9 GB fp32, built a component at a time: peak RSS about the
# UNet's 10.3 GB; a few minutes here).
model-sdxl: setup
	$(PY) -m embedded.sdxl_model $(SDXL_DIR)

# Debian packages, only for the tools that are missing: embedded/prereqs.py probes each one, keeps what
# works (the image's NodeSource node and npm included), says what it installs, and probes again after.
PREREQS := $(PYTHON) -m embedded.prereqs

# PostgreSQL's cluster binaries (Debian's postgresql) for the replica stack and the tests.
postgres:
	@$(PREREQS) postgres

# Real browsers for the playground's tests: Debian's chromium (Playwright drives it) and firefox-esr (driven over
# WebDriver BiDi by puppeteer-core from tests/e2e/firefox, which npm installs from its lock file); never a
# browser download.
browser:
	@$(PREREQS) browser
	@test -d tests/e2e/firefox/node_modules/puppeteer-core || { \
		echo "browser: installing puppeteer-core into tests/e2e/firefox (npm ci) ..."; \
		npm ci --prefix tests/e2e/firefox --no-audit --no-fund --loglevel=error; }

# perf_analyzer's Debian library (libb64-0d); bench/perf_analyzer.py adds its CUDA runtime wheel to the venv.
perf-analyzer:
	@$(PREREQS) perf-analyzer

# The playground's browser test, saving its screenshot of a result as docs/img/playground.png.
playground-shot: model browser
	SD_PLAYGROUND_SCREENSHOT=docs/img/playground.png $(PY) -m pytest tests/e2e/test_playground.py -k generate

# Triton in the foreground on :8000 (HTTP), :8001 (gRPC), :8002 (metrics); Ctrl-C stops it.
triton: $(SERVED_MODEL)
	$(PY) -m embedded.triton_server --model-path $(MODEL_DIR) $(TRITON_ARGS)

# Triton (tiny model, or your MODEL_DIR) + the frontend on :8080. SD_API_KEYS unset: a dev key is printed.
serve: $(SERVED_MODEL)
	$(PY) -m embedded.stack --model-path $(MODEL_DIR) $(SERVE_ARGS)

# Several replicas: a local PostgreSQL (data in .pgdata/), one Triton, frontends on :8080, :8081, :8082 sharing
# it, one API key and webhook secret (SD_API_KEYS / SD_WEBHOOK_SECRET honoured, else printed). Ctrl-C stops all.
serve-replicas: $(SERVED_MODEL) postgres
	$(PY) -m embedded.replicas --model-path $(MODEL_DIR) $(SERVE_ARGS)

# A fleet on this machine: PODS tritonservers on 127.0.0.2 and up (the same ports, each its own copy of the model
# repository, as Kubernetes pods), PostgreSQL and the frontends of serve-replicas placing runs on all of them.
# PACE_MS=250 makes each denoising step last 250 ms, as a GPU step would. Ctrl-C, SIGTERM or SIGHUP stops all.
PODS ?= 3
PACE_MS ?= 0
serve-fleet: $(SERVED_MODEL) postgres
	$(PY) -m embedded.replicas --model-path $(MODEL_DIR) --pods $(PODS) --pace-ms $(PACE_MS) $(SERVE_ARGS)

# The same stack on the full-size random-weight SD 1.5. On a CPU a default request (40 denoising steps at
# 512x512) takes about 20 min, so the frontend's Triton deadline is an hour here unless you set one.
serve-sd15: model-sd15
	SD_TRITON_TIMEOUT_S=$${SD_TRITON_TIMEOUT_S:-3600} $(PY) -m embedded.stack --model-path $(SD15_DIR) $(SERVE_ARGS)

# Real size through the whole stack on this CPU: one 512x512 request through the frontend; writes
# docs/real-size.md (load time, time split, peak memory per process, probes). Part of make reliability.
real-size: model-sd15
	$(PY) -m bench.real_size --model-path $(SD15_DIR)

# SDXL base at real size on this CPU: load through the model's loader, memory, one UNet forward (2 rows) and the
# VAE at 1024 px, in one process (a 1024 px request through the stack would take hours here); writes
# docs/real-size-sdxl.md. About 10 min, 15 GB of RAM.
real-size-sdxl: model-sdxl
	nice -n 10 $(PY) -m bench.real_size --family sdxl --model-path $(SDXL_DIR)

test: model postgres browser lint
	$(PY) -m pytest

# The reliability groups at full scale (under 20 min here); writes docs/reliability.md. `make test` runs them
# small. Then the real-size run (make real-size).
reliability: model model-sd15 postgres
	$(PY) -m pytest tests/reliability --reliability-full; status=$$?; \
	$(PY) -m tests.reliability.report; report=$$?; \
	$(PY) -m bench.real_size --model-path $(SD15_DIR) && exit $$(( status || report ))

# Every benchmark side by side (about 25 min here); writes docs/benchmarks.md, docs/img/*.png, docs/bench-replicas.md,
# docs/step-batching.md (step against request batching: mixed settings, head-of-line blocking) and its SDXL twin
# docs/step-batching-sdxl.md (the bench builds the SDXL tiny model if missing), docs/step-cost.md, docs/auth-timing.md.
# On a GPU machine: make bench BENCH_ARGS="--model-path /weights/sd15 --size 512 --steps 50 --strength 0.8"
BENCH_ARGS ?=
bench: model postgres perf-analyzer
	$(PY) -m bench.run_all $(BENCH_ARGS)
	$(PY) -m bench.replicas
	$(PY) -m bench.fleet
	$(PY) -m bench.step_batching
	$(PY) -m bench.step_batching --family sdxl
	$(PY) -m bench.step_cost
	$(PY) -m bench.auth_timing

# The run store's added latency (PostgreSQL vs SQLite) and 1 vs 3 frontends on one Triton (about 6 min);
# writes docs/bench-replicas.md. Part of make bench.
bench-replicas: model postgres
	$(PY) -m bench.replicas

# What a bare GPU machine lacks (wheels, tritonserver; 54 MiB in .gpu/), packed here for the device call.
gpu-carry: setup
	$(PY) -m bench.gpu.carry

# The GPU command rehearsed on this CPU: a Python shaped like the GPU machine's (bench/gpu/device-image.txt:
# Python 3.12, numpy 2, transformers 5, torch 2.11 with its CUDA wheels; nothing of ours) plus only what
# gpu-carry packs, running bash bench/gpu/run.sh with the tiny model, every phase; fails unless all of
# it, end to end through tritonserver and the frontend included, would have served. About 15 min.
gpu-rehearsal: model gpu-carry
	$(PY) -m bench.gpu.rehearsal $(REHEARSAL_ARGS)

# On a machine with an NVIDIA GPU and a CUDA torch in python3 (docs/gpu-command.md): builds the full-size
# random SD 1.5 on the GPU, measures, writes $(GPU_OUT)/gpu-report.json and gpu.md (docs/gpu.md's source).
GPU_OUT ?= .build/gpu
gpu-report:
	OUT=$(GPU_OUT) bash bench/gpu/run.sh $(GPU_ARGS)

# Mutation testing of the rules that protect users (docs/mutation.md): mutmut, installed into the venv on first
# use, runs each scope of bench/mutation.py against the in-process tests, one worker, niced; about 15 min here;
# fails if a scope kills under 90% of its mutants. Not part of make test. One scope: make mutation MUTATION_ARGS=auth.
MUTMUT_VERSION := 3.8.1
MUTATION_ARGS ?=
mutation: setup
	@$(PY) -m pip show mutmut 2>/dev/null | grep -qx 'Version: $(MUTMUT_VERSION)' || \
		$(PY) -m pip install --quiet mutmut==$(MUTMUT_VERSION)
	nice -n 10 $(PY) -m bench.mutation $(MUTATION_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy embedded bench frontend model_repository/sd_img2img/1
	$(VENV)/bin/mypy client/sd_img2img_client
	$(VENV)/bin/mypy model_repository/sd_img2img_progress/1

clean:
	rm -rf .build .models
