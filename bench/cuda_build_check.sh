#!/usr/bin/env bash
# Do the CUDA kernels compile for the GPU they will meet? A check without a GPU (make cuda-build-check).
#
#   bash bench/cuda_build_check.sh             # set up what is missing, then build both plugins
#   bash bench/cuda_build_check.sh --dry-run   # say what it would use and do; download and build nothing
#   bash bench/cuda_build_check.sh --help
#
# It builds bias_act and upfirdn2d (torch_utils/ops/cuda) through the project's own loader, with the
# same sources, flags and extension names as on a GPU, for TORCH_CUDA_ARCH_LIST (default 9.0+PTX:
# the H100 / H200), then imports each module and calls it with CPU tensors (bench/cuda_build_check.py).
# Run it after touching a kernel, before any GPU is at hand.
#
# What a build needs, and where this script takes it from:
#   a CUDA build of torch   $PYTHON if set (its torch must be a CUDA build), else a venv it makes in
#                           $WORK/venv with torch==$TORCH from PyPI (a CUDA 13.0 build for 2.11-2.13)
#   nvcc of torch's CUDA    $CUDA_HOME if set, else nvcc on PATH or /usr/local/cuda when its major
#   major version           version is torch's, else a toolkit assembled in $WORK/cuda-<version> from
#                           NVIDIA's PyPI wheels (CUDA 13 and newer; older ones hold no nvcc there)
#   a C++ compiler, ninja,  c++ from PATH (or $CXX); ninja from pip (the venv gets it); the Python
#   Python's headers        headers of the venv's Python (python3-dev on Debian/Ubuntu)
#
# Environment (all optional): PYTHON, CUDA_HOME, TORCH (2.13.0, README's pin), TORCH_CUDA_ARCH_LIST
# (9.0+PTX), WORK (./cuda_build_check, git-ignored), MAX_JOBS (parallel compiler jobs), VENV_PYTHON
# (the interpreter the venv is made from: python3).
# Output: $WORK/result.json (versions, architecture flags, per plugin: built, seconds, compiler
# warnings, error) and $WORK/build.log; the last lines say BUILT or FAILED per plugin.
# Exit: 0 both plugins built and imported; 1 a build failed or something it needs is missing; 2 usage.
# Cost: the first run downloads ~3 GB (torch with its CUDA libraries) and, without a local toolkit,
# ~0.5 GB of toolkit wheels, all kept in $WORK; each plugin then takes 1-2 minutes on one core.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
DRY_RUN=0
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    -n|--dry-run) DRY_RUN=1 ;;
    '') ;;
    *) echo "error: unknown argument ${1}; see bash bench/cuda_build_check.sh --help" >&2; exit 2 ;;
esac
[ $# -le 1 ] || { echo "error: one argument at most; see bash bench/cuda_build_check.sh --help" >&2; exit 2; }

WORK=${WORK:-cuda_build_check}
TORCH=${TORCH:-2.13.0}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0+PTX}
say() { echo "[cuda-build-check] $*"; }
fail() { echo "error: $*" >&2; exit 1; }

# -- 1. a Python whose torch is a CUDA build --------------------------------------------------------
torch_cuda() { "$1" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null; }
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
    CUDA_VERSION=$(torch_cuda "$PY") || fail "$PY cannot import torch"
    [ -n "$CUDA_VERSION" ] || fail "the torch of $PY is not a CUDA build (torch.version.cuda is None); unset PYTHON to let this script make a venv with torch==$TORCH from PyPI"
    say "python: $PY (torch $("$PY" -c 'import torch; print(torch.__version__)'), CUDA $CUDA_VERSION)"
else
    PY=$WORK/venv/bin/python
    CUDA_VERSION=
    if [ -x "$PY" ] && [ "$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)" = "$TORCH" ]; then
        CUDA_VERSION=$(torch_cuda "$PY")
        say "python: $PY (torch $TORCH, CUDA ${CUDA_VERSION:-none}, made earlier)"
    elif [ "$DRY_RUN" = 1 ]; then
        say "python: would make $WORK/venv with ${VENV_PYTHON:-python3} and pip install torch==$TORCH ninja click numpy (~3 GB)"
    else
        say "making $WORK/venv with torch==$TORCH, ninja, click, numpy (~3 GB to download)"
        mkdir -p "$WORK"
        rm -rf "$WORK/venv"
        "${VENV_PYTHON:-python3}" -m venv "$WORK/venv"
        "$PY" -m pip install -q "torch==$TORCH" ninja click numpy
        CUDA_VERSION=$(torch_cuda "$PY")
    fi
    if [ -z "$CUDA_VERSION" ] && [ -x "$PY" ]; then
        fail "the torch==$TORCH of $WORK/venv is not a CUDA build (a CPU-only index?); pass PYTHON= with a CUDA build of torch"
    fi
fi
MAJOR=${CUDA_VERSION%%.*}

# -- 2. nvcc of torch's CUDA major version ----------------------------------------------------------
nvcc_major() { "$1/bin/nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\..*/\1/p'; }
if [ -n "${CUDA_HOME:-}" ]; then
    TOOLKIT=$CUDA_HOME
    [ -x "$TOOLKIT/bin/nvcc" ] || fail "CUDA_HOME=$TOOLKIT has no bin/nvcc"
else
    TOOLKIT=
    on_path=$(readlink -f "$(command -v nvcc 2>/dev/null || echo /none/bin/nvcc)")  # bin/nvcc may be a link
    for candidate in "$(dirname "$(dirname "$on_path")")" /usr/local/cuda; do
        if [ -x "$candidate/bin/nvcc" ] && [ -e "$candidate/include/cuda_runtime.h" ] \
                && { [ -z "$MAJOR" ] || [ "$(nvcc_major "$candidate")" = "$MAJOR" ]; }; then
            TOOLKIT=$candidate
            break
        fi
    done
fi
if [ -z "$TOOLKIT" ] && [ -z "$MAJOR" ]; then
    say "toolkit: none found; once torch's CUDA version is known, nvcc of that major version from PATH or /usr/local/cuda, else NVIDIA's PyPI wheels into $WORK"
elif [ -z "$TOOLKIT" ]; then
    TOOLKIT=$WORK/cuda-$CUDA_VERSION
    [ "$MAJOR" -ge 13 ] || fail "no nvcc of CUDA $MAJOR found and PyPI's CUDA $MAJOR wheels hold none; set CUDA_HOME to a CUDA $MAJOR toolkit"
    if [ -x "$TOOLKIT/bin/nvcc" ]; then
        say "toolkit: $TOOLKIT (assembled earlier)"
    elif [ "$DRY_RUN" = 1 ]; then
        say "toolkit: would assemble CUDA $CUDA_VERSION from NVIDIA's PyPI wheels into $TOOLKIT (~0.5 GB)"
    else
        say "assembling a CUDA $CUDA_VERSION toolkit from NVIDIA's PyPI wheels into $TOOLKIT"
        rm -rf "$TOOLKIT" "$TOOLKIT.wheels"
        "$PY" -m pip install -q --no-deps --target "$TOOLKIT.wheels" "nvidia-cuda-nvcc==$CUDA_VERSION.*" \
            "nvidia-cuda-crt==$CUDA_VERSION.*" "nvidia-nvvm==$CUDA_VERSION.*" "nvidia-cuda-cccl==$CUDA_VERSION.*" \
            "nvidia-cuda-runtime==$CUDA_VERSION.*"
        # The wheels unpack one CUDA tree under nvidia/cu<major>/; nvcc expects the usual layout
        # around it: lib64, a libcudart.so to link, and targets/<arch>/{include,lib}.
        cp -a "$TOOLKIT.wheels/nvidia/cu$MAJOR" "$TOOLKIT"
        rm -rf "$TOOLKIT.wheels"
        [ -e "$TOOLKIT/lib64" ] || ln -s lib "$TOOLKIT/lib64"
        if [ ! -e "$TOOLKIT/lib/libcudart.so" ]; then
            (cd "$TOOLKIT/lib" && ln -s "$(ls libcudart.so.* | head -n1)" libcudart.so)
        fi
        mkdir -p "$TOOLKIT/targets/$(uname -m)-linux"
        ln -sfn ../../include "$TOOLKIT/targets/$(uname -m)-linux/include"
        ln -sfn ../../lib "$TOOLKIT/targets/$(uname -m)-linux/lib"
        [ -x "$TOOLKIT/bin/nvcc" ] || fail "the CUDA $CUDA_VERSION wheels gave no bin/nvcc in $TOOLKIT"
    fi
else
    say "toolkit: $TOOLKIT ($("$TOOLKIT/bin/nvcc" --version | sed -n 's/.*\(release [^,]*\).*/\1/p'))"
fi
say "compiler: $(command -v "${CXX:-c++}" || echo "none: install a C++ compiler (g++)"); TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"

# -- 3. build through the project's loader ---------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
    say "would run: CUDA_HOME=${TOOLKIT:-<toolkit>} TORCH_EXTENSIONS_DIR=$WORK/extensions $PY bench/cuda_build_check.py --out=$WORK/result.json"
    exit 0
fi
mkdir -p "$WORK"
rm -rf "$WORK/extensions"  # every run compiles from scratch, in its own folder (never the user's cache)
set +e
env CUDA_HOME="$TOOLKIT" PATH="$TOOLKIT/bin:$(dirname "$PY"):$PATH" TORCH_EXTENSIONS_DIR="$WORK/extensions" \
    PYTHONUNBUFFERED=1 "$PY" bench/cuda_build_check.py --out="$WORK/result.json" 2>&1 | tee "$WORK/build.log"
code=${PIPESTATUS[0]}
set -e
say "exit code $code; result: $WORK/result.json, log: $WORK/build.log"
exit "$code"
