# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test test-qgis qgis-plugin lint install clean

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
	$(MAKE) --no-print-directory test-qgis

# The QGIS plugin's tests run under the system Python that has QGIS (apt-get install python3-qgis
# python3-pytest), offscreen, driving this checkout's samadapt. Without QGIS they are skipped with a
# note, except under CI=true, where that is a failure.
QGIS_PYTHON ?= /usr/bin/python3
test-qgis: $(STAMP)
	@if $(QGIS_PYTHON) -c "import qgis.core, pytest" 2>/dev/null; then \
		QT_QPA_PLATFORM=offscreen SAMADAPT_EXECUTABLE="$(abspath $(BIN))/samadapt" \
			$(QGIS_PYTHON) -m pytest -q -c qgis_plugin/pytest.ini qgis_plugin/tests; \
	elif [ "$$CI" = "true" ]; then \
		echo "the QGIS plugin tests need $(QGIS_PYTHON) with QGIS and pytest (apt-get install python3-qgis python3-pytest)"; exit 1; \
	else \
		echo "QGIS plugin tests skipped: $(QGIS_PYTHON) has no QGIS or pytest (apt-get install python3-qgis python3-pytest)"; \
	fi

# The plugin's ZIP, for QGIS's "Plugins > Manage and Install Plugins > Install from ZIP".
qgis-plugin:
	$(PYTHON) qgis_plugin/build_zip.py dist/samadapt_qgis.zip

# ruff (style, imports, bugbear) and mypy (types) over the code; both must pass.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks qgis_plugin
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-output
