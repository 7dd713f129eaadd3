# cloudcred: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCAL := .local
# Helm 4 (Helm 3 is out of support); built from the Go module proxy, no binary download.
HELM_VERSION ?= v4.3.1
HELM := $(LOCAL)/bin/helm
KIND_VERSION ?= v0.33.0
ACTIONLINT_VERSION ?= v1.7.12
IMAGE_REPO ?= ghcr.io/cloudcred/cloudcred
IMAGE_TAG ?= 0.1.0
IMAGE ?= $(IMAGE_REPO):$(IMAGE_TAG)
KIND_CLUSTER ?= cloudcred-e2e
export PATH := $(CURDIR)/$(LOCAL)/bin:$(PATH)

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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

.PHONY: helm
helm: ## Build helm (HELM_VERSION) from Go modules into .local/bin, if absent.
	@if [ "$$($(HELM) version --template '{{.Version}}' 2>/dev/null)" != "$(HELM_VERSION)" ]; then \
	  echo "building helm $(HELM_VERSION) into $(HELM)"; \
	  GOBIN=$(CURDIR)/$(LOCAL)/bin CGO_ENABLED=0 go install -trimpath \
	    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$(HELM_VERSION)" \
	    helm.sh/helm/v4/cmd/helm@$(HELM_VERSION); \
	fi

.PHONY: kind
kind: ## Build kind (KIND_VERSION) from Go modules into .local/bin, if absent (for test-e2e).
	@if [ "$$(kind version -q 2>/dev/null)" != "$(KIND_VERSION)" ]; then \
	  GOBIN=$(CURDIR)/$(LOCAL)/bin CGO_ENABLED=0 go install sigs.k8s.io/kind@$(KIND_VERSION); fi

.PHONY: actionlint
actionlint: ## Build actionlint (ACTIONLINT_VERSION) from Go modules into .local/bin, if absent.
	@if [ "$$($(LOCAL)/bin/actionlint -version 2>/dev/null | head -1)" != "$(ACTIONLINT_VERSION)" ]; then \
	  echo "building actionlint $(ACTIONLINT_VERSION) into $(LOCAL)/bin"; \
	  GOBIN=$(CURDIR)/$(LOCAL)/bin CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
	    github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION); \
	fi

# The console's browser test drives Debian's Chromium headless and checks its pages with
# axe-core (from npm); each part skips, saying why, where its tool cannot be installed.
AXE_VERSION ?= 4.14.1
# pytest-xdist workers of `make test`: each starts its own control plane, and most tests
# wait on the operator rather than compute, so three fit two cores. One against a cluster
# of your own (CLOUDCRED_TEST_KUBECONFIG), which the workers would share.
TEST_WORKERS ?= $(if $(CLOUDCRED_TEST_KUBECONFIG),1,3)
AXE_DIR := $(LOCAL)/axe
.PHONY: browser
browser: ## Install Debian's chromium (and chromium-driver) and axe-core (AXE_VERSION) for the console's browser test, if absent.
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver >/dev/null; } \
	    || echo "chromium could not be installed: the console's browser test will skip"; \
	else \
	  echo "chromium is not installed (as root: apt-get install chromium chromium-driver);" \
	    "the console's browser test will skip"; \
	fi
	@if grep -qs '"version": "$(AXE_VERSION)"' $(AXE_DIR)/node_modules/axe-core/package.json; then :; \
	elif command -v npm >/dev/null; then \
	  echo "installing axe-core $(AXE_VERSION) into $(AXE_DIR)"; \
	  npm install --prefix $(AXE_DIR) --no-save --no-audit --no-fund --loglevel=error \
	    axe-core@$(AXE_VERSION) >/dev/null \
	    || echo "axe-core could not be installed: the console's accessibility check will skip"; \
	else echo "npm is not installed: the console's accessibility check will skip"; fi

.PHONY: cluster-up
cluster-up: envtest ## Start the local control plane in the background, install the CRDs.
	$(PY) -m tests.envtest up $(LOCAL)

.PHONY: cluster-down
cluster-down: ## Stop the local control plane started by cluster-up.
	$(PY) -m tests.envtest down $(LOCAL)

.PHONY: crds
crds: install ## Regenerate crds/ from the pydantic models in operator/cloudcred/api (and the chart's copies).
	$(PY) -m cloudcred.api.crd crds
	$(PY) -m cloudcred.api.docs crds docs/api.md
	$(MAKE) --no-print-directory chart-files

# The chart carries real copies (Flux packages a chart from Git without following
# symbolic links); tests/unit/test_chart_files.py keeps them identical.
CHART_DIR := charts/cloudcred
.PHONY: chart-files
chart-files: ## Copy crds/, deploy/admission/ and kopf's peering CRDs into the chart.
	@for pair in crds:files/crds deploy/admission:files/admission; do \
	  rm -rf "$(CHART_DIR)/$${pair#*:}" && cp -R "$${pair%%:*}" "$(CHART_DIR)/$${pair#*:}"; done
	@mkdir -p $(CHART_DIR)/crds && cp deploy/peering/crds.yaml $(CHART_DIR)/crds/kopf-peering.yaml

.PHONY: docs
docs: install ## Regenerate docs/api.md (the API reference) from crds/.
	$(PY) -m cloudcred.api.docs crds docs/api.md

# The image installs exactly these pins (pip --require-hashes); pins stay until
# `make lock LOCK_ARGS=--upgrade` (or --upgrade-package NAME) moves them.
LOCK_ARGS ?=
.PHONY: lock
lock: install ## Pin the image's Python dependencies with hashes into requirements/ (pip-compile).
	@mkdir -p requirements
	$(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url \
	  --no-emit-find-links --extra gcp --extra azure --extra scaleway $(LOCK_ARGS) \
	  --output-file requirements/image.txt pyproject.toml
	$(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url \
	  --no-emit-find-links --allow-unsafe --only-build-deps --all-build-deps $(LOCK_ARGS) \
	  --output-file requirements/image-build.txt pyproject.toml

.PHONY: test
test: envtest helm actionlint browser ## Run the test suite (starts its own control plane, or uses CLOUDCRED_TEST_KUBECONFIG).
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal --cov --cov-report=term --cov-fail-under=72

.PHONY: lint
lint: install ## Check style and types (ruff, mypy).
	$(VENV)/bin/ruff check operator tests bench demo
	$(VENV)/bin/ruff format --check operator tests bench demo
	$(VENV)/bin/mypy

.PHONY: format
format: install ## Reformat the code with ruff.
	$(VENV)/bin/ruff check --fix operator tests bench demo
	$(VENV)/bin/ruff format operator tests bench demo

.PHONY: run
run: install ## Run the operator against $KUBECONFIG, or against the local control plane (started if needed).
	@if [ -z "$$KUBECONFIG" ] && [ ! -f $(LOCAL)/controlplane.json ]; then $(MAKE) --no-print-directory cluster-up; fi
	@if [ -n "$$KUBECONFIG" ]; then \
	  echo "Running the operator against KUBECONFIG=$$KUBECONFIG (install crds/ there first)."; \
	  exec $(VENV)/bin/cloudcred run --standalone --all-namespaces; \
	fi; \
	$(PY) -m demo.prepare $(LOCAL)/kubeconfig \
	  || { echo "is the local control plane down? make cluster-down, then make run" >&2; exit 1; }; \
	echo; \
	echo "Local control plane ready (CRDs and admission policies installed). From another terminal:"; \
	echo; \
	echo "  export KUBECONFIG=$(CURDIR)/$(LOCAL)/kubeconfig PATH=$(CURDIR)/$(LOCAL)/bin:\$$PATH"; \
	echo; \
	echo "The operator runs below until Ctrl-C; the control plane runs until make cluster-down."; \
	echo; \
	export KUBECONFIG=$(CURDIR)/$(LOCAL)/kubeconfig; \
	exec $(VENV)/bin/cloudcred run --standalone --all-namespaces

# CONSOLE_ARGS: more flags for cloudcred console (--port 8080, --no-browser, -n acme).
CONSOLE_ARGS ?=
.PHONY: console
console: install ## Serve the console page (cloudcred console -A) against $KUBECONFIG, or the local control plane (started if needed).
	@if [ -z "$$KUBECONFIG" ] && [ ! -f $(LOCAL)/controlplane.json ]; then $(MAKE) --no-print-directory cluster-up; fi
	@if [ -z "$$KUBECONFIG" ]; then export KUBECONFIG=$(CURDIR)/$(LOCAL)/kubeconfig; fi; \
	exec $(VENV)/bin/cloudcred console -A $(CONSOLE_ARGS)

.PHONY: demo
demo: envtest ## Guided tour, one command: local control plane, moto as a stand-in AWS, operator, samples.
	$(PY) -m demo

.PHONY: docker-build
docker-build: ## Build the operator's image, tagged IMAGE (needs Docker).
	docker build -t $(IMAGE) .

.PHONY: test-e2e
test-e2e: ## On kind: build and load the image, install the chart, run the suite against it (needs Docker and kind; skips without them).
	@if ! command -v docker >/dev/null; then \
	  echo "test-e2e skipped: docker is not installed (kind runs Kubernetes nodes as Docker containers)"; \
	elif ! docker info >/dev/null 2>&1; then \
	  echo "test-e2e skipped: docker is installed but its daemon does not answer (docker info failed)"; \
	elif ! command -v kind >/dev/null; then \
	  echo "test-e2e skipped: kind is not installed (\`make kind\` builds it into $(LOCAL)/bin)"; \
	else $(MAKE) --no-print-directory e2e-kind; fi

# The steps of test-e2e, once Docker and kind are known to be there.
.PHONY: e2e-kind
e2e-kind: install helm docker-build
	@mkdir -p $(LOCAL)
	kind get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER) || kind create cluster --name $(KIND_CLUSTER) --wait 180s
	kind get kubeconfig --name $(KIND_CLUSTER) > $(LOCAL)/kind-kubeconfig
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)
	image='$(IMAGE)'; KUBECONFIG=$(LOCAL)/kind-kubeconfig $(HELM) upgrade --install cloudcred \
	  charts/cloudcred --namespace cloudcred-system --create-namespace --wait --timeout 5m \
	  --set image.repository="$${image%:*}" --set image.tag="$${image##*:}" \
	  --set 'namespaces={e2e-*}' --set logLevel=DEBUG
	CLOUDCRED_TEST_KUBECONFIG=$(CURDIR)/$(LOCAL)/kind-kubeconfig $(PY) -m pytest tests/integration tests/e2e

.PHONY: kind-down
kind-down: ## Delete the kind cluster made by test-e2e.
	kind delete cluster --name $(KIND_CLUSTER)

# make test runs the same tests at the sizes in their defaults (tests/integration/test_faults.py,
# test_holding.py, test_rollout.py); these are the full ones.
.PHONY: test-long
test-long: envtest helm ## The fault suite at full size (200 clusters, 10 kills, a 70 s outage, 400 fuzzed specs, SIGKILL takeovers, a restart at 2000 clusters, a minute idle, /healthz in a black hole, a crash after every write of a rotation).
	CLOUDCRED_FAULT_CLUSTERS=200 CLOUDCRED_FAULT_PLANE_CLUSTERS=66 CLOUDCRED_FAULT_KILLS=10 \
	CLOUDCRED_FAULT_DOWNTIME=70 CLOUDCRED_FAULT_EXAMPLES=400 CLOUDCRED_FAULT_TAKEOVER=kill \
	CLOUDCRED_FAULT_IDLE=60 CLOUDCRED_FAULT_HEALTHZ=1 CLOUDCRED_HOLD_CLUSTERS=2000 \
	CLOUDCRED_HOLD_WINDOW=30 CLOUDCRED_FAULT_CRASH_POINTS=all $(PY) -m pytest -m faults
	CLOUDCRED_ROTATION_RESUME=1 $(PY) -m pytest tests/integration/test_rotation.py

.PHONY: bench
bench: envtest ## Benchmark against a plain-client baseline (BENCH_CLUSTERS=1000 BENCH_LARGE=5000 BENCH_HUGE=10000, 0 skips; BENCH_BROKEN=1000 broken credentials); writes bench/results.json.
	$(PY) -m bench.run

.PHONY: bench-console
bench-console: install ## Time the console's pages rendered from a cache of 1000 credentials and 10000 clusters (budget: 1 s each).
	$(PY) -m bench.console 1000 10000 5

.PHONY: bench-bind
bench-bind: envtest ## Measure the time from creating a Cluster to its credential listing it (50 clusters).
	$(PY) -m bench.bind_latency 50

.PHONY: clean
clean: cluster-down ## Remove the virtualenv and local state (the binary cache stays).
	rm -rf $(VENV) $(LOCAL) .pytest_cache .mypy_cache .ruff_cache
