"""The paper's 128 segmentation numbers: eval_segmentation.py with the eval128 protocol.

    python eval_segmentation_eval128.py --syn-data=RUN/synthetic_data-KKKKKK --real-data=cub \\
        --real-root=~/data/DRC_processed/birds --aug=color

Default protocol ``eval128`` (as the paper): the UNet is trained on the synthetic pairs resized to
64, validated and tested with 64-pixel inputs, and its logits are upsampled ×2 (bilinear,
align_corners=False) and scored against 128-pixel masks. ``--native128`` trains and tests at 128
instead (our improvement; results say so). Writes
<syn-data>/<NNNNN>-real-<data>-<aug>_aug-<eval128|native128>/ like eval_segmentation.py, the fixed
mask (of the 128-pixel test masks) and the gain over it included.
"""

import click

import dnnlib
from metrics.segmentation_cli import common_options, run


@click.command(cls=dnnlib.cli.FlagCommand)
@common_options
@click.option('--native128', is_flag=True,
              help='Train and test at 128 (not the paper\'s protocol; labelled native128 in the results).')
@click.option('--scale', type=click.IntRange(1, dnnlib.MAX_SIDE), default=128, show_default=True,
              help='Accepted so that the paper\'s command line (--scale=128) works; must be 128.')
@dnnlib.report_user_errors
def main(native128: bool, scale: int, **options):
    """Segmentation evaluation against 128-pixel masks (eval128 protocol, or --native128)."""
    if scale != 128:
        raise dnnlib.UserError(f'--scale={scale}: this script scores against 128-pixel masks; '
                               f'use eval_segmentation.py --scale={scale} for other sizes')
    run(protocol='native128' if native128 else 'eval128', **options)


if __name__ == '__main__':
    main()
