# lmforge: every target sets itself up (creates .venv and installs) when needed.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PRESET ?= tiny
SET    ?=
# CPU-only machines get this torch build first (pip finds it in a local wheel folder or an index);
# point TORCH_INDEX at https://download.pytorch.org/whl/cpu on a machine that has no local wheel.
TORCH_CPU   ?= torch==2.13.0
TORCH_INDEX ?=
PIP := $(BIN)/pip --disable-pip-version-check
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }
SET_ARGS := $(foreach kv,$(SET),--set $(kv))
ARTIFACTS ?= $(or $(LMFORGE_ARTIFACTS),artifacts)


.PHONY: install services test test-slow test-all test-integration pipeline data pretrain align evaluate stage ui lint \
  typecheck format clean show-config bench server worker deploy run-deployment align-compare serve gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "GPU found: installing the default (CUDA) torch build"; \
	else \
	  echo "No GPU: installing the CPU torch build ($(TORCH_CPU))"; \
	  $(PIP) install -q "$(TORCH_CPU)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) 2>&1 | $(QUIET_PIP); \
	fi
	@echo "Installing lmforge and its dependencies into $(VENV)"
	@$(PIP) install -q -e '.[dev]' 2>&1 | $(QUIET_PIP)
	@$(BIN)/python -c "import torch, prefect, mlflow, trl, peft, datasketch; print('torch', torch.__version__, '| prefect', prefect.__version__, '| mlflow', mlflow.__version__, '| trl', trl.__version__)"
	@touch $(STAMP)

# System binaries the tests use (redis-server; PostgreSQL for test-integration): apt-get installs them as
# root when missing, otherwise the command to run is printed. Quick and idempotent when present. Tests
# never install anything: without the binaries they skip, naming this target.
services:
	@infra/local/services.sh

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not integration" -q

# Also installs the `eval` extra (lm-evaluation-harness) for the lm_eval tests.
test-slow: $(STAMP)
	$(PIP) install -q -e '.[dev,eval]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pytest -m "slow and not integration" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# Needs PostgreSQL binaries (initdb, pg_ctl, psql): `make services`; skips without them.
test-integration: $(STAMP)
	$(PIP) install -q -e '.[dev,integration]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pytest tests/integration -q -m integration

pipeline: $(STAMP)
	$(BIN)/lmforge run --preset $(PRESET) $(SET_ARGS)

data pretrain align evaluate: $(STAMP)
	$(BIN)/lmforge run --flow $@ --preset $(PRESET) $(SET_ARGS)

# Every alignment algorithm (ppo, grpo, rloo, dpo) from the same SFT model (upstream stages built once,
# then cached), judged side by side on one MLflow run (table, plot, compare/<algo>/<metric> metrics);
# ALGOS=ppo,dpo picks some.
align-compare: $(STAMP)
	$(BIN)/lmforge align-compare --preset $(PRESET) $(SET_ARGS) $(if $(ALGOS),--algorithms $(ALGOS))

stage: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make stage NAME=dedup [PRESET=tiny] [SET='k=v ...']"; exit 2; }
	$(BIN)/lmforge stage $(NAME) --preset $(PRESET) $(SET_ARGS)

show-config: $(STAMP)
	$(BIN)/lmforge show-config --preset $(PRESET) $(SET_ARGS)

ui: $(STAMP)
	@mkdir -p $(ARTIFACTS)
	@# the store URI (a password in it) goes in the environment, never on the command line `ps` shows
	MLFLOW_BACKEND_STORE_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(abspath $(ARTIFACTS))/mlflow.db} \
	  $(BIN)/mlflow ui --default-artifact-root $(abspath $(ARTIFACTS))/mlruns --host 127.0.0.1 --port $${PORT:-5000}

# The OpenAI-compatible server + playground (http://127.0.0.1:8000/) for MODEL: the registry's champion
# (set by export when every gate passed) by default, or a folder such as artifacts/export/<hash12>;
# VARIANT=int8 serves int8 weights; SET='guardrails.mask_pii=false' etc. (conf/serve.py).
MODEL ?= models:/lmforge-tiny@champion
serve: $(STAMP)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(abspath $(ARTIFACTS))/mlflow.db} \
	  $(BIN)/lmforge serve '$(MODEL)' --port $${PORT:-8000} $(if $(VARIANT),--variant $(VARIANT)) $(SET_ARGS)

# --- Prefect deployments on a local server (see prefect.yaml and infra/) -------------------------
PREFECT_PORT ?= 4200
MLFLOW_PORT  ?= 5000
LOCAL_API    := http://127.0.0.1:$(PREFECT_PORT)/api
LOCAL_MLFLOW := http://127.0.0.1:$(MLFLOW_PORT)
POOL         ?= lmforge-process

server: $(STAMP)
	BIN=$(BIN) PREFECT_PORT=$(PREFECT_PORT) MLFLOW_PORT=$(MLFLOW_PORT) infra/local/serve.sh

worker: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-$(LOCAL_API)} $(BIN)/prefect work-pool create $(POOL) --type process 2>/dev/null || true
	PREFECT_API_URL=$${PREFECT_API_URL:-$(LOCAL_API)} MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(LOCAL_MLFLOW)} \
	  $(BIN)/prefect worker start --pool $(POOL)

deploy: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-$(LOCAL_API)} $(BIN)/prefect work-pool create $(POOL) --type process 2>/dev/null || true
	PREFECT_API_URL=$${PREFECT_API_URL:-$(LOCAL_API)} LMFORGE_PROJECT_DIR=$(CURDIR) PATH=$(CURDIR)/$(BIN):$$PATH \
	  $(BIN)/prefect --no-prompt deploy --all

# DEPLOYMENT picks another one of prefect.yaml, e.g. DEPLOYMENT=data/tiny-dask (shards on a Dask LocalCluster)
run-deployment: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-$(LOCAL_API)} $(BIN)/prefect deployment run '$(or $(DEPLOYMENT),lifecycle/$(PRESET))' --watch

# Also installs the `bench` extra (Faker and the PII peers, for bench_pii).
bench: $(STAMP)
	$(PIP) install -q -e '.[dev,bench]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m bench.run $(BENCH)

# A few pretraining steps of the `small` model on every GPU (NCCL, bf16, FSDP2, torch.compile), a short SFT
# and a PPO step, in at most 5 minutes; prints MFU and memory. No GPU: the CPU fallback (gloo, fp32, tiny).
gpu-check: $(STAMP)
	$(BIN)/python infra/gpu_check.py

LINT_DIRS := conf tasks flows tests bench

# Both checks run (and report) even when the first fails.
lint: $(STAMP)
	@status=0; \
	$(BIN)/ruff check $(LINT_DIRS) || status=1; \
	$(BIN)/ruff format --check $(LINT_DIRS) || status=1; \
	exit $$status

# mypy with pyproject.toml's [tool.mypy]: strict on conf/, tasks/common/ and flows/.
typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format $(LINT_DIRS)
	$(BIN)/ruff check --fix $(LINT_DIRS)

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache *.egg-info build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
