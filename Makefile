# cryoflow: the two commands a fresh machine needs.
#   make demo   simulate the demo dataset and run the pipeline on it (report in demo_run/index.html)
#   make test   run the test suite (ruff + pytest)
#   make image  build the container image cryoflow:cpu (podman + debootstrap, as root)
# Both create the virtual environment (.venv) when missing.

PYTHON ?= python3
VENV ?= .venv
# torch for this machine. The default is right for a CPU-only machine whose pip finds the CPU
# wheel (as on our CI machines); elsewhere see README "Installing torch".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.cryoflow-installed

.PHONY: demo test install lint clean-demo image

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cryoflow demo --out demo_run

test: $(STAMP)
	$(BIN)/ruff check cryoflow tests
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check cryoflow tests
	$(BIN)/ruff format --check cryoflow tests

clean-demo:
	rm -rf demo_run

# the container image the CWL tools name (cryoflow:cpu), with podman, as root: docker/README.md
image: $(STAMP)
	docker/build.sh
