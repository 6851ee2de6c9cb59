"""What the two training scripts share: options → config, run directory, launch.

* :func:`build_training_config` — a pure function from the command-line options to one plain
  config (the preset of :mod:`training.presets` + overrides + the constructor arguments of every
  module); validation errors are one-line :class:`dnnlib.UserError`\\ s;
* :func:`launch` — creates ``<outdir>/<NNNNN>-<data>-<cfg>-batch<B>`` with
  ``training_options.json`` and runs :func:`training.training_loop.training_loop` in one process,
  ``--gpus`` local processes, or the processes torchrun started;
* :func:`make_main` — the click command of ``train_ILS_64.py`` / ``train_ILS_128.py``.

What these need from the metrics package (metric names, the detector, the auto test) comes in as
:class:`MetricsHooks`, which the two scripts hand over: imports run scripts → metrics → training,
and in training/ only the training loop calls the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
from typing import Any, Callable

import click
import torch

import dnnlib
from torch_utils import distributed, misc
from training import presets
from training.loss import MIXING_MODES
from training.resume import check_resume, options_for_resume

AUG_MODES = ('ada', 'noaug', 'fixed')

# The numeric options and their ranges: the click options use these types, and
# build_training_config checks values that did not come through click with the same ones.
OPTION_TYPES: dict[str, click.ParamType] = dict(
    gpus=click.IntRange(1, dnnlib.MAX_WORKERS), batch=click.IntRange(1, dnnlib.MAX_BATCH),
    kimg=dnnlib.FiniteFloat(0, dnnlib.MAX_COUNT, min_open=True), snap=click.IntRange(1, dnnlib.MAX_COUNT),
    tick=dnnlib.FiniteFloat(0, dnnlib.MAX_COUNT, min_open=True), seed=dnnlib.SEED,
    workers=click.IntRange(0, dnnlib.MAX_WORKERS), gamma=dnnlib.FiniteFloat(0, dnnlib.MAX_WEIGHT),
    p=dnnlib.FiniteFloat(0, 1), target=dnnlib.FiniteFloat(0, 1), subset=click.IntRange(1, dnnlib.MAX_COUNT),
    map_layers=click.IntRange(1, 64), mixing_prob=dnnlib.FiniteFloat(0, 1),
    pl_weight=dnnlib.FiniteFloat(0, dnnlib.MAX_WEIGHT), freezed=click.IntRange(0, 64))
OPTION_FLAGS = dict(map_layers='map')   # parameters whose option has another name


@dataclasses.dataclass(frozen=True)
class MetricsHooks:
    """What the training command takes from the metrics package, which training/ does not import.

    The training scripts pass :data:`metrics.training_hooks.HOOKS`. A config that computes no
    metrics and runs no auto test needs none (``hooks=None``); one that does raises ValueError
    without them. Each field is a function:

    * ``valid_metrics() -> list[str]``: the names ``--metrics`` accepts;
    * ``resolve_detector(path, runs_code) -> (path, runs_code)``: ``--detector`` and
      ``--detector-runs-code`` with the environment's defaults put in (the one place read);
    * ``check_detector(path, runs_code)``: UserError for a detector the metrics cannot use;
    * ``check_test_data(path, resolution)``: UserError for ``--test-data`` pairs that cannot be read;
    * ``check_test_split(data, resolution, data_root)``: UserError when ``--data`` has no test split
      with masks;
    * ``check_auto_test_sizes(sizes, resolution, device)``: UserError when the auto test's networks
      (``auto_test_sizes`` of the config, a dict or None) cannot fit on ``device`` ('cpu' or 'cuda');
    * ``run_auto_test(run_dir, c)``: the chain after training (generation → segmentation → MINE).
    """

    valid_metrics: Callable[[], list[str]]
    resolve_detector: Callable[[str | None, bool], tuple[str, bool]]
    check_detector: Callable[[str | None, bool], None]
    check_test_data: Callable[[str, int], None]
    check_test_split: Callable[[str, int, str | None], None]
    check_auto_test_sizes: Callable[[dict | None, int, str], None]
    run_auto_test: Callable[[str, dnnlib.EasyDict], None]


def _given(hooks: MetricsHooks | None, need: str) -> MetricsHooks:
    """``hooks``, or ValueError (a caller's mistake, not the user's) naming what needed them."""
    if hooks is None:
        raise ValueError(f'{need} needs the metrics package: pass hooks=metrics.training_hooks.HOOKS')
    return hooks


def _parse_metrics(metrics: str | list | None, default: list[str], hooks: MetricsHooks | None) -> list[str]:
    if metrics is None:
        return list(default)
    names = metrics if isinstance(metrics, list) else [m.strip() for m in metrics.split(',') if m.strip()]
    if names in ([], ['none']):
        return []
    valid = _given(hooks, f'--metrics={",".join(names)}').valid_metrics()
    for name in names:
        if name not in valid:
            raise dnnlib.UserError(f'unknown metric "{name}" in --metrics; valid: {", ".join(valid)}, or none')
    return names


def _data_name(data: str) -> str:
    """The dataset part of the run directory name: the --data keyword or the path's base name."""
    name = os.path.basename(os.path.normpath(data)) if os.sep in data or os.path.exists(data) else data
    name = re.sub(r'\.(zip|tar|tgz)$', '', name)
    return re.sub(r'[^0-9A-Za-z_.]+', '_', name) or 'data'


def build_training_config(*, outdir: str, data: str, resolution: int = 64, cfg: str | None = None,
                          data_root: str | None = None, gpus: int = 1, batch: int | None = None,
                          kimg: float | None = None, snap: int | None = None, tick: float | None = None,
                          seed: int = 0, metrics: str | list | None = None, resume: str | None = None,
                          workers: int | None = None, mirror: bool = False, fp32: bool = False,
                          gamma: float | None = None, aug: str | None = None, p: float | None = None,
                          target: float | None = None, augpipe: str | None = None, allow_tf32: bool = False,
                          nobench: bool = False, detector: str | None = None, detector_runs_code: bool = False,
                          auto_test: bool = False,
                          test_data: str | None = None,
                          subset: int | None = None, map_layers: int | None = None, mixing: str | None = None,
                          mixing_prob: float | None = None, pl_weight: float | None = None,
                          freezed: int | None = None, nhwc: bool | None = None, upd_e: str | None = None,
                          cond: bool = False, compile: bool = False, hooks: MetricsHooks | None = None,
                          **unused: Any) -> dnnlib.EasyDict:
    """Command-line options → the complete, validated training config (no side effects).

    ``resolution`` is the script's (64 or 128); ``cfg`` defaults to its default preset. Options
    left as None keep the preset's value. Raises :class:`dnnlib.UserError` for a number out of
    its option's range (NaN and ±inf included: a config may come from Python or a stored JSON),
    an unknown --cfg (or one of the other script), a batch not divisible by --gpus, an unknown
    metric, an unwritable --outdir and the other inconsistent combinations. ``upd_e`` is accepted
    and ignored: the original's option had no effect either. The options themselves are kept in
    ``c.options``: ``--resume`` takes them from a stored run. ``hooks`` check the metric names
    given (see :class:`MetricsHooks`).
    """
    # Before any other name is bound; the hooks are functions, not options (c.options is stored as JSON).
    options = {name: value for name, value in locals().items() if name not in ('unused', 'hooks')}
    if unused:
        raise dnnlib.UserError(f'unknown option(s): {", ".join(sorted(unused))}')
    for name, param_type in OPTION_TYPES.items():
        if options[name] is not None:
            dnnlib.check_option(OPTION_FLAGS.get(name, name), options[name], param_type)
    if cond:
        raise dnnlib.UserError('--cond: the datasets have no class labels, so conditional training is not '
                               'available; leave --cond off')
    cfg = cfg or presets.DEFAULT_CFG[resolution]
    spec = presets.resolve_preset(cfg, resolution, batch=batch, kimg=kimg, snap=snap, kimg_per_tick=tick,
                                  workers=workers, gamma=gamma, aug=aug, augpipe=augpipe, target=target,
                                  mapping_layers=map_layers, mixing=mixing, style_mixing_prob=mixing_prob,
                                  pl_weight=pl_weight, freeze_layers=freezed, channels_last=nhwc)
    if not data:
        raise dnnlib.UserError('--data is required: cub, dog, car, synthetic or a path '
                               '(with --resume, the resumed run\'s is used)')
    if gpus < 1:
        raise dnnlib.UserError(f'--gpus must be at least 1, got {gpus}')
    torchrun = distributed.torchrun_env()   # under torchrun its processes count, not --gpus
    batch_gpu, mbstd_group = split_batch(spec.batch, torchrun[2] if torchrun else gpus, spec.mbstd, bool(torchrun))
    if spec.kimg <= 0 or spec.kimg_per_tick <= 0 or spec.snap < 1:
        raise dnnlib.UserError('--kimg and --tick must be > 0 and --snap >= 1')
    if spec.mapping_layers < 1:
        raise dnnlib.UserError(f'--map must be at least 1, got {spec.mapping_layers}')
    if spec.mixing not in MIXING_MODES:
        raise dnnlib.UserError(f'unknown --mixing={spec.mixing}; valid: {", ".join(MIXING_MODES)}')
    if not 0 <= spec.style_mixing_prob <= 1 or spec.pl_weight < 0 or spec.freeze_layers < 0:
        raise dnnlib.UserError('--mixing-prob must lie in [0, 1], --pl-weight and --freezed must be >= 0')
    if spec.aug not in AUG_MODES:
        raise dnnlib.UserError(f'unknown --aug={spec.aug}; valid: {", ".join(AUG_MODES)}')
    if spec.aug == 'fixed':
        if p is None or not 0 <= p <= 1:
            raise dnnlib.UserError('--aug=fixed needs --p in [0, 1]')
        spec.p = float(p)
    elif p is not None:
        raise dnnlib.UserError('--p only applies to --aug=fixed')
    if target is not None and spec.aug != 'ada':
        raise dnnlib.UserError(f'--target only applies to --aug=ada (here --aug={spec.aug}); drop --target')
    from training.augment import AUGPIPE_SPECS
    if spec.augpipe not in AUGPIPE_SPECS:
        raise dnnlib.UserError(f'unknown --augpipe={spec.augpipe}; valid: {", ".join(AUGPIPE_SPECS)}')
    if resume is not None and not os.path.exists(resume):
        raise dnnlib.UserError(f'--resume: {resume} does not exist')
    try:
        misc.ensure_writable_dir(outdir)
    except OSError as err:
        raise dnnlib.UserError(f'--outdir={outdir} is not writable: {err}') from None
    if os.path.isdir(data) and _is_inside(outdir, data):
        raise dnnlib.UserError(f'--outdir={outdir} lies inside --data={data}: the run\'s grids would be read as training '
                               f'images by the next run; choose an --outdir outside the data folder')
    if fp32:
        spec.num_fp16_res, spec.conv_clamp = 0, None
    spec.metrics = _parse_metrics(metrics, spec.metrics, hooks)

    c = dnnlib.EasyDict(spec)
    c.update(outdir=outdir, data=data, data_root=data_root, gpus=gpus, seed=seed, resume=resume, mirror=mirror,
             fp32=fp32, allow_tf32=allow_tf32, nobench=nobench, detector=detector,
             detector_runs_code=bool(detector_runs_code), auto_test=auto_test,
             test_data=test_data,
             compile=compile, batch_gpu=batch_gpu, options=options,
             run_desc=f'{_data_name(data)}-{cfg}-batch{spec.batch}' + _option_suffixes(
                 subset=subset, map=map_layers, pl=pl_weight, mixing=mixing, freezed=freezed)
             + ('-updateEinD' if upd_e == 'D' else ''))   # the original's suffix; the option changes nothing
    c.dataset_kwargs = dict(data=data, split='train', resolution=spec.resolution, data_root=data_root, xflip=mirror)
    if subset is not None:
        # As StyleGAN2-ADA: a subset drawn with the run's --seed (training.image_files.Dataset).
        c.dataset_kwargs.update(max_size=subset, seed=seed)
    c.G_kwargs = dict(class_name='training.networks.LayeredGenerator', img_resolution=spec.resolution,
                      z_dim=spec.z_dim, w_dim=spec.w_dim, channel_base=spec.channel_base,
                      channel_max=spec.channel_max, mapping_layers=spec.mapping_layers,
                      mapping_lr_mul=spec.mapping_lr_mul, num_fp16_res=spec.num_fp16_res, conv_clamp=spec.conv_clamp)
    if spec.placement_max > 0:   # only then: the paper presets' G records stay as they were
        c.G_kwargs['placement_max'] = spec.placement_max
    c.D_kwargs = dict(class_name='training.networks.Discriminator', img_resolution=spec.resolution,
                      channel_base=spec.channel_base, channel_max=spec.channel_max,
                      num_fp16_res=spec.num_fp16_res, conv_clamp=spec.conv_clamp,
                      mbstd_group_size=mbstd_group, freeze_layers=spec.freeze_layers)
    c.composition_kwargs = dict(class_name='training.networks.PerturbedComposition', xint_max=spec.xint_max,
                                bg_contrast=spec.bg_contrast, xfrac_max=spec.xfrac_max, rotate_max=spec.rotate_max,
                                scale_max=spec.scale_max)
    c.augment_kwargs = None if spec.aug == 'noaug' else dict(class_name='training.augment.AugmentPipe',
                                                            **AUGPIPE_SPECS[spec.augpipe])
    learned = spec.estimator == 'club' and str(spec.distribution).startswith('neural_')
    c.estimator_kwargs = dict(class_name='training.mi_estimators.MIEstimators', distribution=spec.distribution,
                              resolution=spec.estimator_resolution,
                              widths=list(spec.estimator_channels)) if learned else None
    c.loss_kwargs = dict(r1_gamma=spec.gamma, bin_weight=spec.bin_weight, msize_weight=spec.msize_weight,
                         min_msize=spec.min_msize, max_msize=spec.max_msize, msize_on_batch=spec.msize_on_batch,
                         border_weight=spec.border_weight, border_max=spec.border_max,
                         estimator=spec.estimator, distribution=spec.distribution,
                         neg_weight=spec.neg_weight, opt_mask=spec.opt_mask, stop_grad=spec.stop_grad,
                         estimator_weight=spec.estimator_weight, style_mixing_prob=spec.style_mixing_prob,
                         mixing=spec.mixing, pl_weight=spec.pl_weight, pl_decay=spec.pl_decay)
    return c


def _is_inside(path: str, folder: str) -> bool:
    """Whether ``path`` (existing or not) is ``folder`` or lies under it, links resolved."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def split_batch(batch: int, world_size: int, mbstd: int, torchrun: bool = False) -> tuple[int, int]:
    """The global ``batch`` over ``world_size`` processes → (per-process batch, D's minibatch-stddev
    group), the group being ``min(mbstd, per-process batch)``: the one place either is derived.

    UserError unless ``batch`` divides evenly and the group divides the per-process batch (else D's
    forward fails mid-run); ``torchrun`` names torchrun's processes in the message, not --gpus.
    """
    processes = f'the torchrun world size {world_size}' if torchrun else f'--gpus={world_size}'
    if batch < 1 or batch % world_size != 0:
        raise dnnlib.UserError(f'--batch={batch} is not divisible by {processes}')
    batch_gpu = batch // world_size
    group = min(mbstd, batch_gpu)
    if batch_gpu % group != 0:
        over = f' (--batch={batch} over {world_size} torchrun processes)' if torchrun else ''
        raise dnnlib.UserError(f'the per-process batch {batch_gpu}{over} is not a multiple of the minibatch-stddev '
                               f'group {mbstd}; choose --batch as a multiple of {mbstd * world_size}')
    return batch_gpu, group


def for_world_size(c: dnnlib.EasyDict, world_size: int) -> dnnlib.EasyDict:
    """``c`` for the ``world_size`` processes torchrun started (``--gpus`` is ignored there): the
    per-process batch and D's minibatch-stddev group derived again by :func:`split_batch`."""
    batch_gpu, group = split_batch(c.batch, world_size, c.mbstd, torchrun=True)
    return dnnlib.EasyDict(c, gpus=world_size, batch_gpu=batch_gpu, D_kwargs=dict(c.D_kwargs, mbstd_group_size=group))


def _option_suffixes(**given: Any) -> str:
    """The original's run-directory suffixes of the options given: -subset100, -map2, -pl2.0,
    -style_mixing, -freezed4."""
    return ''.join(f'-{value}_mixing' if name == 'mixing' else f'-{name}{value}'
                   for name, value in given.items() if value is not None)


# ----------------------------------------------------------------------------------------------
# Launch.

def prepare_run_dir(c: dnnlib.EasyDict) -> str:
    """Create the next ``<outdir>/<NNNNN>-<desc>`` and write ``training_options.json`` into it first
    (atomically; if that fails, e.g. on a full disk, the new folder is removed again)."""
    os.makedirs(c.outdir, exist_ok=True)
    run_dir = dnnlib.next_run_dir(c.outdir, c.run_desc)
    os.makedirs(run_dir, exist_ok=False)
    try:
        dnnlib.write_bytes_atomic(os.path.join(run_dir, 'training_options.json'),
                                  dnnlib.json_text(c, indent=2).encode('utf-8'))
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(run_dir)   # still empty: ours, made a moment ago
        raise
    return run_dir


# ----------------------------------------------------------------------------------------------
# Input checks: everything a run reads, checked before its run directory is made.

def check_inputs(c: dnnlib.EasyDict, hooks: MetricsHooks | None = None) -> None:
    """UserError for the first unusable input of ``c``: the dataset (the images of reals.png are
    read: a damaged file among them stops the run here), the ``--test-data`` pairs (every one read),
    else the dataset's test split when the auto test follows training, the ``--resume`` snapshot,
    the detector of the metrics (those three through ``hooks``)."""
    from training.dataset import open_dataset
    from training.training_loop import reals_indices
    check_training_memory(c, hooks)
    dataset = open_dataset(**c.dataset_kwargs)
    subset = c.dataset_kwargs.get('max_size')
    if subset is not None and len(dataset.raw_indices) < subset:
        raise dnnlib.UserError(f'--subset={subset} is larger than the dataset ({len(dataset.raw_indices)} images); '
                               f'choose at most that many')
    for index in sorted(set(reals_indices(len(dataset), c))):
        dataset[index]
    if c.get('test_data'):
        _given(hooks, '--test-data').check_test_data(c.test_data, c.resolution)
    elif c.get('auto_test'):
        try:
            _given(hooks, 'the auto test').check_test_split(c.data, c.resolution, c.data_root)
        except dnnlib.UserError as err:
            raise dnnlib.UserError(f'the auto test after training needs a test split: {err}; '
                                   f'or pass --no-auto-test') from None
    if c.resume:
        check_resume(c)
    if c.metrics:
        _given(hooks, 'the metrics').check_detector(c.detector, c.get('detector_runs_code', False))


# Tensors a training step keeps per feature map float: G's and D's forward maps for the backward
# pass, their gradients, and the R1 pass over D (a rough count; the estimate errs low).
TRAINING_TENSORS_PER_MAP = 4


def check_training_memory(c: dnnlib.EasyDict, hooks: MetricsHooks | None = None) -> None:
    """UserError when the networks of ``c`` (G and D trained with Adam, G_ema) and the feature maps
    of one per-process batch cannot fit in this machine's free memory (each GPU's, or the RAM the
    ``--gpus`` CPU processes share), before anything is made; with the auto test, its networks too
    (through ``hooks``)."""
    from torch_utils import memory
    from training import networks
    weights = (memory.TRAINED_PARAMETER_BYTES * (networks.generator_parameters(**c.G_kwargs)
                                                 + networks.discriminator_parameters(**c.D_kwargs))
               + memory.FLOAT_BYTES * networks.generator_parameters(**c.G_kwargs))
    maps = (networks.activation_floats(**c.G_kwargs) * c.batch_gpu * TRAINING_TENSORS_PER_MAP
            * memory.FLOAT_BYTES)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    memory.check_fits(weights + maps, f'training with --batch={c.batch} ({c.batch_gpu} per process) at '
                                      f'{c.resolution} px', device, share=c.gpus if device == 'cpu' else 1,
                      advice='choose a smaller --batch (or fewer --gpus)')
    if c.get('auto_test'):   # the chain after training: its sizes are checked now, not hours later
        _given(hooks, 'the auto test').check_auto_test_sizes(c.get('auto_test_sizes'), c.resolution, device)


def warn_about_processes(gpus: int) -> None:
    """A warning line when ``--gpus`` asks for more processes than there are CUDA devices."""
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus <= 1 or gpus <= devices:
        return
    if devices == 0:
        share = f'{gpus} CPU processes (gloo) will share this machine\'s {os.cpu_count()} cores'
    else:
        share = f'the {gpus} processes will share its {devices} CUDA device(s)'
    dnnlib.warn(f'--gpus={gpus} on a machine with {devices} CUDA device(s): {share}')


def _worker(rank: int, world_size: int, device: torch.device, run_dir: str | None, c: dnnlib.EasyDict) -> None:
    """One training process: (torchrun: rank 0 makes the run dir), log to log.txt, train."""
    from training.training_loop import training_loop
    if run_dir is None:
        run_dir = distributed.broadcast_object(prepare_run_dir(c) if rank == 0 else None)
    tee = misc.Tee(os.path.join(run_dir, 'log.txt')) if rank == 0 else None
    if tee is not None:
        sys.stdout = tee
    try:
        with misc.cpu_threads(c.get('cpu_threads') if device.type == 'cpu' else None):
            training_loop(run_dir, c, rank=rank, world_size=world_size, device=device)
    finally:
        if tee is not None:
            sys.stdout = tee.stream
            tee.close()


def launch(c: dnnlib.EasyDict, hooks: MetricsHooks | None = None) -> str | None:
    """Train with ``c``; returns the run directory on the process that wrote it (else None).

    Started by torchrun (WORLD_SIZE in the environment): this process is one rank of the group,
    ``--gpus`` is ignored. Otherwise ``c.gpus`` local processes (one runs in this interpreter).
    ``hooks`` check the inputs of the metrics and the auto test (:func:`check_inputs`); the auto
    test itself runs after, in :func:`make_main`.
    """
    env = distributed.torchrun_env()
    if env is not None:
        c = for_world_size(c, env[2])   # before any folder is made, as for --gpus
        check_inputs(c, hooks)
        holder: list = []
        distributed.run_under_torchrun(_torchrun_worker, (c, holder))
        return holder[0] if holder else None
    check_inputs(c, hooks)   # before any folder is made
    warn_about_processes(c.gpus)
    run_dir = prepare_run_dir(c)
    print(f'Run directory: {run_dir}', flush=True)
    try:
        distributed.spawn_local(_worker, c.gpus, (run_dir, c))
    except torch.multiprocessing.ProcessExitedException as err:
        # A rank that died without a Python error (SIGKILL from the out-of-memory killer, a crash).
        how = f'was killed by {err.signal_name}' if err.signal_name else f'exited with code {err.exit_code}'
        raise TrainingProcessDied(f'training process {err.error_index} of {c.gpus} {how} (SIGKILL is often the '
                                  f'system running out of memory: try a smaller --batch or fewer --gpus); the run '
                                  f'continues from its last snapshot with --resume={run_dir}') from None
    return run_dir


class TrainingProcessDied(dnnlib.UserError):
    """A spawned training process ended without a Python error; the machine's state, exit 1."""


def _torchrun_worker(rank: int, world_size: int, device: torch.device, c: dnnlib.EasyDict, holder: list) -> None:
    run_dir = distributed.broadcast_object(prepare_run_dir(c) if rank == 0 else None)
    _worker(rank, world_size, device, run_dir, c)
    if rank == 0:
        holder.append(run_dir)


def run_auto_test(run_dir: str, c: dnnlib.EasyDict, hooks: MetricsHooks) -> None:
    """The 64 script's post-training chain (generation → segmentation → MINE)."""
    with misc.cpu_threads(c.get('cpu_threads') if not torch.cuda.is_available() else None):
        hooks.run_auto_test(run_dir, c)


# ----------------------------------------------------------------------------------------------
# The click command.

def make_main(resolution: int, hooks: MetricsHooks):
    """The click command of ``train_ILS_<resolution>.py``; ``hooks`` are
    :data:`metrics.training_hooks.HOOKS` (the scripts hand them over)."""
    names = presets.preset_names(resolution)
    default_cfg = presets.DEFAULT_CFG[resolution]

    @click.command(cls=dnnlib.cli.FlagCommand, context_settings=dict(help_option_names=['-h', '--help']))
    @click.option('--outdir', required=True, metavar='DIR', help='Where to make the run directory.')
    @click.option('--data', metavar='NAME|PATH',
                  help='cub, dog, car, synthetic, or a folder/zip of images  [required, except with --resume].')
    @click.option('--data-root', metavar='DIR', help='Root of the DRC dataset folders.')
    @click.option('--subset', type=OPTION_TYPES['subset'], metavar='N',
                  help='Train on N images of the dataset, chosen with --seed [default: all].')
    @click.option('--cond', type=bool, default=False, metavar='BOOL',
                  help='Conditional training: not available (the datasets have no labels).')
    @click.option('--cfg', default=default_cfg, show_default=True, metavar='NAME',
                  help=f'Preset: {", ".join(names)}.')
    @click.option('--gpus', type=OPTION_TYPES['gpus'], default=1, show_default=True,
                  help='Local processes (ignored under torchrun).')
    @click.option('--batch', type=OPTION_TYPES['batch'], help='Global batch size [default: preset].')
    @click.option('--kimg', type=OPTION_TYPES['kimg'], help='Training length in kimg [default: preset].')
    @click.option('--snap', type=OPTION_TYPES['snap'], help='Snapshot interval in ticks [default: preset].')
    @click.option('--tick', type=OPTION_TYPES['tick'], help='Tick length in kimg [default: preset].')
    @click.option('--seed', type=OPTION_TYPES['seed'], default=0, show_default=True, help='Random seed.')
    @click.option('--metrics', metavar='LIST', help='Comma-separated metrics or "none" [default: preset].')
    @click.option('--detector', metavar='PATH|URL', help='Inception detector for FID/KID [default: $ILSGAN_DETECTOR or the URL].')
    @click.option('--detector-runs-code', is_flag=True,
                  help='Allow a --detector file that is not a known detector to run its own TorchScript code '
                       '(only for a file you trust) [default: $ILSGAN_DETECTOR_RUNS_CODE or off].')
    @click.option('--resume', metavar='PATH',
                  help='Snapshot file or run directory (latest snapshot) to continue; options not given again '
                       'are the resumed run\'s.')
    @click.option('--freezed', type=OPTION_TYPES['freezed'], metavar='N',
                  help='Freeze-D: the first N layers of D, from the input, do not train [default: 0].')
    @click.option('--workers', type=OPTION_TYPES['workers'], help='DataLoader workers [default: preset].')
    @click.option('--mirror', is_flag=True, help='Add x-flipped copies of the training images.')
    @click.option('--gamma', type=OPTION_TYPES['gamma'], help='R1 weight [default: 0.0002·R²/batch].')
    @click.option('--map', 'map_layers', type=OPTION_TYPES['map_layers'], metavar='N',
                  help='Layers of both mapping networks [default: preset, 8].')
    @click.option('--pl-weight', type=OPTION_TYPES['pl_weight'], metavar='W',
                  help='Path-length regularisation weight [default: 0, off as in ILSGAN].')
    @click.option('--mixing', type=click.Choice(MIXING_MODES),
                  help='Style mixing with a second z: orig (a cutoff in the bg ws and one in the fg ws), '
                       'style (one cutoff over bg+fg ws), layer (all bg ws), none (off) [default: orig].')
    @click.option('--mixing-prob', type=OPTION_TYPES['mixing_prob'], metavar='P',
                  help='Style-mixing probability (ours; the original fixes it at 0) [default: 0].')
    @click.option('--upd-e', type=click.Choice(['G', 'D']),
                  help='Legacy option of the original (InfoGAN encoder); has no effect.')
    @click.option('--aug', type=click.Choice(AUG_MODES), help='Augmentation mode [default: ada].')
    @click.option('--p', type=OPTION_TYPES['p'], help='Augment probability for --aug=fixed.')
    @click.option('--target', type=OPTION_TYPES['target'], help='ADA target [default: 0.6].')
    @click.option('--augpipe', metavar='NAME', help='Augment pipe [default: bgc].')
    @click.option('--fp32', is_flag=True, help='Disable mixed precision.')
    @click.option('--nhwc/--nchw', default=None,
                  help='Channels-last memory layout for G and D [default: preset: on a CPU, off on a GPU; '
                       'on in the cpu* presets].')
    @click.option('--allow-tf32', is_flag=True, help='Allow TF32 matmuls and convolutions.')
    @click.option('--nobench', is_flag=True, help='Disable cuDNN benchmarking.')
    @click.option('--compile', is_flag=True,
                  help='torch.compile G and D for G-main and D-main (R1 and G-reg stay eager); the first '
                       'iterations compile.')
    @click.option('-n', '--dry-run', is_flag=True, help='Print the config and exit.')
    @(click.option('--auto-test/--no-auto-test', default=True, show_default=True,
                   help='After training: generation → segmentation → MINE.')
      if resolution == 64 else (lambda f: f))
    @(click.option('--test-data', metavar='PAIRS',
                   help='The auto test scores on this folder of img/ + mask/ pairs (matching names) '
                        '[default: the test split of --data].')
      if resolution == 64 else (lambda f: f))
    @dnnlib.report_user_errors(disk_full_hint='a training run continues with --resume')
    def main(dry_run: bool, **options: Any) -> None:
        """Train a layered ILSGAN generator."""
        if options['resume'] == 'noresume':  # the original's default, spelled out: start afresh
            options['resume'] = None
        if options['resume']:
            options = options_for_resume(options, click.get_current_context())
        options['detector'], options['detector_runs_code'] = hooks.resolve_detector(options['detector'],
                                                                                   options['detector_runs_code'])
        c = build_training_config(resolution=resolution, hooks=hooks, **options)
        if dry_run:
            print(json.dumps(c, indent=2))
            return
        from training.loss import NonFiniteLossError
        try:
            run_dir = launch(c, hooks)
        except (NonFiniteLossError, TrainingProcessDied) as err:
            print(f'error: {dnnlib.safe_line(err)}', file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        except torch.multiprocessing.ProcessRaisedException as err:
            print(f'error: a training process failed: {dnnlib.safe_line(dnnlib.user_error_message(err))}',
                  file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        if run_dir is not None and c.auto_test:
            run_auto_test(run_dir, c, hooks)

    return main
