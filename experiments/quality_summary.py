"""The two bits of Python that experiments/quality.sh needs: the auto test's sizes of a run, and quality.json.

    python experiments/quality_summary.py sizes RUN_DIR
    python experiments/quality_summary.py option RUN_DIR data
    python experiments/quality_summary.py summary RUN_DIR RUN_DIR/ceiling --out=OUTDIR/quality.json --wall=training=512

``sizes`` prints ``N R ITERS BATCH WIDTH VAL_INTERVAL``: the sample count of the auto test (at
most the number of training images with masks), the run's resolution and the UNet sizes the auto test used (read from ``training_options.json`` through
``metrics.auto_test.AutoTestSizes``, so a preset without ``auto_test_sizes`` gives the original's),
so that the ground-truth ceiling is trained exactly as the generated set was. It fails unless the
run's training images have masks (the synthetic set, CUB, dogs/cars with ``_maskorig.png`` files).

``option`` prints one field of the run's ``training_options.json`` (empty for null).

``summary`` joins ``RUN_DIR/auto_test/results.json`` and the newest segmentation run in
CEILING_DIR (``RUN_DIR/ceiling``) into one JSON (written atomically) and prints a table: IoU and
DICE against the ceiling and against the fixed mask of the test split (one mask for every image,
:func:`metrics.segmentation.fixed_mask_score`), with the gain over it and the auto test's warnings.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
from metrics.auto_test import AutoTestSizes, read_training_options  # noqa: E402


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise dnnlib.UserError(f'{path} not found: did the step that writes it finish?')
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def ceiling_run(ceiling_dir: str) -> tuple[dict, dict]:
    """(results.json, options.json) of the newest eval_segmentation.py run in ``ceiling_dir``
    (run folders are numbered upwards)."""
    found = sorted(glob.glob(os.path.join(ceiling_dir, '[0-9]*-real-*', 'results.json')))
    if not found:
        raise dnnlib.UserError(f'no segmentation run with a results.json in {ceiling_dir}')
    return read_json(found[-1]), read_json(os.path.join(os.path.dirname(found[-1]), 'options.json'))


def build_summary(run_dir: str, ceiling_dir: str, walls: dict[str, float | None]) -> dict:
    """quality.json: the run, its auto test scores, the ground-truth ceiling and the wall times (s)."""
    options = read_training_options(run_dir)
    auto = read_json(os.path.join(run_dir, 'auto_test', 'results.json'))
    ceiling, ceiling_options = ceiling_run(ceiling_dir)
    return {
        'run_dir': os.path.abspath(run_dir), 'cfg': options.get('cfg'), 'kimg': options.get('kimg'),
        'resolution': options.get('resolution'), 'snapshot': auto['snapshot'], 'fid': auto.get('fid'),
        'training_time_s': walls.get('training'),
        'IoU': auto['IoU'], 'DICE': auto['DICE'], 'MI_1': auto['MI_1'], 'MI_2': auto['MI_2'], 'MI': auto['MI'],
        # None in an auto test written before the fixed mask.
        'fixed_mask_IoU': auto.get('fixed_mask_IoU'), 'fixed_mask_DICE': auto.get('fixed_mask_DICE'),
        'fixed_mask_threshold': auto.get('fixed_mask_threshold'), 'IoU_gain': auto.get('IoU_gain'),
        'warnings': auto.get('warnings') or [],
        'ceiling': {'IoU': ceiling['results']['IoU'], 'DICE': ceiling['results']['DICE'],
                    'ground_truth_pairs': ceiling_options['syn_data'], 'segmentation_run': ceiling['run_dir']},
        'sizes': auto['sizes'], 'wall_s': walls, 'timestamp': time.time(),
    }


def format_table(summary: dict) -> str:
    def fmt(value):
        return '—' if value is None else (f'{value:.4f}' if isinstance(value, float) else str(value))
    c = summary['ceiling']
    rows = [('run', os.path.basename(summary['run_dir'])),
            ('IoU / ceiling', f'{fmt(summary["IoU"])} / {fmt(c["IoU"])}'),
            ('DICE / ceiling', f'{fmt(summary["DICE"])} / {fmt(c["DICE"])}'),
            ('fixed mask IoU / DICE', f'{fmt(summary.get("fixed_mask_IoU"))} / {fmt(summary.get("fixed_mask_DICE"))}'),
            ('IoU gain over fixed mask', '—' if summary.get('IoU_gain') is None else f'{summary["IoU_gain"]:+.4f}'),
            ('MI_1, MI_2, MI', ', '.join(fmt(summary[k]) for k in ('MI_1', 'MI_2', 'MI')))]
    rows += [(f'{name} wall', '—' if value is None else dnnlib.format_time(value))
             for name, value in summary['wall_s'].items()]
    width = max(len(name) for name, _ in rows)
    return '\n'.join([f'{name:<{width}} | {value}' for name, value in rows]
                     + [f'WARNING: {text}' for text in summary.get('warnings') or []])


@click.group()
def main() -> None:
    """Helpers of experiments/quality.sh."""


@main.command()
@click.argument('run_dir')
@dnnlib.report_user_errors
def sizes(run_dir: str) -> None:
    """Print N R ITERS BATCH WIDTH VAL_INTERVAL of the run's auto test."""
    from training.dataset import open_dataset
    options = read_training_options(run_dir)
    train = open_dataset(options['data'], 'train', options['resolution'], options.get('data_root'), train_masks=True)
    if not train.has_masks:
        raise dnnlib.UserError(f'{run_dir} trained on {options["data"]!r}, whose training images have no masks; '
                               f'the ceiling needs them (the synthetic set, CUB, a folder of img/ + mask/)')
    s = AutoTestSizes.from_dict(options.get('auto_test_sizes'))
    print(min(s.n, len(train)), options['resolution'], s.seg_iters, s.seg_batch, s.seg_base_width, min(s.seg_val_interval, s.seg_iters))


@main.command()
@click.argument('run_dir')
@click.argument('name')
@dnnlib.report_user_errors
def option(run_dir: str, name: str) -> None:
    """Print the training option NAME of the run (empty for null)."""
    value = read_training_options(run_dir).get(name)
    print('' if value is None else value)


@main.command()
@click.argument('run_dir')
@click.argument('ceiling_dir')
@click.option('--out', required=True, help='Where to write quality.json.')
@click.option('--wall', multiple=True, metavar='STAGE=SECONDS', help='Wall time of a stage (repeatable).')
@dnnlib.report_user_errors
def summary(run_dir: str, ceiling_dir: str, out: str, wall: tuple[str, ...]) -> None:
    """Write quality.json and print a table."""
    walls: dict[str, float | None] = {'training': None}
    for item in wall:
        name, _, seconds = item.partition('=')
        walls[name] = float(seconds) if seconds else None
    result = build_summary(run_dir, ceiling_dir, walls)
    dnnlib.write_bytes_atomic(out, dnnlib.json_text(result, indent=2).encode('utf-8'))
    print(format_table(result))
    print(f'written to {out}')


if __name__ == '__main__':
    main()
