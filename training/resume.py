"""Continuing a training run (``--resume``), in one place.

In the order a resumed run meets them:

* :func:`options_for_resume` — the command's options, with those the user did not type again
  taken from the resumed run (:func:`stored_options`; :data:`NOT_RESUMED` never are);
* :func:`check_resume` — before the run directory is made: the snapshot loads into the
  networks and optimisers of the config and has not reached ``--kimg`` yet;
* :func:`resume_from` — in every training process: weights, optimiser and ADA state, this
  rank's random streams (:func:`rng_state`, stored in each snapshot) and the progress counters.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click
import numpy as np
import torch

import dnnlib
from torch_utils import checkpoint
from training import presets

# Options that belong to one invocation and are never taken from a resumed run: where to write,
# what to resume, the script's resolution, this machine's processes, its detector copy and whether
# that copy may run code (a run file must never grant that).
NOT_RESUMED = ('outdir', 'resume', 'resolution', 'gpus', 'workers', 'detector', 'detector_runs_code')


# ----------------------------------------------------------------------------------------------
# Options: what a resumed run takes from the run it continues.

def stored_options(resume: str) -> tuple[dict, str]:
    """The options of the run that ``--resume`` names, and the file they come from: the run's
    ``training_options.json`` (beside the snapshot), else the copy inside the snapshot."""
    snapshot = find_resume_snapshot(resume)
    path = os.path.join(os.path.dirname(snapshot), 'training_options.json')
    try:
        if not dnnlib.check_regular_file(path):
            raise FileNotFoundError(path)
        with open(path, encoding='utf-8') as f:
            config = json.load(f)
    except (OSError, *dnnlib.JSON_READ_ERRORS):   # missing or damaged: the snapshot holds the same options
        config = None
    if not isinstance(config, dict):
        config, path = checkpoint.read_snapshot(snapshot)['data'].get('training_options'), snapshot
        if not isinstance(config, dict):   # none stored (or not a mapping): the command line's options alone
            config = {}
    if isinstance(config.get('options'), dict):
        return dict(config['options']), path
    # A run written before its options were stored: the config's fields under their option names.
    fields = dict(tick='kimg_per_tick')
    names = ('data', 'data_root', 'cfg', 'batch', 'kimg', 'snap', 'tick', 'seed', 'metrics', 'mirror', 'fp32',
             'aug', 'augpipe', 'target', 'allow_tf32', 'nobench', 'auto_test')
    options = {name: config[fields.get(name, name)] for name in names if fields.get(name, name) in config}
    if config.get('aug') == 'fixed':
        options['p'] = config.get('p')
    return options, path


def resume_options(options: dict, given: set[str], stored: dict) -> tuple[dict, dict]:
    """``options`` with each option the user did not give (``given``: typed on the command line)
    taken from the resumed run's ``stored`` options; returns (merged options, those taken)."""
    taken = {name: value for name, value in stored.items()
             if name in options and name not in given and name not in NOT_RESUMED and value != options[name]}
    return {**options, **taken}, taken


def options_for_resume(options: dict, ctx: click.Context) -> dict:
    """The command's ``options`` with those the user did not type taken from the run ``--resume``
    names; prints one line listing what was taken and what, given again, won."""
    params = {param.name: param for param in ctx.command.params}
    given = {name for name in options if ctx.get_parameter_source(name) not in
             (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)}
    stored, source = stored_options(options['resume'])
    merged, taken = resume_options(options, given, stored)
    for name, value in taken.items():   # a hand-edited file: each value taken must be its option's type
        try:
            if name == 'metrics' and isinstance(value, list) and all(isinstance(m, str) for m in value):
                continue   # older runs store the metric list itself
            merged[name] = taken[name] = dnnlib.check_stored_option(params[name].opts[0], value, params[name].type)
        except dnnlib.UserError as err:
            raise dnnlib.UserError(f'--resume: {source} stores {err}; fix the file, or give '
                                   f'{params[name].opts[0]} on the command line') from None
    again = {name: stored[name] for name in sorted(given & set(stored))
             if name not in NOT_RESUMED and stored[name] != merged[name]}
    print(f'Resuming with the options of {source}: '
          + (' '.join(_option_text(params[name], value) for name, value in taken.items()) or 'none differ')
          + ''.join(f'; {_option_text(params[name], merged[name])} given again wins over '
                    f'{_option_text(params[name], value)}' for name, value in again.items()), flush=True)
    return merged


def _option_text(param: click.Parameter, value: Any) -> str:
    """How the user would type ``value`` for ``param``: ``--seed=7``, ``--metrics=none``, ``--no-auto-test``."""
    if isinstance(param, click.Option) and param.is_flag:
        return param.opts[0] if value else (param.secondary_opts or [f'(no {param.opts[0]})'])[0]
    value = (','.join(map(str, value)) or 'none') if isinstance(value, list) else value
    return f'{param.opts[0]}={value}'


# ----------------------------------------------------------------------------------------------
# The snapshot: found, checked before the run directory exists, and loaded in every process.

def find_resume_snapshot(path: str) -> str:
    """A snapshot file, or the latest ``network-snapshot-*.pt`` of a run directory."""
    if os.path.isdir(path):
        found = checkpoint.list_snapshots(path)
        if not found:
            raise dnnlib.UserError(f'--resume: no {checkpoint.SNAPSHOT_GLOB} in {path}')
        return found[-1]
    if not os.path.isfile(path):
        raise dnnlib.UserError(f'--resume: {path} is neither a snapshot file nor a run directory')
    return path


def check_resume(c: dnnlib.EasyDict) -> None:
    """The ``--resume`` snapshot loads into the networks and optimisers of ``c`` (built on the CPU,
    as the training loop will; this process's random streams are left as they were) and has not
    reached ``c.kimg`` yet; otherwise one line saying what the snapshot was trained with."""
    from training.training_loop import build_networks, build_optimizers
    snapshot = find_resume_snapshot(c.resume)
    streams = rng_state()
    try:
        nets = build_networks(c, torch.device('cpu'))   # initialising them draws random numbers too
        nimg = resume_from(snapshot, nets, build_optimizers(nets, c), None, rank=0, world_size=1)['cur_nimg']
    finally:
        set_rng_state(streams)
    if nimg >= c.kimg * 1000:
        raise dnnlib.UserError(f'--resume: {snapshot} is at kimg {nimg / 1000:g}, which already reaches '
                               f'--kimg={c.kimg:g}; pass a larger --kimg to train on')


def resume_from(path: str, nets: dnnlib.EasyDict, optimizers: dict, ada: Any, rank: int, world_size: int) -> dict:
    """Load weights, optimiser and ADA state and this rank's RNG from a snapshot.

    Returns the progress counters (cur_nimg, cur_tick, batch_idx) to continue from.
    """
    payload = checkpoint.read_snapshot(path)
    data = payload['data']
    for name in ('G', 'G_ema', 'D', 'augment_pipe', 'estimators'):
        module = nets.get(name)
        if module is None:
            continue
        if name not in payload['modules']:
            raise dnnlib.UserError(f'--resume: {path} has no {name}; {trained_with(data)}')
        try:
            module.load_state_dict(payload['modules'][name]['state'])
        except RuntimeError:
            raise dnnlib.UserError(f'--resume: the {name} of {path} does not fit this run; {trained_with(data)}') from None
    saved_optimizers = data.get('optimizers')
    if not isinstance(saved_optimizers, dict) or not set(optimizers) <= set(saved_optimizers):
        raise dnnlib.UserError(f'--resume: {path} holds no optimiser state (a converted snapshot, or not written by '
                               f'training); use a network-snapshot of a training run')
    # A weights_only file can still hold states of the wrong shape: each load names the snapshot.
    state_errors = (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError)
    for name, opt in optimizers.items():
        try:
            opt.load_state_dict(saved_optimizers[name])
        except state_errors:  # another set of trainable parameters, e.g. another --freezed
            raise dnnlib.UserError(f'--resume: the {name} optimiser state of {path} does not fit this run; '
                                   f'resume with the options it was trained with (--freezed)') from None
    counters = {name: data.get(name) for name in ('cur_nimg', 'cur_tick', 'batch_idx')}
    bad = [f'{name}={value!r}' for name, value in counters.items()
           if isinstance(value, bool) or not isinstance(value, int) or value < 0]
    if bad:
        raise dnnlib.UserError(f'--resume: {path} holds no valid training progress ({", ".join(bad)}); '
                               f'use another network-snapshot of the run')
    try:
        if ada is not None and data.get('ada') is not None:
            ada.load_state_dict(data['ada'])
        rng = data.get('rng')
        if isinstance(rng, (list, tuple)) and len(rng) == world_size:
            set_rng_state(rng[rank])
        else:  # another number of processes: a fresh but reproducible stream per rank
            seed_everything(counters['cur_nimg'] + rank)
    except state_errors as err:
        raise dnnlib.UserError(f'--resume: the ADA or random-number state of {path} is damaged '
                               f'({type(err).__name__}); use another network-snapshot of the run') from None
    return counters


def trained_with(data: dict) -> str:
    """What a snapshot's ``data`` says it was trained with, and the command that resumes it."""
    options = data.get('training_options')
    cfg = options.get('cfg') if isinstance(options, dict) and isinstance(options.get('cfg'), str) else None
    script = next((f'train_ILS_{res}.py' for res, table in presets.PRESET_TABLES.items() if cfg in table), None)
    has = f'it was trained with --cfg={cfg} at {data.get("resolution", "?")} px'
    return f'{has}: resume it with {script} --cfg={cfg}' if script else f'{has}: resume it with that --cfg'


# ----------------------------------------------------------------------------------------------
# Random streams: each rank's is stored in every snapshot and restored on resume.

def rng_state() -> dict:
    """This process's torch (+ CUDA) and numpy RNG state as snapshot data."""
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                numpy=dict(keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=int(np_state[2]),
                           has_gauss=int(np_state[3]), gauss=float(np_state[4])))


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    if state['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    n = state['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['gauss']))


def seed_everything(seed: int) -> None:
    np.random.seed(seed % (1 << 31))
    torch.manual_seed(seed)
