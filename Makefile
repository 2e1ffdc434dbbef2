# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed first, pinned by constraints.txt, so nothing else can pull a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch
	$(PIP) install --quiet -c constraints.txt -e ".[dev,train,hf,dask,service,onnx]"
	# The official SAM 2 code, a test-only reference: without its dependencies (torchvision, hydra).
	SAM2_BUILD_CUDA=0 $(PIP) install --quiet --no-deps --no-build-isolation -c constraints.txt sam2==1.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/samadapt demo --out demo-output

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

# ruff (style, imports, bugbear) and mypy (types) over the code; both must pass.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-output
