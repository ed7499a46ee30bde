# Rapport: `make run` starts everything on the embedded default, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SIZE ?= full
PYTEST_ARGS ?=

.PHONY: install run test test-unit lint bench docs clean redis-server chromium wrk prometheus compose-config docker-compose k8s-models

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

# Debian packages the stack, the tests and the bench need, installed when missing and we can.
define apt_install
	@command -v $(1) >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(2) (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	else \
	  echo "$(1) is missing: $(3)" >&2; $(4); \
	fi
endef

# The system's redis-server backs the embedded stack.
redis-server:
	$(call apt_install,redis-server,redis-server,install it (apt-get install redis-server) or set REDIS_URL,test -n "$$REDIS_URL")

# The write benchmark drives HTTP load with a compiled generator.
wrk:
	$(call apt_install,wrk,wrk,the write benchmark needs it (apt-get install wrk),exit 1)

# The dashboard's browser test drives Debian's Chromium (Playwright's own browser download is
# not used).
chromium:
	$(call apt_install,chromium,chromium,the browser test will be skipped (apt-get install chromium),true)

# The alert rules' unit tests (promtool) and the real-Prometheus e2e test.
prometheus:
	$(call apt_install,promtool,--no-install-recommends prometheus,the alert-rule and Prometheus tests need it (apt-get install prometheus),exit 1)

# The compose files' validation (`docker-compose config`): Debian's compose CLI.
docker-compose:
	$(call apt_install,docker-compose,docker-compose,the compose files' validation will be skipped (apt-get install docker-compose),true)

# Strimzi's resource schemas (compiled from its CRDs, kubernetes-models on npm) for the
# scaled manifests' check; nothing of it is committed.
K8S_MODELS := .cache/k8s-models
k8s-models:
	@test -d $(K8S_MODELS)/node_modules/@kubernetes-models/strimzi-kafka-operator && exit 0; \
	if command -v npm >/dev/null; then \
	  npm install --silent --prefix $(K8S_MODELS) --no-save --no-audit --no-fund --loglevel=error \
	    @kubernetes-models/strimzi-kafka-operator@1.0.1; \
	else echo "npm is missing: the Strimzi schema check will be skipped" >&2; fi

run: install redis-server
	$(BIN)/rapport run $(if $(filter 1 yes true,$(DEMO)),--demo) $(if $(REPLICAS),--replicas $(REPLICAS))

test: install redis-server chromium prometheus docker-compose k8s-models
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check shared services rapport tests bench
	$(BIN)/ruff format --check shared services rapport tests bench
	$(BIN)/mypy shared services rapport

bench: install redis-server wrk
	$(BIN)/python -m bench --size $(SIZE) $(if $(ONLY),--only $(ONLY))

# The event contract (AsyncAPI) and each service's OpenAPI, generated from the code.
docs: install
	$(BIN)/python -m rapport.docs docs

compose-config:
	@if docker compose version >/dev/null 2>&1; then docker compose config --quiet; \
	else docker-compose config --quiet; fi

clean:
	rm -rf .rapport .pytest_cache .mypy_cache .ruff_cache .hypothesis .cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
