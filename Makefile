# make demo: set up .venv and run the main job on the bundled PneumoniaMNIST chest X-rays.
# make test: set up (or refresh) .venv and run the test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekd-installed
RUNS ?= runs/demo
DEMO_EPOCHS ?= 4
STUDENT ?= small:resnet8x4
STUDENT_EPOCHS ?= 6
RECOVERY_EPOCHS ?= 2
EDGEKD := $(BIN)/edgekd
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The main job on the bundled data: teacher -> distilled student -> pruned -> INT8 / ONNX bundles -> benchmark.
demo: venv
	$(EDGEKD) train --model small:resnet18 --data pneumoniamnist --epochs $(DEMO_EPOCHS) --batch-size 128 \
		--lr 2e-3 --augment medical --out $(RUNS)/teacher --json $(RUNS)/teacher.json
	$(EDGEKD) eval $(RUNS)/teacher --split test --json $(RUNS)/teacher-eval.json
	$(EDGEKD) distill --student $(STUDENT) --teacher $(RUNS)/teacher --loss ce:1 --loss kd:1,T=4 \
		--cache-teacher --epochs $(STUDENT_EPOCHS) --out $(RUNS)/student --json $(RUNS)/student.json
	$(EDGEKD) prune $(RUNS)/student --target-macs 0.5 --steps 2 --round-to 8 --recovery-epochs $(RECOVERY_EPOCHS) \
		--out $(RUNS)/pruned --json $(RUNS)/pruned.json
	$(EDGEKD) quantize $(RUNS)/pruned --method ptq --target cpu-x86 --out $(RUNS)/int8 --json $(RUNS)/int8.json
	$(EDGEKD) export $(RUNS)/pruned --format onnx,onnx-fp16 --check tensorrt --out $(RUNS)/bundle \
		--json $(RUNS)/bundle.json
	$(EDGEKD) verify $(RUNS)/bundle
	$(EDGEKD) bench $(RUNS)/teacher $(RUNS)/student $(RUNS)/bundle $(RUNS)/int8 --backend ort --batch 1,32 \
		--min-s 1 --min-iters 20 --json $(RUNS)/bench.json --markdown $(RUNS)/bench.md

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
