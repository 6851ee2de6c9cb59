"""Train a UNet on synthetic (img, mask) pairs and test it on a real test split: the paper's IoU and DICE.

    python eval_segmentation.py --syn-data=RUN/auto_test/synthetic_data-KKKKKK --real-data=cub \\
        --real-root=~/data/DRC_processed/birds --aug=color --scale=64

Writes <syn-data>/<NNNNN>-real-<data>-<aug>_aug-<scale>/ (options.json, metric-val.jsonl,
results.json, unet-best.pt, seg-test.png) and prints a table. IoU and DICE are the paper's
per-image means (METHOD.md §8). Beside them: the fixed mask of the test split (one mask for every
image, the mean of the test masks at the best threshold; it reads the test labels) and the gain
over it, with a WARNING when the gain is under 0.05. The logic lives in metrics/segmentation.py; the 128 protocols
are eval_segmentation_eval128.py; both take their shared options from metrics/segmentation_cli.py.
"""

import click

import dnnlib
from metrics.segmentation_cli import common_options, run


@click.command(cls=dnnlib.cli.FlagCommand)
@common_options
@click.option('--scale', type=click.IntRange(16, dnnlib.MAX_SIDE), default=128, show_default=True,
              help='Resolution of training and testing, images and masks (the paper\'s 64 numbers: --scale=64).')
@click.option('--crop-ratio', type=dnnlib.FiniteFloat(0, 1, min_open=True), default=1.0, show_default=True,
              help='Keep the centre square of this fraction of each synthetic image and mask, then resize.')
@dnnlib.report_user_errors
def main(**options):
    """Segmentation evaluation at one resolution (--scale=64 gives the paper's 64 numbers)."""
    run(protocol='scale', **options)


if __name__ == '__main__':
    main()
