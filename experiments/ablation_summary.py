"""The two bits of Python that experiments/ablation.sh needs: the auto test of one run, and ablation.json.

    python experiments/ablation_summary.py auto-test RUN_DIR [--tiny]
    python experiments/ablation_summary.py summary OUTDIR --out=OUTDIR/ablation.json

``auto-test`` runs :func:`metrics.auto_test.run_auto_test` on a finished run, with the sizes of its
preset, or with :data:`TINY_SIZES` (a smoke test of the ablation: its numbers mean nothing).

``summary`` finds every run under OUTDIR (``OUTDIR/<cfg>-seed<seed>/NNNNN-*/``; the newest of each
folder), joins its training options, ``auto_test/results.json`` and the training time (the last
line of ``stats.jsonl``) into one row, and writes ``{"runs": [...], "by_cfg": {...}, "incomplete":
[...]}`` (written atomically), ``by_cfg`` holding the mean and the population standard deviation
over seeds of each score, then prints the markdown table. A run without results is listed under
``incomplete`` and left out of the means.
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
from experiments.quality_summary import read_json  # noqa: E402
from metrics.auto_test import read_training_options  # noqa: E402

# Every stage a few steps long: the chain runs end to end in seconds.
TINY_SIZES = dict(n=64, seg_iters=20, seg_batch=16, seg_base_width=8, seg_val_interval=10,
                  mine_steps=20, mine_hidden=32, mine_eval_every=10, mine_batch=16)

# The scores of a row, in table order: (key in the row, column title, format).
SCORES = [('IoU', 'IoU', '.3f'), ('IoU_small', 'IoU small third', '.3f'),
          ('area_ratio_small', 'pred/true area small third', '.2f'), ('DICE', 'DICE', '.3f'),
          ('MI_1', 'MI_1', '.2f'), ('MI_2', 'MI_2', '.2f'),
          ('MI', 'MI', '.2f'), ('position_spread', 'position spread', '.2f'), ('area_spread', 'area spread', '.2f'),
          ('empty', 'empty', '.0%'), ('full', 'full', '.0%'), ('grey', 'grey', '.0%'),
          ('border', 'border gen', '.2f')]


def training_time(run_dir: str) -> float | None:
    """Seconds of training, from the last line of ``stats.jsonl`` (None when it has none)."""
    path = os.path.join(run_dir, 'stats.jsonl')
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        lines = [line for line in f if line.strip()]
    return json.loads(lines[-1]).get('Timing/total_sec', {}).get('mean') if lines else None


def run_row(run_dir: str) -> dict:
    """One run → its preset, seed, kimg, scores (IoU, DICE, MI_1, MI_2, MI, the layout measure) and times."""
    options = read_training_options(run_dir)
    auto = read_json(os.path.join(run_dir, 'auto_test', 'results.json'))
    layout = auto.get('layout') or {'ratios': {}, 'generated': {}}
    # The spreads G has learnt: of its own masks when the auto test shifted the set's (cpu presets).
    spreads = (auto.get('layout_generator') or layout)['ratios']
    # The third of the test images with the smallest objects (metrics.segmentation.scores_by_object_size).
    small = (auto.get('IoU_by_size') or [{}])[0]
    return {
        'cfg': options.get('cfg'), 'seed': options.get('seed'), 'kimg': auto.get('kimg'), 'run_dir': os.path.abspath(run_dir),
        'IoU': auto['IoU'], 'IoU_small': small.get('IoU'), 'area_ratio_small': small.get('area_ratio'),
        'DICE': auto['DICE'], 'MI_1': auto.get('MI_1'), 'MI_2': auto.get('MI_2'), 'MI': auto.get('MI'),
        'position_spread': spreads.get('position'), 'area_spread': spreads.get('area'),
        'empty': layout['generated'].get('empty'), 'full': layout['generated'].get('full'),
        'grey': layout['generated'].get('grey'), 'border': layout['generated'].get('mean_border'),
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
        cells = [('—' if entry[k] is None else f'{format(entry[k]["mean"], s)} ± {format(entry[k]["std"], s)}')
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
    dnnlib.write_bytes_atomic(out, json.dumps(result, indent=2).encode('utf-8'))
    print(markdown_table(result))
    for run in result['incomplete']:
        print(f'incomplete (no auto test result): {run}')
    print(f'written to {out}')


if __name__ == '__main__':
    main()
