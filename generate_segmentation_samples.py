"""Generate a synthetic segmentation set (image, mask, fg, bg) from a trained ILSGAN run.

    python generate_segmentation_samples.py --network=RUN_DIR --n=50000 --topk=8000

With a run directory the snapshot with the lowest FID (metric-fid10k_full.jsonl) among those at
or below --topk kimg is used; a run directory of the original code (network-snapshot-KKKKKK.pkl and
its metric file) is read the same way, each pickle converted in memory. The set is written to
synthetic_data-<tag>/ beside the snapshot (the tag of network-snapshot-<tag>.pt: 000200, or
000000_272 for a snapshot at 272 images).
"""

import click

import dnnlib
from metrics.generate import generate_from_network


@click.command(cls=dnnlib.cli.FlagCommand)
@click.option('--network', required=True, metavar='PATH',
              help='Run directory (snapshot chosen by FID; a run of the original code, with its '
                   'network-snapshot-KKKKKK.pkl files, too), a network-snapshot-*.pt file, or a '
                   'network-snapshot-KKKKKK.pkl of the original code (pickles are converted in memory).')
@click.option('--n', 'n', type=click.IntRange(1, dnnlib.MAX_COUNT), default=10000, show_default=True,
              help='Number of samples to write.')
@click.option('--topk', type=dnnlib.FiniteFloat(0, 1e9), default=None, metavar='KIMG',
              help='Only consider snapshots at or below this kimg (a kimg bound, not a sample count).')
@click.option('--pkl_idx', 'pkl_idx', type=dnnlib.FiniteFloat(0, 1e9), default=None, metavar='KIMG',
              help='Use the snapshot of exactly this kimg instead of the lowest FID (200 names '
                   'network-snapshot-000200.pt, 0.272 names network-snapshot-000000_272.pt); not with --topk.')
@click.option('--sigma', type=dnnlib.FiniteFloat(), default=None, help='Only consider snapshots trained with this ILS sigma.')
@click.option('--latest', is_flag=True, help='Without a metric file, use the newest snapshot.')
@click.option('--seed', type=dnnlib.SEED, default=0, show_default=True, help='Sample i is drawn from (seed, i).')
@click.option('--trunc', 'truncation_psi', type=dnnlib.FiniteFloat(-10, 10), default=1.0, show_default=True,
              help='Truncation psi: w = w_avg + psi (w - w_avg); 1 = none, < 1 nearer the mean.')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True,
              help='Per-pixel noise of the synthesis layers.')
@click.option('--perturb', is_flag=True,
              help='Compose every sample with the run\'s training perturbation (fg and mask moved over the bg as '
                   'the discriminator saw them; read from the snapshot). Off in the original; the CPU presets\' '
                   'auto test uses it [default: off; the set goes to synthetic_data-<tag>-perturbed].')
@click.option('--batch', 'batch_size', type=click.IntRange(1, dnnlib.MAX_BATCH), default=64, show_default=True,
              help='Samples per forward pass (does not change the samples).')
@click.option('--outdir', default=None, metavar='DIR',
              help='Output folder [default: synthetic_data-<tag> beside the snapshot].')
@click.option('--resume', is_flag=True, help='Complete an interrupted set instead of refusing an existing folder '
              '(refused if it was made from another snapshot, seed, truncation, noise mode or perturbation).')
@click.option('--device', type=dnnlib.Device(), default=None, help='torch device [default: cuda if available, else cpu].')
@dnnlib.report_user_errors(disk_full_hint='the same command with --resume completes the set')
def main(**options):
    """Write img/, mask/, fg/, bg/, fg_masked/ PNGs, latents.npy and meta.json."""
    generate_from_network(**options)


if __name__ == '__main__':
    main()
