"""MINE estimate of the mutual information between the layers of a synthetic set (METHOD.md §9).

    python eval_MI_MINE.py --path=RUN/auto_test/synthetic_data-KKKKKK

Reads fg/, bg/ and mask/ at 64×64 and trains MINE critics: ``separate`` gives MI_1 = I(m·f; m·b)
and MI_2 = I((1−m)·b; (1−m)·f), ``single`` gives MI = I(f; b). Each number is the mean of the
last 20 training-set evaluations, in nats. Writes <path>/MI-estimation-MINE/<NNNNN>/ with
results.json, curve.json, curve.png and the per-evaluation JSONL files.

The default --ma-rate=0 is the original's plain Donsker–Varadhan gradient; --ma-rate=0.01 uses
MINE's bias-corrected gradient (a moving average of mean e^T in its denominator). The reported
estimate is the DV bound either way. The default 100 000 steps take minutes on a GPU and far
too long on a CPU: use --steps and --hidden to shrink a demo, and read the result as a demo: an
estimate from fewer than 100 000 steps, or a negative one, is printed as NOT CONVERGED.
"""

import json
from dataclasses import asdict

import click

import dnnlib
from metrics import mine


@click.command(cls=dnnlib.cli.FlagCommand)
@click.option('--path', required=True, help='Synthetic set with fg/, bg/ and mask/ folders.')
@click.option('--mode', type=click.Choice(list(mine.MODES)), default='both', show_default=True,
              help='separate (MI_1, MI_2), single (MI) or both.')
@click.option('--steps', type=click.IntRange(1, dnnlib.MAX_COUNT), default=100_000, show_default=True, help='Optimiser steps.')
@click.option('--hidden', type=click.IntRange(1, 1_000_000), default=3000, show_default=True, help='Hidden ReLU units of T.')
@click.option('--lr', type=dnnlib.FiniteFloat(0, 1, min_open=True), default=2e-4, show_default=True, help='Adam learning rate.')
@click.option('--batch', type=click.IntRange(2, dnnlib.MAX_BATCH), default=64, show_default=True, help='Batch size.')
@click.option('--resolution', type=click.IntRange(min=4, max=1024), default=64, show_default=True,
              help='Side the layers are resized to before MINE flattens them (the original: 64).')
@click.option('--eval-every', type=click.IntRange(1, dnnlib.MAX_COUNT), default=400, show_default=True,
              help='Evaluate on the whole set after 20 steps, then every this many (and after the last).')
@click.option('--ma-rate', type=dnnlib.FiniteFloat(min=0, max=1, max_open=True), default=0.0, show_default=True,
              help='Moving-average rate of MINE\'s bias-corrected gradient (e.g. 0.01); 0 = the original plain DV gradient.')
@click.option('--seed', type=dnnlib.SEED, default=0, show_default=True, help='Seeds weights, batches and shuffles.')
@click.option('--outdir', default=None, help='Parent of the run folder  [default: PATH/MI-estimation-MINE]')
@click.option('--workers', type=click.IntRange(0, dnnlib.MAX_WORKERS), default=3, show_default=True, help='Data-loading processes.')
@click.option('--allow-partial', is_flag=True,
              help='Evaluate a generated set that holds fewer samples than its meta.json says (a warning '
                   'gives the count); without it such a set is refused.')
@click.option('--quiet', is_flag=True, help='No progress bars.')
@click.option('-n', '--dry-run', is_flag=True, help='Print the resolved options and exit.')
@dnnlib.report_user_errors
def main(path, mode, outdir, workers, allow_partial, quiet, dry_run, **options):
    """MINE mutual information between generated layers."""
    cfg = mine.MineConfig(progress=not quiet, **options)
    if dry_run:
        print(json.dumps({'path': path, 'mode': mode, 'allow_partial': allow_partial, **asdict(cfg)}, indent=2))
        return
    results = mine.estimate_layer_mi(path, cfg, mode=mode, num_workers=workers, outdir=outdir,
                                     allow_partial=allow_partial)
    print(' '.join(f'{name} = {results[name]:.4f}' for name in ('MI_1', 'MI_2', 'MI') if name in results)
          + f' nats  ({results["estimate"]}); written to {results["run_dir"]}')
    if not results['converged']:
        print(f'NOT CONVERGED: {results["why"]}; not a result to report')


if __name__ == '__main__':
    main()
