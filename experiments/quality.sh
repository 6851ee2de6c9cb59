#!/usr/bin/env bash
# A longer quality run on the CPU: train, run the auto test, train the same UNet on ground-truth
# pairs (the ceiling a generated set can reach), and write everything to one JSON.
#
#   bash experiments/quality.sh                                     # cpu64 preset; at most 30 minutes on 2 CPU cores
#   CFG=cpu KIMG=0.05 OUTDIR=/tmp/quality bash experiments/quality.sh   # a quick pass through every step
#   RUN_DIR=outputs/00000-synthetic-cpu-batch16 bash experiments/quality.sh   # score a finished run, no training
#   RUN_DIR=outputs/00003-cub-ILS_predL-batch32 bash experiments/quality.sh   # a real dataset whose train split has masks
#
# Steps:
#   1. python train_ILS_64.py --outdir=$OUTDIR --data=$DATA --cfg=$CFG [--kimg=$KIMG] --no-auto-test
#   2. python -m metrics.auto_test RUN_DIR   (generation -> UNet IoU/DICE -> MINE, sizes from the preset)
#   3. python -m training.dataset --export: the first N pairs of the run's *train* split with their
#      true masks (the synthetic set, CUB, or dogs/cars with _maskorig.png files), N and the resolution
#      those of the auto test, into RUN_DIR/ceiling/gt-train-N/ (reused when a complete export, one
#      with its meta.json, is already there)
#   4. eval_segmentation.py on those pairs, with the auto test's UNet sizes, tested on the run's test
#      split (dataset and sizes are read from RUN_DIR/training_options.json); its run folder is the
#      next RUN_DIR/ceiling/NNNNN-real-<data>-color_aug-R/
#   5. $OUTDIR/quality.json (experiments/quality_summary.py): run_dir, training time, IoU, DICE, MI_1,
#      MI_2, MI, the fixed mask's IoU/DICE and the gain over it, the warnings (from
#      RUN_DIR/auto_test/results.json), the ceiling's IoU and DICE, wall times (s).
#
# Environment, read here only: CFG (cpu64), KIMG (the preset's), SEED (0), DATA (synthetic) and
# DATA_ROOT (none) for training, OUTDIR (./outputs/quality), RUN_DIR (skip step 1 and score this run),
# PYTHON (python). Torch uses its default thread count
# except during training, where the cpu presets pin theirs.
set -euo pipefail

CFG=${CFG:-cpu64}
KIMG=${KIMG:-}
SEED=${SEED:-0}
DATA=${DATA:-synthetic}
DATA_ROOT=${DATA_ROOT:-}
OUTDIR=${OUTDIR:-./outputs/quality}
RUN_DIR=${RUN_DIR:-}
PYTHON=${PYTHON:-python}

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
if [[ -n "$RUN_DIR" ]]; then
    RUN_DIR=$(cd "$RUN_DIR" && pwd)
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)

walls=()
if [[ -z "$RUN_DIR" ]]; then
    t=$(date +%s)
    "$PYTHON" train_ILS_64.py --outdir="$OUTDIR" --data="$DATA" ${DATA_ROOT:+"--data-root=$DATA_ROOT"} --cfg="$CFG" \
        --seed="$SEED" ${KIMG:+"--kimg=$KIMG"} --no-auto-test
    walls+=("--wall=training=$(( $(date +%s) - t ))")
    # The newest run of this preset: run directories are numbered upwards.
    RUN_DIR=$(ls -d "$OUTDIR"/[0-9][0-9][0-9][0-9][0-9]-*-"$CFG"-batch* | sort | tail -n 1)
fi
echo "quality: run directory $RUN_DIR"

# Sizes first: a run that cannot have a ceiling fails before the long steps.
sizes=$("$PYTHON" experiments/quality_summary.py sizes "$RUN_DIR")
read -r N RES ITERS BATCH WIDTH VAL <<< "$sizes"
# The run's dataset, as it trained on it (the ceiling's pairs and test split come from there).
RUN_DATA=$("$PYTHON" experiments/quality_summary.py option "$RUN_DIR" data)
RUN_ROOT=$("$PYTHON" experiments/quality_summary.py option "$RUN_DIR" data_root)

t=$(date +%s)
"$PYTHON" -m metrics.auto_test "$RUN_DIR" --quiet
walls+=("--wall=auto_test=$(( $(date +%s) - t ))")

CEILING="$RUN_DIR/ceiling"
GT="$CEILING/gt-train-$N"
t=$(date +%s)
if [[ ! -f "$GT/meta.json" ]]; then
    "$PYTHON" -m training.dataset --data="$RUN_DATA" ${RUN_ROOT:+"--data-root=$RUN_ROOT"} --resolution="$RES" \
        --export="$GT" --split=train --count="$N"
fi
walls+=("--wall=export=$(( $(date +%s) - t ))")

t=$(date +%s)
"$PYTHON" eval_segmentation.py --syn-data="$GT" --outdir="$CEILING" --real-data="$RUN_DATA" \
    ${RUN_ROOT:+"--real-root=$RUN_ROOT"} --aug=color --scale="$RES" \
    --iters="$ITERS" --batch="$BATCH" --base-width="$WIDTH" --val-interval="$VAL" --quiet
walls+=("--wall=ceiling=$(( $(date +%s) - t ))")

walls+=("--wall=total=$(( $(date +%s) - start ))")
"$PYTHON" experiments/quality_summary.py summary "$RUN_DIR" "$CEILING" --out="$OUTDIR/quality.json" "${walls[@]}"
