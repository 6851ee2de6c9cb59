"""Datasets by name or path, and the dataset command.

:func:`open_dataset` is the one entry point: the DRC birds/dogs/cars layouts (training/drc.py),
the built-in synthetic set (training/synthetic.py), or a user's own folder, zip or img/mask pair
folder (training/image_files.py, which also holds the Dataset classes). Every dataset yields
uint8 CHW images ``[3, R, R]``; the ``'train'`` split yields ``(image, np.zeros([0]))``, the
``'test'`` split and pair folders ``(image, mask)`` with mask uint8 ``[R, R]`` in {0, 1}.

Inspect a dataset (sizes as JSON, a preview grid, and a full read of every file), or export its
ground-truth pairs as a synthetic-sample folder (``eval_segmentation.py --syn-data=DIR`` then trains
the UNet on true masks: the ceiling a generated set can reach):

    python -m training.dataset --data=car --data-root=PATH --resolution=64 --grid=car.png
    python -m training.dataset --data=synthetic --resolution=32 --export=gt32 --split=train --count=2000
"""

from __future__ import annotations

import json
import os
from typing import Callable

import click
import numpy as np
from PIL import Image

import dnnlib
from training import sample_set, synthetic
from training.drc import DRC_KINDS, open_drc, resolve_drc_root
from training.image_files import ArrayDataset, Dataset, open_image_folder, open_pairs

SPLITS = ('train', 'test')


# ----------------------------------------------------------------------------------------------
# The built-in synthetic set (training/synthetic.py).

def open_synthetic(split: str, resolution: int, cache_root: str, num_images: int | None = None,
                   synthetic_seed: int = 0, train_masks: bool = False, **kwargs) -> ArrayDataset:
    """The procedural set at R = 128/2^k, generated once into ``cache_root`` and reused.

    The train split yields no masks (what the GAN sees) unless ``train_masks``.
    """
    native = synthetic.NATIVE_RESOLUTION
    if resolution > native or native % resolution != 0:
        raise dnnlib.UserError(f'the synthetic dataset exists at resolutions dividing {native} '
                               f'(e.g. 64 or 128), not {resolution}')
    count = synthetic.DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
    data = synthetic.load_or_generate(cache_root, split, count, synthetic_seed, verbose=True)
    images, masks = synthetic.downsample(data['img'], data['mask'], native // resolution)
    name = f'synthetic{resolution}' + ('' if split == 'train' else '-test')
    return ArrayDataset(name, images, masks if split == 'test' or train_masks else None, **kwargs)


# ----------------------------------------------------------------------------------------------
# The one entry point.

def open_dataset(data: str, split: str = 'train', resolution: int = 64, data_root: str | None = None,
                 xflip: bool = False, max_size: int | None = None, seed: int = 0,
                 num_images: int | None = None, synthetic_seed: int = 0, train_masks: bool = False,
                 crop_ratio: float = 1.0, root_option: str = '--data-root') -> Dataset:
    """Open a dataset by name (cub|bird|birds, dog|dogs, car|cars, synthetic) or path.

    A path is a folder with ``img/`` and ``mask/`` (pairs, always with masks), or a folder or zip
    of images (train split only). ``data_root`` is the DRC dataset folder; without it the root is
    ``$ILSGAN_DATA_ROOT/<birds|dogs|cars>``, else ``./datasets/DRC_processed/<...>`` (this is the
    edge that reads the environment). ``xflip`` doubles the set with mirrored copies;
    ``max_size`` keeps a subset chosen with ``seed``. ``num_images`` and ``synthetic_seed`` pick
    the size and the stream of the synthetic set; ``train_masks`` reads the masks of the train
    split too (the synthetic set's, CUB's segmentations, dogs/cars ``_maskorig.png`` files).
    ``crop_ratio`` (pair folders only) keeps the centre square of that fraction of each image and
    mask before resizing. ``root_option`` is the caller's option for ``data_root``, named in the
    advice when the DRC folder is not found.
    """
    if split not in SPLITS:
        raise dnnlib.UserError(f'unknown split {split!r}; use one of {", ".join(SPLITS)}')
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 4:
        raise dnnlib.UserError(f'resolution must be an integer of at least 4, got {resolution!r}')
    resolution = int(resolution)
    if max_size is not None and max_size < 1:
        raise dnnlib.UserError(f'max_size must be at least 1, got {max_size}')
    options = dict(xflip=xflip, max_size=max_size, seed=seed)
    kind = dataset_kind(data)
    if crop_ratio != 1 and kind != 'pairs':
        raise dnnlib.UserError(f'--crop-ratio applies to a folder of img/ + mask/ pairs, not to {data}')
    if kind == 'synthetic':
        return open_synthetic(split, resolution, dnnlib.cache_dir(), num_images, synthetic_seed, train_masks,
                              **options)
    if kind == 'drc':
        drc_kind = DRC_KINDS[data.lower()]
        root = resolve_drc_root(drc_kind, data_root, os.environ.get('ILSGAN_DATA_ROOT'), root_option)
        return open_drc(drc_kind, split, resolution, root, train_masks, **options)
    if kind == 'pairs':
        return open_pairs(data, resolution, crop_ratio=crop_ratio, **options)
    if kind == 'images':
        if split == 'test':
            raise dnnlib.UserError(f'{data} has no masks, so it has no test split; segmentation needs a folder '
                                   f'with img/ and mask/ subfolders')
        return open_image_folder(data, resolution, **options)
    raise dnnlib.UserError(f'unknown dataset {data!r}: use cub, dog, car, synthetic, or the path of an existing '
                           f'folder or zip of images')


def dataset_kind(data: str) -> str | None:
    """'synthetic', 'drc', 'pairs' (img/ + mask/ folder), 'images' (folder or zip), or None (unknown)."""
    if str(data).lower() == 'synthetic':
        return 'synthetic'
    if str(data).lower() in DRC_KINDS:
        return 'drc'
    if os.path.isdir(os.path.join(data, 'img')) and os.path.isdir(os.path.join(data, 'mask')):
        return 'pairs'
    return 'images' if os.path.exists(data) else None


# ----------------------------------------------------------------------------------------------
# Inspection command.

def preview_grid(train: list[np.ndarray], test: list[tuple[np.ndarray, np.ndarray]], columns: int = 8) -> np.ndarray:
    """[H, W, 3] uint8: rows of train images, then rows of test images each above its mask."""
    r = (train[0] if train else test[0][0]).shape[-1]
    rows: list[list[np.ndarray]] = []
    for i in range(0, len(train), columns):
        rows.append([img.transpose(1, 2, 0) for img in train[i:i + columns]])
    for i in range(0, len(test), columns):
        pairs = test[i:i + columns]
        rows.append([img.transpose(1, 2, 0) for img, _ in pairs])
        rows.append([np.repeat(mask[:, :, None] * 255, 3, axis=2) for _, mask in pairs])
    grid = np.full((len(rows) * r, columns * r, 3), 32, np.uint8)
    for y, row in enumerate(rows):
        for x, tile in enumerate(row):
            grid[y * r:(y + 1) * r, x * r:(x + 1) * r] = tile
    return grid


def inspect_dataset(open_split: Callable[[str], Dataset | None], grid_path: str | None, grid_count: int = 16) -> dict:
    """Read every sample of both splits (so an unreadable file surfaces now), optionally write a grid."""
    sizes, shown = {}, {}
    for split in SPLITS:
        dataset = open_split(split)
        if dataset is None:
            sizes[split], shown[split] = None, []
            continue
        samples = []
        for i in dnnlib.progress_bar(range(len(dataset)), desc=f'reading {split}', unit='img', leave=False):
            sample = dataset[i]
            if i < grid_count:
                samples.append(sample)
        sizes[split], shown[split] = len(dataset), samples
    if grid_path:
        os.makedirs(os.path.dirname(os.path.abspath(grid_path)), exist_ok=True)
        grid = preview_grid([img for img, _ in shown['train']], shown['test'])
        Image.fromarray(grid).save(grid_path)
    return sizes


# ----------------------------------------------------------------------------------------------
# Export of ground-truth pairs.

def export_pairs(dataset: Dataset, outdir: str, count: int | None = None, source: dict | None = None) -> int:
    """Write the first ``count`` (default: all) (image, mask) pairs in the synthetic-sample layout.

    ``outdir``/img/000001.png (RGB) and ``outdir``/mask/000001.png (grey RGB, 255·m: the encoder
    of generated masks), in the format of training/sample_set.py, then ``meta.json`` (``source`` and the dataset's name, resolution and n),
    written last so that a folder without it is an interrupted export. :func:`open_pairs` reads
    the pairs back pixel for pixel. Refuses a dataset without masks and an existing non-empty
    ``outdir`` (never overwritten). Returns the count.
    """
    import torch

    if not dataset.has_masks:
        raise dnnlib.UserError(f'{dataset.name} has no masks, so it has no pairs to export; export a split with '
                               f'masks (a test split, the synthetic or CUB train split, or a folder of img/ + mask/)')
    count = len(dataset) if count is None else count
    if not 1 <= count <= len(dataset):
        raise dnnlib.UserError(f'cannot export {count} pairs: {dataset.name} holds {len(dataset)}')
    if os.path.exists(outdir) and (not os.path.isdir(outdir) or os.listdir(outdir)):
        raise dnnlib.UserError(f'{outdir} already exists and is not empty; choose another export folder '
                               f'(it is never overwritten)')
    for folder in ('img', 'mask'):
        os.makedirs(os.path.join(outdir, folder), exist_ok=True)
    for i in dnnlib.progress_bar(range(count), desc='exporting', unit='pair', leave=False):
        image, mask = dataset[i]
        grey = sample_set.encode_mask(torch.from_numpy(mask)[None, None].float())[0]
        sample_set.write_png(os.path.join(outdir, 'img', sample_set.sample_file(i)), image.transpose(1, 2, 0))
        sample_set.write_png(os.path.join(outdir, 'mask', sample_set.sample_file(i)), grey)
    meta = dict(source or {}, dataset=dataset.name, resolution=dataset.resolution, n=count,
                layers=['img', 'mask'], ground_truth=True)
    dnnlib.write_bytes_atomic(os.path.join(outdir, 'meta.json'), dnnlib.json_text(meta, indent=2).encode('utf-8'))
    return count


def check_grid_path(path: str) -> None:
    """UserError unless ``path`` names a .png file that can be written (checked before any reading)."""
    if os.path.isdir(path) or not path.lower().endswith('.png'):
        raise dnnlib.UserError(f'--grid={path}: name the .png file to write the preview to, e.g. --grid=preview.png')
    from torch_utils import misc
    try:
        misc.ensure_writable_dir(os.path.dirname(os.path.abspath(path)))
    except OSError as err:
        raise dnnlib.UserError(f'--grid={path} cannot be written: {err}') from None


@click.command()
@click.option('--data', required=True, help='cub | dog | car | synthetic | folder or zip of images | folder with img/ + mask/')
@click.option('--data-root', default=None,
              help='DRC dataset folder (default: $ILSGAN_DATA_ROOT/<birds|dogs|cars>, else ./datasets/DRC_processed/...)')
@click.option('--resolution', default=64, show_default=True, type=click.IntRange(4, dnnlib.MAX_SIDE), help='Image size R')
@click.option('--grid', 'grid_path', default=None, metavar='FILE.png', help='Write a PNG preview here: train images, then test images over their masks')
@click.option('--export', 'export_dir', default=None, metavar='DIR',
              help='Instead: write the (image, mask) pairs of --split as DIR/img/000001.png, DIR/mask/000001.png '
                   'and DIR/meta.json, for eval_segmentation.py --syn-data=DIR')
@click.option('--split', type=click.Choice(SPLITS), default='train', show_default=True, help='Split to --export')
@click.option('--count', type=click.IntRange(1, dnnlib.MAX_COUNT), default=None,
              help='Pairs to --export, the first ones  [default: all]')
@dnnlib.report_user_errors
def main(data: str, data_root: str | None, resolution: int, grid_path: str | None, export_dir: str | None,
         split: str, count: int | None) -> None:
    """Read every image and mask of a dataset once, then print the size of each split as JSON.

    With --export, write the ground-truth pairs of one split instead and print their count as JSON.
    """
    if grid_path is not None:
        check_grid_path(grid_path)
        from torch_utils import memory   # the preview keeps 16 train and 16 test samples, then tiles them
        memory.check_fits(2 * 3 * 16 * 3 * resolution * resolution, f'the --grid preview at --resolution={resolution}',
                          'cpu', advice='choose a smaller --resolution')
    if export_dir is not None:
        if grid_path:
            raise dnnlib.UserError('--grid inspects and --export exports: pass one of them')
        dataset = open_dataset(data, split, resolution, data_root, train_masks=True)
        written = export_pairs(dataset, export_dir, count, source=dict(data=data, data_root=data_root, split=split))
        print(json.dumps(dict(exported=written, split=split, resolution=resolution, outdir=export_dir)))
        return

    def open_split(split: str) -> Dataset | None:
        if split == 'test' and dataset_kind(data) == 'images':
            return None   # a plain image folder has no masks, hence no test split
        return open_dataset(data, split, resolution, data_root)

    sizes = inspect_dataset(open_split, grid_path)
    print(json.dumps(dict(train=sizes['train'], test=sizes['test'], resolution=resolution)))


if __name__ == '__main__':
    main()
