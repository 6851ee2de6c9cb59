#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py): one command, at most 8 minutes on one GPU.
#
#   bash bench/gpu_check.sh                 # writes gpu_check.json and gpu_check.log to ${OUT:-./gpu_check}
#   bash bench/gpu_check.sh --quick         # tiny sizes: a smoke run, also on a CPU
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --stages=env,build,kernels
#
# On a lent device machine: one call of `bash bench/gpu_check.sh` with timeout_s=540 (470 s of
# stages, whose limits add up to that budget, plus start-up); $OUT is set there and its three
# files come back: gpu_check.json, gpu_check.log, train-log.txt. With 15 minutes of device time
# (the machine's start included) that leaves ~4 minutes: a follow-up on the still-warm machine
# (e.g. `--stages=env,compile --budget=200`, or a rerun of the stages that failed), not a
# second full run. The env stage pins TORCH_CUDA_ARCH_LIST to the GPU's own capability for the
# rest of the run and records the value it found, with `c++ --version` and `nvcc --version`.
#
# Runs with the machine's own python3 from the repository root, no venv needed. Every stage has
# its own time limit; the JSON is rewritten after each stage, so a run cut off early still
# reports what it finished. Extra arguments go to bench/gpu_check.py (see its --help).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu_check.py --out="${OUT:-./gpu_check}" "$@"
