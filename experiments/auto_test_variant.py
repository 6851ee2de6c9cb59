"""Re-run a finished run's auto test with some of its sample-time fields changed (issue 22's levers).

    python experiments/auto_test_variant.py RUN_DIR --set auto_test_roles=border --out=variant.json
    python experiments/auto_test_variant.py RUN_DIR --set 'auto_test_perturb={"xint_max": 0.25}' --out=wide.json

Each ``--set FIELD=JSON`` replaces one field of the run's training options for this auto test only
(the sample-time fields: ``auto_test_roles``, ``auto_test_perturb``); the training is not touched.
The variant's synthetic set gets its own folder under RUN_DIR/auto_test/, its summary is written
to ``--out``, and the run's own ``auto_test/results.json`` is put back as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
from metrics import auto_test  # noqa: E402

FIELDS = ('auto_test_roles', 'auto_test_perturb')


def parse_sets(items: tuple[str, ...]) -> dict:
    """FIELD=JSON pairs → dict; UserError for an unknown field or a value that is not JSON."""
    overrides = {}
    for item in items:
        name, sep, text = item.partition('=')
        if not sep or name not in FIELDS:
            raise dnnlib.UserError(f'--set {item!r}: expected FIELD=JSON with FIELD one of {", ".join(FIELDS)}')
        try:
            overrides[name] = json.loads(text)
        except json.JSONDecodeError:
            overrides[name] = text          # a bare word, e.g. border
    return overrides


@click.command()
@click.argument('run_dir', type=click.Path(file_okay=False))
@click.option('--set', 'sets', multiple=True, metavar='FIELD=JSON', help='A sample-time field to change')
@click.option('--out', required=True, metavar='FILE', help='Write the variant\'s summary (JSON) here')
@dnnlib.report_user_errors
def main(run_dir: str, sets: tuple[str, ...], out: str) -> None:
    """Run the auto test of RUN_DIR with changed sample-time fields; keep its own results.json."""
    config = dict(auto_test.read_training_options(run_dir), **parse_sets(sets))
    own = os.path.join(run_dir, 'auto_test', 'results.json')
    kept = own + '.kept'
    if os.path.isfile(own):
        shutil.copyfile(own, kept)
    try:
        summary = auto_test.run_auto_test(run_dir, config, progress=False)
    finally:
        if os.path.isfile(kept):
            os.replace(kept, own)
    summary['variant'] = parse_sets(sets)
    dnnlib.write_bytes_atomic(out, dnnlib.json_text(summary, indent=2, default=str).encode('utf-8'))
    print(f'variant summary written to {out}')


if __name__ == '__main__':
    main()
