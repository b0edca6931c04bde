# Every target works on a fresh clone: the first one that needs Python creates .venv and installs mopt.
# On a GPU runner, bring the CUDA stack:  make compare TORCH_SPEC=torch EXTRAS=dev,precision,tensorrt
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 resolves to the CPU wheel on CPU machines; an unpinned torch pulls several GB of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,precision,serve,ray
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
REPORT ?= reports/latest
PYTEST_ARGS ?=

.PHONY: setup test compare bench lint clean checkpoint recipes

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

# Re-train the bundled checkpoint; see README "The bundled checkpoint". Two stages: 9 epochs on 128x128 crops
# (about 40 minutes on one idle core), then 4 epochs fine-tuning on composites rendered at up to 4x that scale
# (about 12 minutes), so that the model also holds up on 320-512 px inputs. One thread: identical weights for
# a given seed, and no slowdown from thread contention on a busy machine.
CHECKPOINT_BASE := engines/cvunet.base.pth
checkpoint: setup
	$(BIN)/mopt train --synthetic 4000 --size 128x128 --epochs 9 --batch 8 --lr 2e-3 --seed 0 --threads 1 -o $(CHECKPOINT_BASE)
	$(BIN)/mopt train --init $(CHECKPOINT_BASE) --synthetic 4000 --size 128x128 --epochs 4 --batch 8 --lr 1e-3 \
		--seed 1 --threads 1 --max-scale 4 -o checkpoints/cvunet.pth

# Re-make the FP16/INT8 precision recipes that `make compare` picks up beside the checkpoint (about 7 minutes).
recipes: setup
	$(BIN)/mopt export checkpoints/cvunet.pth && $(BIN)/mopt simplify
	$(BIN)/mopt debug precision engines/cvunet.sim.onnx --fp16 --budget mad=1e-3,max_abs=4e-3 --size 512x512 \
		--count 16 --threads 2 -o checkpoints/cvunet.fp16-recipe.json
	$(BIN)/mopt debug precision engines/cvunet.sim.onnx --int8 --budget mad=0.004 --size 512x512 --count 16 \
		--synthetic 32 --threads 2 -o checkpoints/cvunet.int8-recipe.json

lint: setup
	$(BIN)/ruff check optimize architectures tests

clean:
	rm -rf $(VENV) engines/*.onnx engines/*.plan engines/*.json reports
