# Every target works on a fresh clone: the first one that needs Python creates .venv and installs mopt.
# On a GPU runner, bring the CUDA stack:  make compare TORCH_SPEC=torch EXTRAS=dev,precision,tensorrt
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 resolves to the CPU wheel on CPU machines; an unpinned torch pulls several GB of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,precision,serve
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
REPORT ?= reports/latest
PYTEST_ARGS ?=

.PHONY: setup test compare bench lint clean checkpoint

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The main job: checkpoint -> export -> simplify -> (TensorRT engine) -> compare -> bench -> report.
compare: setup
	$(BIN)/mopt pipeline --checkpoint checkpoints/cvunet.pth --report $(REPORT)

bench: setup
	$(BIN)/mopt bench --backend torch,onnxruntime --batch 1,8 --size 512x512 --threads 2 --json $(REPORT)/bench.json

# Re-train the bundled checkpoint (about 30 minutes on 2 idle CPU cores); see README "The bundled checkpoint".
# One thread: identical weights for a given seed, and no slowdown from thread contention on a busy machine.
checkpoint: setup
	$(BIN)/mopt train --synthetic 4000 --size 128x128 --epochs 9 --batch 8 --lr 2e-3 --seed 0 --threads 1 -o checkpoints/cvunet.pth

lint: setup
	$(BIN)/ruff check optimize architectures tests

clean:
	rm -rf $(VENV) engines/*.onnx engines/*.plan engines/*.json reports
