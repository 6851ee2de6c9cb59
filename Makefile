# Two commands for a new user: `make demo` and `make test` (see README.md).
# Both create ./.venv on first use. Torch is installed on its own line so that pip never pulls a
# multi-GB CUDA build by accident: TORCH picks the version, TORCH_INDEX an optional wheel index
# (e.g. PyTorch's CPU-only index on a machine without GPU). An existing torch in the venv is kept.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: setup demo test bench bench-ab gpu-check cuda-build-check quality clean

setup: $(VENV)/.ready

$(VENV)/.ready: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/pip install -q -r requirements.txt -r requirements-test.txt
	touch $@

demo: setup
	$(BIN)/python train_ILS_64.py --outdir=outputs --data=synthetic --cfg=cpu

test: setup
	$(BIN)/python -m pytest -q tests

# Figures, not tests (docs/benchmarks.md; dated results in experiments/speed.md): training speed per
# preset (the paper presets take ~30 min on a 2-core CPU) and the post-training stages at the demo sizes.
bench: setup
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_chain.py --cfg=cpu --preset-sizes=cpu

# Ratios measured side by side in one process (docs/benchmarks.md): main's CPU set-up (NCHW,
# reference ops) against this branch's, phases and the real training loop (~15 min on 2 cores).
bench-ab: setup
	$(BIN)/python bench/bench_training.py --cfg=ILS_predL --batch=8 --ab=main --loop --iters=3 --json

# The prepared GPU check (bench/gpu_check.sh; at most 8 minutes): gpu_check/gpu_check.json.
gpu-check: setup
	PYTHON=$(BIN)/python bash bench/gpu_check.sh

# Do the CUDA kernels compile for sm_90 (H100/H200), without a GPU? Builds them through the
# project's loader in ./cuda_build_check (first run: ~3 GB of torch and CUDA wheels; a few minutes
# of compiling). CUDA_HOME, PYTHON, TORCH, TORCH_CUDA_ARCH_LIST: see bench/cuda_build_check.sh.
cuda-build-check:
	bash bench/cuda_build_check.sh

quality: setup
	PYTHON=$(BIN)/python bash experiments/quality.sh

clean:
	rm -rf $(VENV) .pytest_cache
