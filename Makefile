# Local development and the Docker stack. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NUM_WORKERS ?= 2
# Gateway processes sharing PORT (the images run as many gunicorn workers).
GATEWAY_PROCESSES ?= 1
PORT ?= 8080
GATEWAY_URL ?= http://127.0.0.1:$(PORT)

# `make docs` serves the documentation site on DOCS_PORT; `make docs-build` writes it to DOCS_SITE_DIR.
DOCS_PORT ?= 8001
DOCS_SITE_DIR ?= build/site

.DEFAULT_GOAL := help
.PHONY: help install run test train smoke lint docs docs-build bench bench-jobs chaos gpu-wheels bench-gpu

# The name column is as wide as the longest target name.
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} \
		{ names[NR] = $$1; helps[NR] = $$2; if (length($$1) > width) width = length($$1) } \
		END { for (i = 1; i <= NR; i++) printf "  \033[36m%-" width "s\033[0m  %s\n", names[i], helps[i] }'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[worker,dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv and install the project with the CPU worker and dev tools

# Several models, one pool each: MODELS="module:Class=N,module2:Other" (=N workers, default 1; @folder after
# the class: that pool's MODEL_ARTIFACTS). Set, it replaces NUM_WORKERS and MODEL; unset, one model as before.
MODELS ?=

run: install ## Start GATEWAY_PROCESSES gateways + NUM_WORKERS workers (+ sidecars) locally on PORT, in the foreground; MODELS="a:A=2,b:B" for one pool per model
	$(PY) -m launcher --workers $(NUM_WORKERS) --port $(PORT) --gateway-processes $(GATEWAY_PROCESSES)$(if $(MODELS), --models "$(MODELS)")

test: install ## Run the whole test suite
	$(PY) -m pytest

train: install ## Train the served model (its fit on its training_data()) into MODEL_ARTIFACTS
	$(PY) -m worker.train

smoke: ## Curl a running stack (GATEWAY_URL, default http://127.0.0.1:8080)
	@GATEWAY_URL=$(GATEWAY_URL) bash scripts/smoke.sh

bench: install ## Benchmark the stack (bench/results/, docs/benchmarks.md, a PNG), then the job path
	$(PY) -m bench $(BENCH_ARGS)
	$(MAKE) bench-jobs

bench-jobs: install ## 1,000 concurrent jobs per deployment: jobs/s, p50/p99; and a 100,000-row job against /batch_predict
	$(PY) -m bench.jobs_bench --stack all $(JOBS_BENCH_ARGS)

gpu-wheels: install ## Download into build/gpu-wheels what a GPU machine without network lacks (wheels for Python 3.12, wrk): docs/gpu.md
	$(PY) -m bench.gpu.carry $(GPU_WHEELS_ARGS)

bench-gpu: ## On a GPU machine: install the carried wheels, measure the stack on the GPU(s) (bench/results/gpu.json, .md); BENCH_GPU_ARGS
	$(PYTHON) -m bench.gpu $(BENCH_GPU_ARGS)

chaos: install ## Break local stacks under load (kill -9, SIGTERM, hang, gateway restart, overload, worker crash loop, sidecar kill, broker, store and database outages); CHAOS_ARGS="--scenarios database database-wipe" for some: docs/reliability.md
	$(PY) -m bench.chaos $(CHAOS_ARGS)

lint: install ## Ruff over the code
	$(VENV)/bin/ruff check common gateway worker jobs launcher inference_client bench tests deploy

docs: install ## Serve the documentation site on http://127.0.0.1:8001 (DOCS_PORT), rebuilt on every edit (MkDocs)
	$(VENV)/bin/mkdocs serve -a 127.0.0.1:$(DOCS_PORT)

docs-build: install ## Build the documentation site into DOCS_SITE_DIR (build/site); a warning fails it
	$(VENV)/bin/mkdocs build --strict --site-dir $(DOCS_SITE_DIR)

# --- Docker: the whole system in containers (docs/docker.md) ------------------
# docker-compose.yml runs on the CPU, docker-compose.gpu.yml runs one worker per
# GPU; both are one compose project, so one stack runs at a time. Needs Docker
# with Compose v2 (`docker compose`). .env holds the passwords: the first
# docker target writes it from .env.example with random ones.
DOCKER ?= docker
COMPOSE ?= $(DOCKER) compose
COMPOSE_CPU = $(COMPOSE) -f docker-compose.yml
COMPOSE_GPU = $(COMPOSE) -f docker-compose.gpu.yml
# The stack that logs, restart, info and rebuild-* act on: the GPU one while its
# workers run, else the CPU one (STACK=cpu|gpu to choose). Asked once, on first use.
ifeq ($(origin STACK), undefined)
STACK = $(eval STACK := $(shell $(COMPOSE_GPU) ps --services --status running 2>/dev/null | grep -q '^worker-gpu' && echo gpu || echo cpu))$(STACK)
endif
COMPOSE_STACK = $(if $(filter gpu,$(STACK)),$(COMPOSE_GPU),$(COMPOSE_CPU))
# Seconds `up` waits for every healthcheck; a first start compiles the model.
WAIT_TIMEOUT ?= 900

.PHONY: build build-gpu up up-gpu down logs logs-gateway logs-workers restart clean info \
	scale-workers rebuild-worker rebuild-gateway check-containers docker-urls docker-preflight

.env:
	@$(PYTHON) -c "import base64, re, secrets; text = open('.env.example').read(); \
		text = re.sub(r'(?m)^(\w*PASSWORD|\w*API_KEY|WORKER_ADMIN_TOKEN)=(?=\n)', lambda m: m.group(1) + '=' + secrets.token_hex(16), text); \
		text = re.sub(r'(?m)^WEBHOOK_SECRET=(?=\n)', lambda m: 'WEBHOOK_SECRET=whsec_' + base64.b64encode(secrets.token_bytes(32)).decode(), text); \
		open('.env', 'w').write(text)"
	@chmod 600 .env
	@echo "Wrote .env from .env.example, with random passwords, API keys and webhook secret."

build: .env ## Build the gateway and CPU worker images
	$(COMPOSE_CPU) build

build-gpu: .env ## Build the gateway and CUDA worker images
	$(COMPOSE_GPU) build

# Before anything else, one sentence on what is missing: Compose v2, or a running engine.
docker-preflight:
	@version=$$($(COMPOSE) version --short 2>/dev/null) && case "$$version" in ""|1.*|v1.*) false;; esac \
		|| { echo "Docker Compose v2 is missing: install Docker with its compose plugin (https://docs.docker.com/compose/install/), then run make again."; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 \
		|| { echo "No Docker engine answers: start it (sudo systemctl start docker, or open Docker Desktop) and check that docker info works, then run make again."; exit 1; }

up: docker-preflight .env ## Start the CPU stack (gateway, 2 workers, sidecars, RabbitMQ, PostgreSQL, MinIO), wait until healthy, print the URLs
	$(COMPOSE_CPU) up -d --remove-orphans --wait --wait-timeout $(WAIT_TIMEOUT)
	@$(MAKE) --no-print-directory docker-urls STACK=cpu

up-gpu: docker-preflight .env ## Start the GPU stack (one worker per GPU), wait until healthy, print the URLs
	$(COMPOSE_GPU) up -d --remove-orphans --wait --wait-timeout $(WAIT_TIMEOUT)
	@$(MAKE) --no-print-directory docker-urls STACK=gpu

down: .env ## Stop the stack (CPU or GPU) and remove its containers; volumes are kept
	$(COMPOSE_CPU) --profile monitoring down --remove-orphans

logs: .env ## Follow the logs of every service
	$(COMPOSE_STACK) logs -f --tail=100

logs-gateway: .env ## Follow the gateway's logs
	$(COMPOSE_STACK) logs -f --tail=100 gateway

logs-workers: .env ## Follow the workers' and sidecars' logs
	$(COMPOSE_STACK) logs -f --tail=100 $$($(COMPOSE_STACK) config --services | grep -E '^(worker|sidecar)')

restart: .env ## Restart every service of the running stack
	$(COMPOSE_STACK) restart

clean: .env ## Stop the stack, delete its volumes (queues, objects, XLA cache) and the images built here
	$(COMPOSE_CPU) --profile monitoring down --volumes --remove-orphans
	-docker image rm $$({ $(COMPOSE_CPU) config --images; $(COMPOSE_GPU) config --images; } | grep '^jax-inference-gateway/' | sort -u)

info: .env ## Show the containers and their health, the URLs, and the gateway's view of its workers
	@$(COMPOSE_STACK) ps
	@$(MAKE) --no-print-directory docker-urls STACK=$(STACK)
	@gateway=$$($(COMPOSE_STACK) port gateway 8080 2>/dev/null | sed -E 's/^(0\.0\.0\.0|\[::\]):/localhost:/'); \
	echo; curl -sS "http://$$gateway/gateway/health" && echo && curl -sS "http://$$gateway/gateway/info" && echo \
	|| echo "The gateway does not answer: make up, or make logs-gateway."

scale-workers: .env ## Run N CPU workers: make scale-workers N=4 (the gateway finds them by DNS)
	@test -n "$(N)" || { echo "Usage: make scale-workers N=4"; exit 2; }
	@test "$(STACK)" = cpu || { echo "The GPU stack runs one worker per GPU: copy a worker-gpuN block (docs/docker.md)."; exit 2; }
	$(COMPOSE_CPU) up -d --no-recreate --wait --wait-timeout $(WAIT_TIMEOUT) --scale worker=$(N)

rebuild-worker: .env ## Rebuild the worker image and replace the workers and sidecars (after editing worker/)
	$(COMPOSE_STACK) up -d --build --no-deps --wait --wait-timeout $(WAIT_TIMEOUT) \
		$$($(COMPOSE_STACK) config --services | grep -E '^(worker|sidecar)')

rebuild-gateway: .env ## Rebuild the gateway image and replace the gateway
	$(COMPOSE_STACK) up -d --build --no-deps --wait --wait-timeout $(WAIT_TIMEOUT) gateway

check-containers: install ## Validate the compose files, lint the Dockerfiles, run tests/containers/ (no engine needed)
	PYTHON=$(PY) bash scripts/check_containers.sh

# --- Kubernetes (docs/kubernetes.md) ------------------------------------------
.PHONY: kubernetes-model kubernetes-models check-kubernetes

# The one place the manifests learn the served model: MODEL (default worker.model, what
# worker/model.py holds). Generated, not committed: run it before the first kubectl apply and after
# changing either; a file it wrote for another model fails tests/kubernetes until then.
kubernetes-model: install ## Write deploy/kubernetes/base/served-model.env from MODEL: the workers' model and the queue KEDA watches
	MODELS= $(PY) deploy/kubernetes/served_model.py

# Several models: the first entry goes to served-model.env, each further one becomes a worker Deployment and
# KEDA ScaledObject of its own in components/models (=N: its minReplicaCount). `make kubernetes-model` goes back to one.
kubernetes-models: install ## Write served-model.env and components/models from MODELS="a:A,b:B=3": one worker pool per model
	@test -n "$(MODELS)" || { echo 'Usage: make kubernetes-models MODELS="module:Class,module2:Other=3"'; exit 2; }
	MODELS="$(MODELS)" $(PY) deploy/kubernetes/served_model.py

check-kubernetes: kubernetes-model ## Render both Kubernetes overlays, validate every object, run tests/kubernetes/ (no cluster needed)
	$(PY) -m pytest tests/kubernetes -q

docker-urls:
	@url() { $(COMPOSE_STACK) port "$$1" "$$2" 2>/dev/null | head -n 1 | sed -E 's/^(0\.0\.0\.0|\[::\]):/localhost:/; s|^|http://|'; }; \
	gateway=$$(url gateway 8080); prometheus=$$(url prometheus 9090); \
	echo; echo "The $(STACK) stack is up:"; \
	echo "  Gateway         $$gateway   (try: make smoke GATEWAY_URL=$$gateway)"; \
	echo "  API docs        $$gateway/docs"; \
	echo "  API key         API_KEY in .env   (Authorization: Bearer <key> or X-API-Key: <key>)"; \
	echo "  RabbitMQ UI     $$(url rabbitmq 15672)   (RABBITMQ_USER / RABBITMQ_PASSWORD in .env)"; \
	echo "  MinIO console   $$(url minio 9001)   (MINIO_ROOT_USER / MINIO_ROOT_PASSWORD in .env)"; \
	if [ -n "$$prometheus" ]; then \
		echo "  Prometheus      $$prometheus"; \
		echo "  Grafana         $$(url grafana 3000)   (admin / GRAFANA_ADMIN_PASSWORD in .env)"; \
	fi
