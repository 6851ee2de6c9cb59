"""The auto test: from a finished training run to one table of FID, IoU, DICE and MI.

``train_ILS_64.py`` calls :func:`run_auto_test` after training (``--no-auto-test`` skips it);
``python -m metrics.auto_test RUN_DIR`` runs it alone on an existing run directory. The chain
(ORIGINAL.md §6.4, METHOD.md §7-§9):

1. choose the snapshot with the lowest ``fid10k_full`` over the whole run (the newest snapshot
   when the run computed no metric, and the table says so);
2. generate ``n`` samples into ``RUN_DIR/auto_test/synthetic_data-<tag>/`` (the snapshot's tag,
   ``000200`` or ``000000_272``; an interrupted set is completed, a complete one reused);
3. train the UNet on them and test it on the real test split of the training dataset (64 px,
   ``--aug=color``, at the training resolution), beside the fixed mask of that split
   (:func:`metrics.segmentation.fixed_mask_score`: one mask for every image, read from the test
   labels) and the gain over it, with a warning when the gain is under 0.05;
4. estimate the layers' mutual information with MINE (eval_MI_MINE.py's defaults: the plain DV
   gradient); an estimate from fewer than 100 000 steps, or a negative one, is marked not converged;
5. measure whether the generated masks follow the objects (:mod:`metrics.layout`: the spread of
   their centroids and areas against the test split's masks, the empty/full/grey ones and their
   border coverage; for a set made with the training perturbation, also the spread of G's own
   masks before the shift), with a warning under the table for each failure these numbers show;
6. write ``RUN_DIR/auto_test/results.json`` and print the summary table.

The sizes (n, UNet iterations and width, MINE steps and width) come from the training preset's
``auto_test_sizes`` field, so the CPU demo preset runs the same chain in minutes.

A run trained on photos without masks is scored on the user's own labelled pairs: ``--test-data=PAIRS``
(a folder of ``img/`` + ``mask/``, stored in the run's options by ``train_ILS_64.py --test-data``)
takes the place of the test split in steps 3 and 5.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields

import click

import dnnlib
from metrics import generate, layout
from metrics import roles as layer_roles
from training import snapshots


# The bounds of the CLI options these sizes stand for (--base-width, --hidden, --resolution of
# eval_segmentation.py and eval_MI_MINE.py); the others are batches or counts.
SIZE_BOUNDS = dict(seg_base_width=dnnlib.MAX_SIDE, mine_hidden=1_000_000, mine_resolution=1024)


@dataclass
class AutoTestSizes:
    """How big each stage of the chain is; the defaults are the original auto test's."""
    n: int = 10000                  # generated samples
    seg_iters: int = 6000           # UNet training iterations
    seg_batch: int = 64
    seg_base_width: int = 64        # UNet width of its first level
    seg_val_interval: int = 1000
    mine_steps: int = 100_000
    mine_hidden: int = 3000
    mine_eval_every: int = 400
    mine_batch: int = 64
    mine_resolution: int = 64       # side the layers are resized to for MINE (the original: 64)

    @classmethod
    def from_dict(cls, values: dict | None) -> 'AutoTestSizes':
        """The sizes a training config names (unknown keys ignored); UserError for one that is not
        a positive integer (the config may come from a hand-edited training_options.json)."""
        if values is not None and not isinstance(values, dict):
            raise dnnlib.UserError(f'auto_test_sizes={values!r} in the training options is not a JSON object; '
                                   f'fix training_options.json of the run')
        known = {f.name for f in fields(cls)}
        sizes = {k: v for k, v in (values or {}).items() if k in known}
        for name, value in sizes.items():
            largest = SIZE_BOUNDS.get(name, dnnlib.MAX_BATCH if name.endswith('batch') else dnnlib.MAX_COUNT)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
                raise dnnlib.UserError(f'auto_test_sizes.{name}={value!r} in the training options is not an '
                                       f'integer in 1..{largest}; fix training_options.json of the run')
        return cls(**sizes)


def read_training_options(run_dir: str) -> dict:
    """The run's ``training_options.json``; a missing, empty or damaged file is a one-line UserError."""
    path = os.path.join(run_dir, 'training_options.json')
    if not dnnlib.check_regular_file(path):
        raise dnnlib.UserError(f'{path} not found: {run_dir} is not a training run directory')
    try:
        with open(path, encoding='utf-8') as f:
            options = json.load(f)
    except dnnlib.JSON_READ_ERRORS as err:
        raise dnnlib.UserError(f'{path} is damaged ({type(err).__name__}: {err}); every snapshot of the run holds '
                               f'a copy of its options under data["training_options"]: restore the file') from None
    if not isinstance(options, dict):
        raise dnnlib.UserError(f'{path} is damaged (not a JSON object); restore the options of the run')
    return options


PAIRS_HINT = 'a folder of img/NAME.EXT + mask/NAME.png (grey, object white), matching names'


def check_test_data(path: str, resolution: int) -> None:
    """``--test-data``: a folder of image/mask pairs, every pair read at ``resolution``; one-line
    UserError for a missing folder, no pairs, an image without its mask or an unreadable file, so
    that a run finds out before training, not after it."""
    from training.dataset import open_dataset
    if not os.path.isdir(path):
        raise dnnlib.UserError(f'--test-data={path}: no such folder; give {PAIRS_HINT}')
    if not (os.path.isdir(os.path.join(path, 'img')) and os.path.isdir(os.path.join(path, 'mask'))):
        raise dnnlib.UserError(f'--test-data={path} has no img/ and mask/ subfolders; give {PAIRS_HINT}')
    try:
        pairs = open_dataset(path, split='test', resolution=resolution)
        for index in range(len(pairs)):   # a damaged pair stops the run here, not after training
            pairs[index]
    except dnnlib.UserError as err:
        raise dnnlib.UserError(f'--test-data={path}: {err}') from None


def check_test_split(data: str, resolution: int, data_root: str | None) -> None:
    """The training data has a test split with masks; for a folder of photos, the error names
    ``--test-data``."""
    from training.dataset import dataset_kind, open_dataset
    if dataset_kind(data) == 'images':
        raise dnnlib.UserError(f'{data} has no masks; pass --test-data=PAIRS, {PAIRS_HINT}')
    open_dataset(data, split='test', resolution=resolution, data_root=data_root)


def choose_auto_snapshot(run_dir: str) -> snapshots.SnapshotChoice:
    """Lowest FID over the whole run, else (no metric file) the newest snapshot."""
    metric_file = os.path.join(run_dir, 'metric-fid10k_full.jsonl')
    has_metric = os.path.isfile(metric_file) and snapshots.read_metric_lines(metric_file)
    return snapshots.choose_snapshot(run_dir, latest=not has_metric)


def format_summary(summary: dict) -> str:
    """The printed table: one row per quantity."""
    from metrics.segmentation import format_by_size, format_fixed_mask
    def fmt(value):
        return '—' if value is None else (f'{value:.4f}' if isinstance(value, float) else str(value))
    mi_note = '' if summary['MI_converged'] else '  (not converged)'
    rows = [('snapshot', os.path.basename(summary['snapshot'])), ('chosen by', summary['chosen_by']),
            ('samples', "G's, unperturbed" if not summary.get('perturb') else 'with the training perturbation ('
             + ', '.join(f'{name} {value:g}' for name, value in summary['perturb'].items() if value) + ')'),
            ('layer roles', 'as G drew them' if summary.get('roles', 'as_drawn') == 'as_drawn' else
             f"{summary['roles']} rule: {summary.get('roles_swapped', 0):.1%} of the samples swapped"),
            ('FID', fmt(summary['fid'])), ('sigma', fmt(summary['sigma'])),
            ('IoU', fmt(summary['IoU'])), ('DICE', fmt(summary['DICE'])),
            *([('IoU gain over fixed mask', format_fixed_mask(summary['fixed_mask'], summary['IoU_gain']))]
              if summary.get('fixed_mask') else []),
            *([('IoU by object size', format_by_size(summary['IoU_by_size']))]
              if summary.get('IoU_by_size') else []),
            *layout.format_layout_rows(summary.get('layout'), summary.get('layout_generator')),
            ('MI_1 (b_i; f_v)', fmt(summary['MI_1']) + mi_note), ('MI_2 (f_i; b_v)', fmt(summary['MI_2']) + mi_note),
            ('MI (b; f)', fmt(summary['MI']) + mi_note),
            ('MINE', 'converged' if summary['MI_converged'] else f'NOT CONVERGED: {summary["MI_why"]}')]
    width = max(len(name) for name, _ in rows)
    line = '-' * (width + 3 + max(len(value) for _, value in rows))
    body = '\n'.join(f'{name:<{width}} | {value}' for name, value in rows)
    warnings = ''.join(f'\nWARNING: {text}' for text in summary.get('warnings') or [])
    return f'{line}\n{body}\n{line}{warnings}'


def check_sizes_fit(sizes: AutoTestSizes, resolution: int, device: str) -> None:
    """UserError when the UNet or the MINE critics that ``sizes`` describe cannot fit in the free
    memory of ``device``: found before anything is generated, not after."""
    from metrics import mine, segmentation
    from torch_utils import memory
    advice = 'fix auto_test_sizes in training_options.json of the run'
    memory.check_fits(segmentation.unet_bytes(sizes.seg_base_width, sizes.seg_batch, resolution, sizes.n),
                      f'auto_test_sizes seg_base_width={sizes.seg_base_width}, seg_batch={sizes.seg_batch} at '
                      f'{resolution} px', device, advice=advice)
    memory.check_fits(mine.mine_bytes(sizes.mine_hidden, max(sizes.mine_batch, mine.MineConfig.eval_batch),
                                      sizes.mine_resolution, sizes.n),
                      f'auto_test_sizes mine_hidden={sizes.mine_hidden}, mine_resolution={sizes.mine_resolution} '
                      f'on n={sizes.n} samples', device, advice=advice)


def run_auto_test(run_dir: str, config: dict | None = None, device: str | None = None,
                  progress: bool = True, data_root: str | None = None, test_data: str | None = None) -> dict:
    """Run the whole chain on ``run_dir`` (see the module docstring); returns the summary dict.

    ``config`` is the training configuration (``training_options.json`` when omitted): its
    ``data``, ``data_root``, ``resolution`` and ``auto_test_sizes`` fields say which real test
    split to score on, at which size, and how large each stage is; ``data_root`` replaces the
    stored one. ``test_data`` (else the config's ``test_data``, ``--test-data`` of the run), a folder
    of ``img/`` + ``mask/`` pairs, replaces the test split of ``data``: the user's own labelled
    pairs for a run trained on photos without masks. Every input (options, device, snapshot, real
    test split) is checked before ``auto_test/`` is made.
    """
    from metrics import mine, segmentation

    start = time.time()
    config = dict(config) if config is not None else read_training_options(run_dir)
    sizes = AutoTestSizes.from_dict(config.get('auto_test_sizes'))
    # The CPU presets compose each sample with the training perturbation (auto_test_perturb; see
    # training/presets.py); the paper presets write G's samples as they are, as the original.
    # A dict replaces some of the training perturbation's magnitudes (generate.widened_perturbation).
    perturb = config.get('auto_test_perturb', False)
    if not isinstance(perturb, (bool, dict)):
        raise dnnlib.UserError(f'auto_test_perturb={perturb!r} in the training options is not true, false or a dict; '
                               f'fix training_options.json of the run')
    # Which layer is the object (metrics.roles): G's roles as drawn, or chosen per sample by the border.
    roles = config.get('auto_test_roles', 'as_drawn')
    if roles not in layer_roles.ROLE_RULES:
        raise dnnlib.UserError(f'auto_test_roles={roles!r} in the training options is not one of '
                               f'{", ".join(layer_roles.ROLE_RULES)}; fix training_options.json of the run')
    data, data_root = config.get('data'), data_root or config.get('data_root')
    if data_root is not None and not isinstance(data_root, str):
        raise dnnlib.UserError(f'data_root={data_root!r} in the training options of {run_dir} is not a folder path; '
                               f'fix training_options.json of the run, or pass --data-root')
    if not data or not isinstance(data, str):
        raise dnnlib.UserError(f'the training options of {run_dir} name no dataset (field "data"); '
                               f'fix training_options.json of the run')
    device = dnnlib.parse_device(device)
    choice = choose_auto_snapshot(run_dir)
    resolution = config.get('resolution', 64)
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise dnnlib.UserError(f'the training options of {run_dir} give resolution={resolution!r}, not an integer; '
                               f'fix training_options.json of the run')
    test_data = test_data or config.get('test_data')
    if test_data is not None and not isinstance(test_data, str):
        raise dnnlib.UserError(f'test_data={test_data!r} in the training options of {run_dir} is not a folder path; '
                               f'fix training_options.json of the run, or pass --test-data')
    real_data, real_root = (test_data, None) if test_data else (data, data_root)
    if test_data:
        check_test_data(test_data, resolution)
    else:
        check_test_split(data, resolution, data_root)
    check_sizes_fit(sizes, resolution, device)
    auto_dir = os.path.join(run_dir, 'auto_test')
    os.makedirs(auto_dir, exist_ok=True)
    print(f'Auto test of {run_dir} (sizes: {asdict(sizes)})', flush=True)

    # 1-2. Snapshot and synthetic set.
    variant = ''.join(f'-{name}{value:g}' for name, value in sorted(perturb.items())) if isinstance(perturb, dict) else ''
    variant += '' if roles == 'as_drawn' else f'-roles_{roles}'
    syn_dir = os.path.join(auto_dir, generate.synthetic_folder_name(choice.path, bool(perturb)) + variant)
    syn_dir, meta = generate.generate_from_network(choice.path, n=sizes.n, outdir=syn_dir, seed=0,
                                                   device=device, resume=True, progress=progress,
                                                   choice=choice, perturb=perturb, roles=roles)

    # 3. Segmentation against the real test split of the training data, at the training
    # resolution (64 in every paper preset; the CPU demo preset trains at 32).
    seg_cfg = segmentation.SegmentationConfig(
        syn_data=syn_dir, real_data=real_data, real_root=real_root, aug='color', protocol='scale',
        scale=resolution,
        iters=sizes.seg_iters, batch=sizes.seg_batch, base_width=sizes.seg_base_width,
        val_interval=min(sizes.seg_val_interval, sizes.seg_iters), device=device, progress=progress)
    seg = segmentation.run_segmentation_eval(seg_cfg)
    segmentation.print_results(seg, warnings=False)   # they go under the summary table

    # 4. Mutual information of the generated layers.
    mine_cfg = mine.MineConfig(steps=sizes.mine_steps, hidden=sizes.mine_hidden, batch=sizes.mine_batch,
                               resolution=sizes.mine_resolution,
                               eval_every=min(sizes.mine_eval_every, sizes.mine_steps), device=device,
                               progress=progress)
    mi = mine.estimate_layer_mi(syn_dir, mine_cfg, mode='both')

    # 5. Do the masks follow the objects? With the training perturbation the set's positions are
    # the shift's; G's own masks (the set's latents, unshifted) say what G itself has learnt.
    data_masks = layout.load_data_masks(real_data, resolution, real_root, progress=progress)
    mask_layout = layout.compare_layouts(layout.load_generated_masks(syn_dir, resolution, progress=progress),
                                         data_masks)
    # G's own masks (the set's latents, as drawn): the share the role rule swaps, and their layout.
    generator_layout, swapped_share = None, 0.0
    if perturb or roles != 'as_drawn':
        own_masks = generate.generator_masks(choice.path, sizes.n, device=device)
        swapped = layer_roles.swapped(roles, own_masks)
        own_masks[swapped] = 1 - own_masks[swapped]
        swapped_share = float(swapped.mean())
        if perturb:
            generator_layout = layout.compare_layouts(own_masks, data_masks)

    # 6. One JSON and one table.
    summary = {
        'snapshot': choice.path, 'kimg': choice.kimg, 'chosen_by': choice.reason,
        'fid': choice.metric_value, 'sigma': choice.sigma,
        'IoU': seg['results']['IoU'], 'DICE': seg['results']['DICE'], 'IoU_by_size': seg.get('by_size'),
        'fixed_mask_IoU': seg['fixed_mask']['IoU'], 'fixed_mask_DICE': seg['fixed_mask']['DICE'],
        'fixed_mask_threshold': seg['fixed_mask']['threshold'], 'IoU_gain': seg['IoU_gain'],
        'fixed_mask': seg['fixed_mask'],
        'MI_1': mi.get('MI_1'), 'MI_2': mi.get('MI_2'), 'MI': mi.get('MI'),
        'MI_converged': mi['converged'], 'MI_why': mi['why'], 'layout': mask_layout,
        'layout_generator': generator_layout,
        'warnings': seg['warnings'] + layout.layout_warnings(mask_layout, generator_layout),
        'segmentation': seg['results'], 'segmentation_run': seg['run_dir'], 'mine_run': mi['run_dir'],
        'roles': roles, 'roles_swapped': swapped_share,
        'synthetic_data': syn_dir, 'perturb': meta.get('perturb'), 'real_data': real_data, 'test_data': test_data,
        'sizes': asdict(sizes),
        'total_time': time.time() - start, 'timestamp': time.time(),
    }
    dnnlib.write_bytes_atomic(os.path.join(auto_dir, 'results.json'), dnnlib.json_text(summary, indent=2).encode())
    print(format_summary(summary))
    print(f'Auto test results written to {os.path.join(auto_dir, "results.json")}', flush=True)
    return summary


@click.command()
@click.argument('run_dir', type=click.Path(file_okay=False))
@click.option('--device', type=dnnlib.Device(), default=None, help='torch device [default: cuda if available, else cpu].')
@click.option('--data-root', metavar='DIR', default=None,
              help='Root of the DRC dataset folders [default: the run\'s --data-root].')
@click.option('--test-data', metavar='PAIRS', default=None,
              help='Score on this folder of img/ + mask/ pairs (matching names) [default: the pairs of the '
                   'run\'s --test-data, else the test split of its --data].')
@click.option('--quiet', is_flag=True, help='No progress bars.')
@dnnlib.report_user_errors(disk_full_hint='the same command completes the interrupted set')
def main(run_dir: str, device: str | None, data_root: str | None, test_data: str | None, quiet: bool) -> None:
    """Run the auto test (generation → segmentation → MINE) on an existing training run."""
    run_auto_test(run_dir, device=device, progress=not quiet, data_root=data_root, test_data=test_data)


if __name__ == '__main__':
    main()
