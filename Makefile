# make demo: set up .venv and run the main job on the bundled PneumoniaMNIST chest X-rays.
# make test: set up (or refresh) .venv and run the test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekd-installed
RUNS ?= runs/demo
DEMO_EPOCHS ?= 4
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/edgekd train --model small:resnet18 --data pneumoniamnist --epochs $(DEMO_EPOCHS) \
		--batch-size 128 --lr 2e-3 --augment medical --out $(RUNS)/teacher --json $(RUNS)/teacher.json
	$(BIN)/edgekd eval $(RUNS)/teacher --split test --json $(RUNS)/teacher-eval.json

test: venv
	$(BIN)/python -m pytest -q -m "not gpu and not tensorrt"

test-all: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check edgekd tests benchmarks
	$(BIN)/ruff format --check edgekd tests benchmarks

clean:
	rm -rf $(RUNS) .pytest_cache .ruff_cache
