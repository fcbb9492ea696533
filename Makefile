# The two commands of the README: `make run` and `make test`. Both create the
# virtual environment and install what they need themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test install proto check lint typecheck unit integration bench chaos clean image cluster cluster-down

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

install: $(STAMP)

# A local cluster (etcd, scheduler, 3 agents) with the example app, in the foreground.
run: install
	$(BIN)/paas up --agents 3 --deploy examples/hello --scale web=3 worker=2

# The whole test suite: stubs up to date, lint, types, then unit, integration and
# cluster tests, two files at a time (pytest-xdist; most tests wait on real processes
# and timeouts, not CPU; three at a time was faster, 18 min, but flaky on 2 cores).
test: install
	# strict editable mode links files, so new modules need a fresh install
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	$(BIN)/python proto/generate.py --check
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -n 2 --dist loadfile

proto: install
	$(BIN)/python proto/generate.py

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

bench: install
	$(BIN)/python bench/scale.py

# A soak of mixed random faults with the invariants checked all along (SEED=N to replay).
chaos: install
	$(BIN)/python bench/chaos.py $(if $(SEED),--seed $(SEED))

# The one image of deploy/Dockerfile (etcd, scheduler, agent, CLI), built with no
# registry: paas-base:bookworm by debootstrap when missing, or BASE_IMAGE=IMAGE.
IMAGE ?= paas:dev
image: install
	IMAGE=$(IMAGE) PYTHON=$(BIN)/python deploy/build-image.sh

# The compose cluster of deploy/docker-compose.yml (3 etcd, 2 schedulers, 3 agents,
# TLS on), up and healthy; prints the PAAS_SCHEDULER and PAAS_CREDENTIALS lines.
cluster: image
	PAAS_IMAGE=$(IMAGE) PAAS=$(BIN)/paas deploy/cluster.sh up

cluster-down:
	PAAS_IMAGE=$(IMAGE) deploy/cluster.sh down

clean:
	rm -rf $(VENV) build *.egg-info
