"""Train with the cpu preset and some of its fields changed, without editing training/presets.py.

    python experiments/train_lever.py --set bin_weight=10 -- --outdir=runs --data=car --data-root=DIR --seed=0

A training lever (issue 22) is tried here first; only one kept for every dataset moves into the cpu
preset. Each ``--set FIELD=JSON`` replaces one field of the cpu preset (a field the preset tables
know: ``training/presets.py`` BASE); the arguments after ``--`` go to ``train_ILS_64.py`` unchanged,
with ``--cfg=cpu_lever``, the preset registered here (its fields land in training_options.json as for
any preset, so the auto test and ``--resume`` read them back).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
from metrics import training_hooks  # noqa: E402
from training import presets  # noqa: E402
from training.train_cli import make_main  # noqa: E402

NAME = 'cpu_lever'


def lever_preset(items: list[str]) -> dict:
    """The cpu preset with FIELD=JSON items put in; UserError for a field BASE does not have."""
    preset = dict(presets.PRESETS_64['cpu'])
    for item in items:
        name, sep, text = item.partition('=')
        if not sep or name not in presets.BASE:
            raise dnnlib.UserError(f'--set {item!r}: expected FIELD=JSON with FIELD a preset field')
        try:
            preset[name] = json.loads(text)
        except json.JSONDecodeError:
            raise dnnlib.UserError(f'--set {item!r}: the value is not JSON') from None
    return preset


def main(argv: list[str]) -> None:
    if '--' not in argv:
        print('error: usage: train_lever.py --set FIELD=JSON ... -- TRAIN_ARGS', file=sys.stderr)
        sys.exit(2)
    split = argv.index('--')
    sets = [argv[i + 1] for i in range(split) if argv[i] == '--set' and i + 1 < split]
    try:
        presets.PRESETS_64[NAME] = lever_preset(sets)
    except dnnlib.UserError as err:
        print(f'error: {dnnlib.safe_line(err)}', file=sys.stderr)
        sys.exit(2)
    make_main(resolution=64, hooks=training_hooks.HOOKS)(argv[split + 1:] + [f'--cfg={NAME}'])


if __name__ == '__main__':
    main(sys.argv[1:])
