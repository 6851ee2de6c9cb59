"""The two bits of Python that experiments/ablation.sh needs: the auto test of one run, and ablation.json.

    python experiments/ablation_summary.py auto-test RUN_DIR [--tiny]
    python experiments/ablation_summary.py summary OUTDIR --out=OUTDIR/ablation.json
    python experiments/ablation_summary.py runs RUN_DIR_OR_OUTDIR... [--ceiling=DATASET=PATH] [--out=runs.json]
    python experiments/ablation_summary.py fixed-mask --data=car --data-root=DIR --resolution=32

``auto-test`` runs :func:`metrics.auto_test.run_auto_test` on a finished run, with the sizes of its
preset, or with :data:`TINY_SIZES` (a smoke test of the ablation: its numbers mean nothing).

``summary`` finds every run under OUTDIR (``OUTDIR/<cfg>-seed<seed>/NNNNN-*/``; the newest of each
folder), joins its training options, ``auto_test/results.json`` and the training time (the last
line of ``stats.jsonl``) into one row, and writes ``{"runs": [...], "by_cfg": {...}, "incomplete":
[...]}`` (written atomically), ``by_cfg`` holding the mean and the population standard deviation
over seeds of each score, then prints the markdown table. A run without results is listed under
``incomplete`` and left out of the means.

``runs`` prints one markdown row per run (issue 22's table): dataset, preset, seed, IoU, the fixed
mask of the same test split and the gain over it, the ground-truth ceiling, the border coverage of
the generated masks against the data's, G's own layout spread (position, area) and the number of
warnings, all read from each run's ``auto_test/results.json``. Each argument is a run directory or
an ablation OUTDIR (its newest run of each ``<cfg>-seed<seed>/``). The ceiling (IoU of the UNet
trained on true pairs) comes from ``RUN_DIR/ceiling/`` (experiments/quality.sh), else from
``--ceiling=DATASET=PATH`` for every run of that dataset (PATH: a segmentation results.json, its run
folder, or a folder of such runs, the newest used); none gives '—'.

``fixed-mask`` prints the fixed-mask score of a dataset's test split at one resolution
(:func:`metrics.segmentation.fixed_mask_score`), without a run: what a new dataset's runs must beat.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import click
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
from experiments.quality_summary import ceiling_run, read_json  # noqa: E402
from metrics.auto_test import read_training_options  # noqa: E402

# Every stage a few steps long: the chain runs end to end in seconds.
TINY_SIZES = dict(n=64, seg_iters=20, seg_batch=16, seg_base_width=8, seg_val_interval=10,
                  mine_steps=20, mine_hidden=32, mine_eval_every=10, mine_batch=16)

# The scores of a row, in table order: (key in the row, column title, format).
SCORES = [('IoU', 'IoU', '.3f'), ('fixed_mask_IoU', 'fixed mask', '.3f'), ('IoU_gain', 'gain', '+.3f'),
          ('IoU_small', 'IoU small third', '.3f'),
          ('area_ratio_small', 'pred/true area small third', '.2f'), ('DICE', 'DICE', '.3f'),
          ('MI_1', 'MI_1', '.2f'), ('MI_2', 'MI_2', '.2f'),
          ('MI', 'MI', '.2f'), ('position_spread', 'position spread', '.2f'), ('area_spread', 'area spread', '.2f'),
          ('empty', 'empty', '.0%'), ('full', 'full', '.0%'), ('grey', 'grey', '.0%'),
          ('border', 'border gen', '.2f'), ('border_data', 'border data', '.2f')]
# The per-run table of ``runs`` (issue 22): the columns after dataset, cfg and seed.
RUN_COLUMNS = [('IoU', 'IoU', '.3f'), ('fixed_mask_IoU', 'fixed mask', '.3f'), ('IoU_gain', 'gain', '+.3f'),
               ('ceiling_IoU', 'ceiling', '.3f'), ('border', 'border gen', '.2f'), ('border_data', 'border data', '.2f'),
               ('position_spread', "G's position spread", '.2f'), ('area_spread', "G's area spread", '.2f')]


def training_time(run_dir: str) -> float | None:
    """Seconds of training, from the last line of ``stats.jsonl`` (None when it has none)."""
    path = os.path.join(run_dir, 'stats.jsonl')
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        lines = [line for line in f if line.strip()]
    return json.loads(lines[-1]).get('Timing/total_sec', {}).get('mean') if lines else None


def dataset_label(options: dict, auto: dict) -> str:
    """The data a run was trained and scored on: the folder of its test pairs (``--test-data``),
    else ``--data`` (a folder's name), with ``@<name of --data-root>`` when a root was given."""
    if auto.get('test_data'):
        return os.path.basename(os.path.normpath(auto['test_data']))
    name = os.path.basename(os.path.normpath(str(options.get('data'))))
    root = options.get('data_root')
    return f'{name}@{os.path.basename(os.path.normpath(root))}' if root else name


def run_row(run_dir: str) -> dict:
    """One run → its preset, seed, dataset, kimg, scores (IoU, the fixed mask and the gain over it,
    DICE, MI_1, MI_2, MI, the layout measure), warnings and times. Scores a results.json written
    before them lacks (the fixed mask, the size thirds) are None."""
    options = read_training_options(run_dir)
    auto = read_json(os.path.join(run_dir, 'auto_test', 'results.json'))
    layout = auto.get('layout') or {'ratios': {}, 'generated': {}}
    # The spreads G has learnt: of its own masks when the auto test shifted the set's (cpu presets).
    spreads = (auto.get('layout_generator') or layout)['ratios']
    # The third of the test images with the smallest objects (metrics.segmentation.scores_by_object_size).
    small = (auto.get('IoU_by_size') or [{}])[0]
    return {
        'cfg': options.get('cfg'), 'seed': options.get('seed'), 'dataset': dataset_label(options, auto),
        'kimg': auto.get('kimg'), 'run_dir': os.path.abspath(run_dir),
        'IoU': auto['IoU'], 'fixed_mask_IoU': auto.get('fixed_mask_IoU'), 'IoU_gain': auto.get('IoU_gain'),
        'fixed_mask_DICE': auto.get('fixed_mask_DICE'), 'fixed_mask_threshold': auto.get('fixed_mask_threshold'),
        'IoU_small': small.get('IoU'), 'area_ratio_small': small.get('area_ratio'),
        'DICE': auto['DICE'], 'MI_1': auto.get('MI_1'), 'MI_2': auto.get('MI_2'), 'MI': auto.get('MI'),
        'position_spread': spreads.get('position'), 'area_spread': spreads.get('area'),
        'empty': layout['generated'].get('empty'), 'full': layout['generated'].get('full'),
        'grey': layout['generated'].get('grey'), 'border': layout['generated'].get('mean_border'),
        'border_data': layout['data'].get('mean_border'), 'warnings': auto.get('warnings') or [],
        'training_s': training_time(run_dir), 'auto_test_s': auto.get('total_time'), 'sizes': auto.get('sizes'),
    }


def find_runs(outdir: str) -> tuple[list[str], list[str]]:
    """(runs with an auto test result, runs without one): the newest run of each OUTDIR/<cfg>-seed<seed>/."""
    done, incomplete = [], []
    for pair in sorted(glob.glob(os.path.join(outdir, '*-seed*'))):
        runs = sorted(glob.glob(os.path.join(pair, '[0-9][0-9][0-9][0-9][0-9]-*')))
        if runs:
            has_result = os.path.isfile(os.path.join(runs[-1], 'auto_test', 'results.json'))
            (done if has_result else incomplete).append(runs[-1])
    return done, incomplete


def aggregate(rows: list[dict]) -> dict[str, dict]:
    """{cfg: {'seeds': [...], '<score>': {'mean', 'std'}}} over the seeds of each preset, in first-seen
    order; a score missing (None) in some seeds is averaged over the others, all None gives None."""
    by_cfg: dict[str, dict] = {}
    for row in rows:
        by_cfg.setdefault(row['cfg'], {'seeds': []})['seeds'].append(row['seed'])
    for cfg, entry in by_cfg.items():
        for key, _, _ in SCORES:
            values = [r[key] for r in rows if r['cfg'] == cfg and r[key] is not None]
            entry[key] = {'mean': float(np.mean(values)), 'std': float(np.std(values))} if values else None
    return by_cfg


def markdown_table(summary: dict) -> str:
    """One line per run, then one per preset with mean ± std over its seeds."""
    def cell(value, spec):
        return '—' if value is None else format(value, spec)
    header = ['cfg', 'seed'] + [title for _, title, _ in SCORES]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    for row in summary['runs']:
        lines.append('| ' + ' | '.join([row['cfg'], str(row['seed'])] + [cell(row[k], s) for k, _, s in SCORES]) + ' |')
    for cfg, entry in summary['by_cfg'].items():
        cells = [('—' if entry[k] is None else f'{format(entry[k]["mean"], s)} ± {format(entry[k]["std"], s.lstrip("+"))}')
                 for k, _, s in SCORES]
        lines.append('| ' + ' | '.join([f'**{cfg}**', f'mean of {len(entry["seeds"])}'] + cells) + ' |')
    return '\n'.join(lines)


def build_summary(outdir: str) -> dict:
    done, incomplete = find_runs(outdir)
    if not done:
        raise dnnlib.UserError(f'no run with auto_test/results.json under {outdir}/<cfg>-seed<seed>/; '
                               f'run experiments/ablation.sh first')
    rows = sorted((run_row(run) for run in done), key=lambda r: (r['cfg'], r['seed']))
    return {'runs': rows, 'by_cfg': aggregate(rows), 'incomplete': [os.path.abspath(r) for r in incomplete],
            'timestamp': time.time()}


def collect_runs(paths: list[str]) -> tuple[list[str], list[str]]:
    """(runs with an auto test result, runs without one) of ``paths``: each a run directory (it has
    training_options.json) or an ablation OUTDIR (:func:`find_runs`)."""
    done, incomplete = [], []
    for path in paths:
        if os.path.isfile(os.path.join(path, 'training_options.json')):
            has_result = os.path.isfile(os.path.join(path, 'auto_test', 'results.json'))
            (done if has_result else incomplete).append(path)
        elif os.path.isdir(path):
            found = find_runs(path)
            done, incomplete = done + found[0], incomplete + found[1]
        else:
            raise dnnlib.UserError(f'{path}: no such folder; give a training run directory or an ablation OUTDIR')
    return done, incomplete


def ceiling_iou(path: str) -> float:
    """The test IoU of a ground-truth ceiling: a segmentation ``results.json``, the run folder
    holding one, or a folder of such runs (the newest)."""
    if os.path.isfile(path):
        return float(read_json(path)['results']['IoU'])
    if os.path.isfile(os.path.join(path, 'results.json')):
        return float(read_json(os.path.join(path, 'results.json'))['results']['IoU'])
    return float(ceiling_run(path)[0]['results']['IoU'])


def runs_summary(paths: list[str], ceilings: dict[str, str]) -> dict:
    """``{'runs': rows, 'incomplete': [...]}`` for :func:`runs_table`: each row of :func:`run_row`
    with ``ceiling_IoU`` (from RUN_DIR/ceiling, else ``ceilings[dataset]``, else None)."""
    done, incomplete = collect_runs(paths)
    if not done:
        raise dnnlib.UserError(f'no run with auto_test/results.json in {", ".join(paths)}')
    rows = []
    for run in done:
        row = run_row(run)
        own = os.path.join(run, 'ceiling')
        source = own if os.path.isdir(own) else ceilings.get(row['dataset'])
        row['ceiling_IoU'] = ceiling_iou(source) if source else None
        rows.append(row)
    rows.sort(key=lambda r: (r['dataset'], str(r['cfg']), r['seed'] if isinstance(r['seed'], int) else -1))
    return {'runs': rows, 'incomplete': [os.path.abspath(r) for r in incomplete], 'timestamp': time.time()}


def runs_table(summary: dict) -> str:
    """One markdown line per run: dataset, cfg, seed, :data:`RUN_COLUMNS`, the number of warnings."""
    def cell(value, spec):
        return '—' if value is None else format(value, spec)
    header = ['dataset', 'cfg', 'seed'] + [title for _, title, _ in RUN_COLUMNS] + ['warnings']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    for row in summary['runs']:
        lines.append('| ' + ' | '.join([row['dataset'], str(row['cfg']), str(row['seed'])]
                                       + [cell(row[k], s) for k, _, s in RUN_COLUMNS]
                                       + [str(len(row['warnings']))]) + ' |')
    return '\n'.join(lines)


@click.group()
def main() -> None:
    """Helpers of experiments/ablation.sh."""


@main.command('auto-test')
@click.argument('run_dir')
@click.option('--tiny', is_flag=True, help='Tiny auto-test sizes (a smoke test; the numbers mean nothing).')
@dnnlib.report_user_errors
def auto_test(run_dir: str, tiny: bool) -> None:
    """Run the auto test on RUN_DIR."""
    from metrics.auto_test import run_auto_test
    config = read_training_options(run_dir)
    if tiny:
        config['auto_test_sizes'] = TINY_SIZES
    run_auto_test(run_dir, config, progress=False)


@main.command()
@click.argument('outdir')
@click.option('--out', required=True, help='Where to write ablation.json.')
@dnnlib.report_user_errors
def summary(outdir: str, out: str) -> None:
    """Write ablation.json and print the markdown table."""
    result = build_summary(outdir)
    dnnlib.write_bytes_atomic(out, dnnlib.json_text(result, indent=2).encode('utf-8'))
    print(markdown_table(result))
    for run in result['incomplete']:
        print(f'incomplete (no auto test result): {run}')
    print(f'written to {out}')


@main.command()
@click.argument('paths', nargs=-1, required=True)
@click.option('--ceiling', multiple=True, metavar='DATASET=PATH',
              help='Ground-truth ceiling of a dataset (as the table names it): a segmentation results.json, '
                   'its run folder or a folder of runs (repeatable; RUN_DIR/ceiling comes first).')
@click.option('--out', default=None, help='Also write the rows as JSON here.')
@dnnlib.report_user_errors
def runs(paths: tuple[str, ...], ceiling: tuple[str, ...], out: str | None) -> None:
    """Print one table row per run of PATHS (run directories or ablation OUTDIRs)."""
    ceilings = {}
    for item in ceiling:
        name, sep, path = item.partition('=')
        if not sep or not name or not path:
            raise dnnlib.UserError(f'--ceiling={item}: give DATASET=PATH')
        ceilings[name] = path
    result = runs_summary(list(paths), ceilings)
    if out:
        dnnlib.write_bytes_atomic(out, dnnlib.json_text(result, indent=2).encode('utf-8'))
    print(runs_table(result))
    for run in result['incomplete']:
        print(f'incomplete (no auto test result): {run}')


@main.command('fixed-mask')
@click.option('--data', required=True, help='Dataset: cub | dog | car | synthetic | folder of img/ + mask/ pairs.')
@click.option('--data-root', default=None, help='Root folder of the dataset.')
@click.option('--resolution', type=click.IntRange(1, dnnlib.MAX_SIDE), default=32, show_default=True,
              help='Side of the scored masks (the auto test scores at the training resolution).')
@dnnlib.report_user_errors
def fixed_mask(data: str, data_root: str | None, resolution: int) -> None:
    """Print the fixed-mask IoU, DICE, threshold and area of a dataset's test split."""
    from metrics.layout import load_data_masks
    from metrics.segmentation import fixed_mask_score
    masks = load_data_masks(data, resolution, data_root)
    fixed = fixed_mask_score(masks)
    print(f'{data} test split ({len(masks)} masks at {resolution} px): fixed mask IoU {fixed["IoU"]:.4f}, '
          f'DICE {fixed["DICE"]:.4f}, threshold {fixed["threshold"]:.2f}, area {fixed["area"]:.3f}')


if __name__ == '__main__':
    main()
