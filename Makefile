# cloudcred: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCAL := .local
export PATH := $(CURDIR)/$(LOCAL)/bin:$(PATH)

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: $(VENV)/.installed ## Create the virtualenv with the project, its test and lint tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $@

.PHONY: envtest
envtest: install ## Build kube-apiserver, etcd and kubectl once (cached) and link them into .local/bin.
	$(PY) -m tests.envtest build
	@mkdir -p $(LOCAL)/bin
	@for name in kube-apiserver etcd kubectl; do \
	  ln -sf "$$($(PY) -m tests.envtest path $$name)" $(LOCAL)/bin/$$name; done

.PHONY: cluster-up
cluster-up: envtest ## Start the local control plane in the background, install the CRDs.
	$(PY) -m tests.envtest up $(LOCAL)

.PHONY: cluster-down
cluster-down: ## Stop the local control plane started by cluster-up.
	$(PY) -m tests.envtest down $(LOCAL)

.PHONY: crds
crds: install ## Regenerate crds/ from the pydantic models in operator/cloudcred/api.
	$(PY) -m cloudcred.api.crd crds

.PHONY: test
test: envtest ## Run the test suite (starts its own control plane, or uses CLOUDCRED_TEST_KUBECONFIG).
	$(PY) -m pytest

.PHONY: lint
lint: install ## Check style and types (ruff, mypy).
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/ruff format --check operator tests bench
	$(VENV)/bin/mypy

.PHONY: format
format: install ## Reformat the code with ruff.
	$(VENV)/bin/ruff check --fix operator tests bench
	$(VENV)/bin/ruff format operator tests bench

.PHONY: run
run: install ## Run the operator against $$KUBECONFIG, or against the local control plane (started if needed).
	@if [ -z "$$KUBECONFIG" ] && [ ! -f $(LOCAL)/controlplane.json ]; then $(MAKE) --no-print-directory cluster-up; fi
	KUBECONFIG=$${KUBECONFIG:-$(CURDIR)/$(LOCAL)/kubeconfig} $(VENV)/bin/cloudcred run --standalone --all-namespaces

.PHONY: bench-bind
bench-bind: envtest ## Measure the time from creating a Cluster to its credential listing it (50 clusters).
	$(PY) -m bench.bind_latency 50

.PHONY: clean
clean: cluster-down ## Remove the virtualenv and local state (the binary cache stays).
	rm -rf $(VENV) $(LOCAL) .pytest_cache .mypy_cache .ruff_cache
