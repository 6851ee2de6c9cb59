#!/usr/bin/env bash
# The ILS ablation on the CPU: the demo preset with and without the ILS term (and, optionally, with
# ILS_L1's direct separation instead of the CLUB bound), on the same seeds; one JSON and one table of
# IoU, DICE, MINE MI and the layout measure side by side.
#
#   bash experiments/ablation.sh                                        # cpu, cpu_noILS on seeds 0 1 2 (~1 h on 2 idle cores)
#   CFGS="cpu cpu_noILS cpu_L1" bash experiments/ablation.sh            # predL against L1 too (~70 min)
#   TINY=1 OUTDIR=/tmp/ablation bash experiments/ablation.sh            # a smoke pass through every step (minutes)
#   python experiments/heldout_data.py --out=/tmp/ho && \
#   DATA=car DATA_ROOT=/tmp/ho CFGS=cpu OUTDIR=/tmp/abl-ho bash experiments/ablation.sh   # the same on held-out data
#
# Steps, for each preset of CFGS and each seed of SEEDS (a pair whose auto test already finished
# in OUTDIR is skipped, so a killed ablation continues where it stopped):
#   1. python train_ILS_64.py --outdir=$OUTDIR/<cfg>-seed<seed> --data=$DATA [--data-root=$DATA_ROOT]
#      --cfg=<cfg> --seed=<seed> [--kimg=$KIMG] --no-auto-test
#   2. the auto test of that run (generation -> UNet IoU/DICE -> MINE -> layout), sizes from the preset;
#      with TINY=1, tiny sizes (experiments/ablation_summary.py, TINY_SIZES) and KIMG 0.05 unless given
# Then $OUTDIR/ablation.json and a markdown table (experiments/ablation_summary.py summary).
#
# Environment, read here only: CFGS ("cpu cpu_noILS"), SEEDS ("0 1 2"), KIMG (the preset's), TINY
# (empty), OUTDIR (./outputs/ablation), PYTHON (python), DATA (synthetic), DATA_ROOT (empty: the
# dataset's default root).
set -euo pipefail

CFGS=${CFGS:-cpu cpu_noILS}
SEEDS=${SEEDS:-0 1 2}
TINY=${TINY:-}
KIMG=${KIMG:-${TINY:+0.05}}
OUTDIR=${OUTDIR:-./outputs/ablation}
PYTHON=${PYTHON:-python}
DATA=${DATA:-synthetic}
DATA_ROOT=${DATA_ROOT:-}

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
# Paths given relative to the caller's folder stay valid after the cd below.
if [ -n "$DATA_ROOT" ]; then DATA_ROOT=$(cd "$DATA_ROOT" && pwd); fi
if [ -e "$DATA" ]; then DATA=$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA"); fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for cfg in $CFGS; do
    for seed in $SEEDS; do
        pair="$OUTDIR/$cfg-seed$seed"
        if compgen -G "$pair/[0-9][0-9][0-9][0-9][0-9]-*/auto_test/results.json" > /dev/null; then
            echo "ablation: $cfg seed $seed already done in $pair"
            continue
        fi
        echo "ablation: $cfg seed $seed"
        "$PYTHON" train_ILS_64.py --outdir="$pair" --data="$DATA" ${DATA_ROOT:+"--data-root=$DATA_ROOT"} --cfg="$cfg" \
            --seed="$seed" ${KIMG:+"--kimg=$KIMG"} --no-auto-test
        # The newest run of this pair: run directories are numbered upwards.
        run_dir=$(ls -d "$pair"/[0-9][0-9][0-9][0-9][0-9]-* | sort | tail -n 1)
        "$PYTHON" experiments/ablation_summary.py auto-test "$run_dir" ${TINY:+--tiny}
    done
done

"$PYTHON" experiments/ablation_summary.py summary "$OUTDIR" --out="$OUTDIR/ablation.json"
