"""Options and config shared by eval_segmentation.py and eval_segmentation_eval128.py.

The two scripts differ only in the protocol they pass (``scale`` with ``--scale``; ``eval128``
or ``native128``); everything else is here, once.
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
    click.option('--aug', type=click.Choice(segmentation.AUG_KINDS), default='none', show_default=True,
                 help='UNet training augmentation (the paper\'s commands and the auto test use color).'),
    click.option('--iters', type=click.IntRange(1, dnnlib.MAX_COUNT), default=6000, show_default=True, help='Training iterations.'),
    click.option('--batch', type=click.IntRange(1, dnnlib.MAX_BATCH), default=64, show_default=True, help='Batch size.'),
    click.option('--val-interval', type=click.IntRange(1, dnnlib.MAX_COUNT), default=1000, show_default=True,
                 help='Validate after 20 iterations, then every this many (and after the last).'),
    click.option('--base-width', type=click.IntRange(1, dnnlib.MAX_SIDE), default=64, show_default=True,
                 help='UNet width of the first level (64 = paper; smaller for CPU demos).'),
    click.option('--seed', type=dnnlib.SEED, default=0, show_default=True, help='Seeds weights, batches, augmentation.'),
    click.option('--outdir', default=None, help='Parent of the run folder  [default: --syn-data]'),
    click.option('--test-all', is_flag=True,
                 help='Also test every validated UNet on the real test set (metric-test_all.jsonl).'),
    click.option('--resume-from', metavar='PATH',
                 help='Continue from a UNet: a run folder (its unet-last.pt) or a unet-*.pt file; '
                      'the file sets the UNet width.'),
    click.option('--test-only', is_flag=True,
                 help='No training: test the UNet of --resume-from (a run folder: its unet-best.pt).'),
    click.option('--workers', type=click.IntRange(0, dnnlib.MAX_WORKERS), default=3, show_default=True, help='Data-loading processes.'),
    click.option('--allow-partial', is_flag=True,
                 help='Evaluate a generated set that holds fewer samples than its meta.json says (a warning '
                      'gives the count); without it such a set is refused.'),
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
