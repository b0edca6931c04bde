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
# `make compare CHECKPOINT=my.pth REPORT=reports/mine` runs the pipeline on that checkpoint only.
PYTEST_ARGS ?=

# The TensorRT 10.x type stubs the conformance test parses (tests/test_tensorrt_conformance.py). Fetched as a wheel,
# without dependencies, and never installed: the package requires tensorrt==10.13.0.35, a placeholder that downloads
# TensorRT from NVIDIA's own index, and installed it would make `import tensorrt` succeed on an empty namespace.
TENSORRT_STUBS ?= tensorrt-stubs==10.13.0.35.1

.PHONY: setup test compare bench lint clean checkpoint recipes gpu-check gpu-check-wheels recipes-selfie checkpoint-selfie mutation

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps --dest $(VENV)/share/mopt \
		"$(TENSORRT_STUBS)"
	touch $@

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The main job: checkpoint -> export -> simplify -> (TensorRT engine) -> compare -> bench -> report.
# Both bundled models, each in its own report folder and section of $(REPORT)/summary.md: cvunet.pth (the
# mission's architecture, on generated composites at 512x512) and selfie.pth (the pretrained person model, on the
# bundled real photos at its 256x256). Both always run; the target fails if either does.
compare: setup
ifdef CHECKPOINT
	$(BIN)/mopt pipeline --checkpoint $(CHECKPOINT) --report $(REPORT)
else
	$(BIN)/python -c "from optimize.sample_photos import sample_photo_folder; sample_photo_folder('$(SELFIE_PHOTOS)')"
	status=0; \
	$(BIN)/mopt pipeline --checkpoint checkpoints/cvunet.pth --report $(REPORT)/cvunet || status=1; \
	$(BIN)/mopt pipeline --checkpoint checkpoints/selfie.pth --images $(SELFIE_PHOTOS) --size 256x256 \
		--bench-size 256x256 --report $(REPORT)/selfie || status=1; \
	$(BIN)/python -c "from optimize.report import combined_summary; print(combined_summary('$(REPORT)', ['cvunet', 'selfie']))"; \
	exit $$status
endif

bench: setup
	$(BIN)/mopt bench --backend torch,onnxruntime,openvino --batch 1,8 --size 512x512 --threads 2 --json $(REPORT)/bench.json

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
	$(MAKE) recipes-selfie

# The bundled MediaPipe selfie model, converted from the committed original (see third_party/mediapipe/README.md).
checkpoint-selfie: setup
	$(BIN)/python -c "from optimize.tflite_import import bundled_tflite as b, checkpoint_from_tflite as c; \
		c(b('mediapipe-selfie'), 'checkpoints/selfie.pth'); c(b('mediapipe-selfie-landscape'), 'checkpoints/selfie-landscape.pth')"

# Its FP16/INT8 recipes, judged on the bundled real photos at the native 256x256 (about 10 minutes). INT8
# calibrates on the same photos.
SELFIE_PHOTOS := engines/photos
recipes-selfie: setup
	$(BIN)/python -c "from optimize.sample_photos import sample_photo_folder; sample_photo_folder('$(SELFIE_PHOTOS)')"
	$(BIN)/mopt export checkpoints/selfie.pth -o engines/selfie.onnx && $(BIN)/mopt simplify engines/selfie.onnx
	$(BIN)/mopt debug precision engines/selfie.sim.onnx --fp16 --budget mad=1e-3,max_abs=4e-3 --size 256x256 \
		--images $(SELFIE_PHOTOS) --count 3 --max-steps 600 --threads 2 -o checkpoints/selfie.fp16-recipe.json
	$(BIN)/mopt debug precision engines/selfie.sim.onnx --int8 --budget mad=0.004 --size 256x256 \
		--images $(SELFIE_PHOTOS) --count 3 --threads 2 -o checkpoints/selfie.int8-recipe.json

# Everything that needs an NVIDIA GPU (H100/H200: a few minutes): the gpu/tensorrt tests, bench at 1024x1024 batch 1
# and 8 (torch-cuda FP32, torch-cuda-fp16 with CUDA graphs, TensorRT FP16 where it imports), compare on the GPU and
# the model's memory-bandwidth floor; one JSON and one Markdown report named after the GPU in GPU_CHECK_OUT. It uses
# the machine's own python3 (CUDA PyTorch, onnx, onnxruntime, numpy), not .venv (a CPU PyTorch). Without a GPU it
# prints one line and exits 2. Wheels the GPU machine may lack (cp312, manylinux x86_64, 42.9 MB together) are
# installed from GPU_CHECK_WHEELS only when their module is missing; `make gpu-check-wheels` fetches them here:
#   polygraphy-0.53.6-py3-none-any.whl                                   0.5 MB  compare (not on the H200 image)
#   scipy-1.17.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64  35.2 MB compare's matte metrics
#   pillow-13.0.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64 7.1 MB  compare's inputs
GPU_PYTHON ?= python3
GPU_CHECK_OUT ?= reports/gpu-check
GPU_CHECK_WHEELS ?= .whl
GPU_CHECK_WHEEL_SPECS := polygraphy==0.53.6 scipy==1.17.1 pillow==13.0.0

gpu-check:
	@PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(GPU_PYTHON) -m optimize.gpu_check --out "$(GPU_CHECK_OUT)" \
		$(if $(wildcard $(GPU_CHECK_WHEELS)/*.whl),--wheels "$(GPU_CHECK_WHEELS)")

gpu-check-wheels:
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_17_x86_64 --dest $(GPU_CHECK_WHEELS) $(GPU_CHECK_WHEEL_SPECS)

# Mutation testing (docs/testing.md): mutmut ([tool.mutmut] in pyproject.toml) over the modules whose verdicts
# users trust, each mutant against the unit tests that call the mutated function; 17 minutes on 2 busy cores.
MUTANTS := 'optimize.compare.*' 'optimize.metrics.*' 'optimize.fileio.*' 'optimize.profiles.*' \
	'optimize.images.x_resize_rgb_*' 'optimize.images.x_resize_alpha_*' 'optimize.images.x_output_status_*' \
	'optimize.images.x_is_complete_output_*'
MUTATION_STAMP := $(VENV)/.installed-mutation
$(MUTATION_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS),mutation]"
	touch $@

mutation: $(MUTATION_STAMP)
	rm -rf mutants
	MOPT_TEST_ARTIFACTS=$(CURDIR)/mutants/test-artifacts $(BIN)/mutmut run $(MUTANTS)
	$(BIN)/mutmut results | grep -v "not checked" || true

lint: setup
	$(BIN)/ruff check optimize architectures tests

clean:
	rm -rf $(VENV) engines/*.onnx engines/*.plan engines/*.json reports mutants
