"""Train a UNet on synthetic (img, mask) pairs and test it on a real test split: the paper's IoU and DICE.

    python eval_segmentation.py --syn-data=RUN/auto_test/synthetic_data-KKKKKK --real-data=cub \\
        --real-root=~/data/DRC_processed/birds --aug=color

Writes <syn-data>/<NNNNN>-real-<data>-<aug>_aug-<scale>/ (options.json, metric-val.jsonl,
results.json, unet-best.pt, seg-test.png) and prints a table. IoU and DICE are the paper's
per-image means (METHOD.md §8). The logic lives in metrics/segmentation.py; the 128 protocols
are eval_segmentation_eval128.py, which shares these options.
"""

import json
from dataclasses import asdict

import click

import dnnlib
from metrics import segmentation

COMMON_OPTIONS = [
    click.option('--syn-data', required=True, help='Synthetic set: a folder with img/ and mask/.'),
    click.option('--real-data', required=True, help='Test set: cub | dog | car | synthetic | folder of img/+mask/.'),
    click.option('--real-root', default=None, help='Root folder of the real dataset.'),
    click.option('--aug', type=click.Choice(segmentation.AUG_KINDS), default='color', show_default=True,
                 help='UNet training augmentation (the original used none when omitted; its README uses color).'),
    click.option('--iters', type=click.IntRange(min=1), default=6000, show_default=True, help='Training iterations.'),
    click.option('--batch', type=click.IntRange(min=1), default=64, show_default=True, help='Batch size.'),
    click.option('--val-interval', type=click.IntRange(min=1), default=1000, show_default=True,
                 help='Validate every this many iterations (and after the last).'),
    click.option('--base-width', type=click.IntRange(min=1), default=64, show_default=True,
                 help='UNet width of the first level (64 = paper; smaller for CPU demos).'),
    click.option('--seed', type=int, default=0, show_default=True, help='Seeds weights, batches, augmentation.'),
    click.option('--outdir', default=None, help='Parent of the run folder  [default: --syn-data]'),
    click.option('--workers', type=click.IntRange(min=0), default=3, show_default=True, help='Data-loading processes.'),
    click.option('--quiet', is_flag=True, help='No progress bars.'),
    click.option('-n', '--dry-run', is_flag=True, help='Print the resolved options and exit.'),
]


def common_options(func):
    """The options both segmentation scripts share."""
    for option in reversed(COMMON_OPTIONS):
        func = option(func)
    return func


def make_config(workers: int = 3, quiet: bool = False, **options) -> segmentation.SegmentationConfig:
    """CLI options → the config of metrics.segmentation (pure; validated, UserError on bad input)."""
    cfg = segmentation.SegmentationConfig(num_workers=workers, progress=not quiet, **options)
    segmentation.check_config(cfg)
    return cfg


def run(dry_run: bool = False, **options) -> None:
    cfg = make_config(**options)
    if dry_run:
        print(json.dumps({**asdict(cfg), 'protocol_details': cfg.protocol_record()}, indent=2))
        return
    segmentation.print_results(segmentation.run_segmentation_eval(cfg))


@click.command()
@common_options
@click.option('--scale', type=click.IntRange(min=16), default=64, show_default=True,
              help='Resolution of training and testing, images and masks.')
@dnnlib.report_user_errors
def main(**options):
    """Segmentation evaluation at one resolution (--scale; the paper's 64 numbers)."""
    run(protocol='scale', **options)


if __name__ == '__main__':
    main()
