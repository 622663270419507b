# make demo: set up .venv and run the main job (`edgekd run examples/pneumonia.yaml`) on the bundled chest X-rays.
# make test: set up (or refresh) .venv and run the test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekd-installed
RUNS ?= runs/pneumonia
DEMO_CONFIG ?= examples/pneumonia.yaml
DEMO_SET ?=
EDGEKD := $(BIN)/edgekd
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The main job on the bundled data, one command: `edgekd run examples/pneumonia.yaml` (teacher, no-teacher baseline,
# distilled student, pruned, INT8 / FP16 bundles, evaluation, benchmark, HTML report) into $(RUNS). Running it again
# skips the finished stages; DEMO_SET overrides keys, e.g. make demo DEMO_SET="--set student.train.epochs=8".
demo: venv
	$(EDGEKD) run $(DEMO_CONFIG) --out $(RUNS) $(DEMO_SET)

test: venv
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not gpu and not tensorrt"

test-all: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/lint-imports
	$(BIN)/ruff check edgekd tests benchmarks
	$(BIN)/ruff format --check edgekd tests benchmarks

clean:
	rm -rf $(RUNS) .pytest_cache .ruff_cache
