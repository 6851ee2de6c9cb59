"""Datasets: the DRC birds/dogs/cars layouts, the built-in synthetic set, and a user's own images.

Every dataset yields uint8 CHW images ``[3, R, R]``. The ``'train'`` split (what the GAN learns
from) yields ``(image, np.zeros([0]))``; the ``'test'`` split and img/mask pair folders yield
``(image, mask)`` with mask uint8 ``[R, R]`` in {0, 1} (segmentation evaluation). METHOD.md §6
gives the layouts; every failure to find or read a file is a :class:`dnnlib.UserError` naming
it, and a sample that cannot be read is never replaced by another one.

Inspect a dataset (sizes as JSON, a preview grid, and a full read of every file), or export its
ground-truth pairs as a synthetic-sample folder (``eval_segmentation.py --syn-data=DIR`` then trains
the UNet on true masks: the ceiling a generated set can reach):

    python -m training.dataset --data=car --data-root=PATH --resolution=64 --grid=car.png
    python -m training.dataset --data=synthetic --resolution=32 --export=gt32 --split=train --count=2000
"""

from __future__ import annotations

import dataclasses
import io
import json
import lzma
import os
import re
import struct
import zipfile
import zlib
from typing import Callable

import click
import numpy as np
from PIL import Image

import dnnlib
from torch_utils import safe_pickle
from training import synthetic

try:
    import pyspng  # several times faster than PIL for PNG
except ImportError:
    pyspng = None

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.ppm', '.tif', '.tiff')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
DRC_KINDS = {'cub': 'birds', 'bird': 'birds', 'birds': 'birds', 'dog': 'dogs', 'dogs': 'dogs',
             'car': 'cars', 'cars': 'cars'}
DRC_SHORT_NAMES = {'birds': 'cub', 'dogs': 'dog', 'cars': 'car'}
# The DRC dogs/cars split files (train, test); the train one also marks the dataset's folder.
MRCNN_SPLIT_FILES = {'dogs': ('data_tr_sel.npy', 'data_te_sel.npy'),
                     'cars': ('data_mrcnn_train_select.npy', 'data_mrcnn_test_select.npy')}
DRC_MARKERS = {'birds': 'images.txt', **{kind: files[0] for kind, files in MRCNN_SPLIT_FILES.items()}}
DEFAULT_DRC_ROOT = os.path.join('datasets', 'DRC_processed')
SPLITS = ('train', 'test')
# What opening a zip archive or reading one of its members can raise: a bad CRC, a truncated or
# damaged archive, a compression method or encryption this Python cannot read, a failed read, a
# member name that is not valid UTF-8 (UnicodeDecodeError, a ValueError), a damaged LZMA member.
ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError,
                   ValueError, lzma.LZMAError)


# ----------------------------------------------------------------------------------------------
# Decoding and geometry. Arrays here are HWC uint8, as PIL and pyspng give them.

def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes → [H, W, 3] uint8 RGB (grey expanded, alpha dropped, 16 bit reduced)."""
    try:
        if pyspng is not None and data[:8] == PNG_SIGNATURE:
            # pyspng has no decompression-bomb guard: apply PIL's limit to the IHDR size first.
            width, height = struct.unpack('>II', data[16:24])
            if width * height > 2 * Image.MAX_IMAGE_PIXELS:
                raise ValueError(f'a PNG of {width} x {height} pixels, more than the {2 * Image.MAX_IMAGE_PIXELS} '
                                 f'of the decompression-bomb limit')
            return pyspng.load(data, format='RGB')
        with Image.open(io.BytesIO(data)) as image:
            return np.array(image.convert('RGB'))
    except Exception as err:  # every decoder failure (truncated, not an image, ...) means the same
        raise _unreadable(err, name) from None


def decode_dithered_mask(data: bytes, name: str) -> np.ndarray:
    """Encoded mask bytes → [H, W] uint8 in {0, 1}, as the original reads DRC dogs/cars masks:
    PIL's convert('1') (luma, then Floyd–Steinberg dithering of every grey pixel; 0 and 255 stay)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert('1'), dtype=np.uint8)
    except Exception as err:
        raise _unreadable(err, name) from None


def _unreadable(err: Exception, name: str) -> dnnlib.UserError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    reason = re.sub(r' <[\w.]+ object at 0x[0-9a-fA-F]+>', '', reason)  # PIL names its in-memory file
    return dnnlib.UserError(f'cannot read image {name} ({reason}); replace or remove the file')


def grey_channel(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] → [H, W]: the first channel, which is the grey level of a grey mask."""
    return np.ascontiguousarray(rgb[:, :, 0])


def centre_square_crop(image: np.ndarray, ratio: float = 1.0) -> np.ndarray:
    """[H, W, C] → [S, S, C], S = int(min(H, W)·ratio), centred: each side trimmed by floor((long − S)/2)
    first. ``ratio`` < 1 is eval_segmentation.py's --crop-ratio."""
    h, w = image.shape[:2]
    side = max(int(min(h, w) * ratio), 1)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def cub_box_crop(width: int, height: int, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """DRC's CUB test crop (METHOD.md §6): a square of half-side 0.75·max(w, h) about the box centre,
    clipped to the image; returns (left, top, right, bottom)."""
    x, y, w, h = box
    r = int(0.75 * max(w, h))
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def resize(image: np.ndarray, resolution: int, resample: Image.Resampling) -> np.ndarray:
    """[H, W(, 3)] uint8 → [R, R(, 3)], stretched; PIL's bilinear filter antialiases when shrinking.
    The result is writable (np.asarray of a PIL image is not, and torch warns on such arrays)."""
    if image.shape[0] == resolution and image.shape[1] == resolution:
        return image
    return np.array(Image.fromarray(image).resize((resolution, resolution), resample))


def binarize(grey: np.ndarray) -> np.ndarray:
    """uint8 grey → {0, 1}: value/255 > 0.5, i.e. foreground from 128 up."""
    return (grey > 127).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# The base class.

class Dataset:
    """A fixed, ordered list of samples; subclasses implement :meth:`_load`.

    Index i < N returns raw sample ``raw_indices[i]``; with ``xflip`` the dataset doubles and
    index N + i returns sample i mirrored left-right (the StyleGAN convention).
    """

    def __init__(self, name: str, resolution: int, num_raw: int, has_masks: bool, xflip: bool = False,
                 max_size: int | None = None, seed: int = 0):
        self.name = name
        self.resolution = resolution
        self.num_channels = 3
        self.has_masks = has_masks
        self.xflip = xflip
        self.raw_indices = np.arange(num_raw)
        if max_size is not None and max_size < num_raw:
            # StyleGAN2-ADA's subset (--subset): the first max_size of a legacy-RandomState
            # permutation drawn with the seed, kept in file order, so a run repeats the original's pick.
            chosen = np.random.RandomState(seed).permutation(num_raw)[:max_size]
            self.raw_indices = np.sort(chosen)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] | None = None
        self._cache_room = 0

    def cache_samples(self, max_bytes: int) -> None:
        """Keep decoded samples in memory, the first ones read until ``max_bytes`` are held: a
        training run reads every image many times, and decoding a PNG and resizing it costs more
        than a 32 px iteration's share of the work. Per process (each DataLoader worker fills its own)."""
        self._cache, self._cache_room = {}, int(max_bytes)

    def _sample(self, raw_index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`_load`, through the cache when there is one (copies: a caller may write into them)."""
        if self._cache is None:
            return self._load(raw_index)
        if raw_index not in self._cache:
            image, mask = self._load(raw_index)
            size = image.nbytes + (mask.nbytes if mask is not None else 0)
            if size > self._cache_room:
                return image, mask
            self._cache[raw_index] = (image, mask)
            self._cache_room -= size
        image, mask = self._cache[raw_index]
        return image.copy(), (mask.copy() if mask is not None else None)

    @property
    def image_shape(self) -> list[int]:
        return [self.num_channels, self.resolution, self.resolution]

    @property
    def label_dim(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.raw_indices) * (2 if self.xflip else 1)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [3, R, R], mask uint8 [R, R] in {0, 1}) or (image, label float32 [0])."""
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for a dataset of {len(self)} samples')
        image, mask = self._sample(int(self.raw_indices[index % len(self.raw_indices)]))
        if index >= len(self.raw_indices):
            image, mask = image[:, :, ::-1], (mask[:, ::-1] if mask is not None else None)
        image = np.ascontiguousarray(image)
        if self.has_masks:
            return image, np.ascontiguousarray(mask)
        return image, np.zeros([0], np.float32)

    def _load(self, raw_index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw sample → (image uint8 [3, R, R], mask uint8 [R, R] or None)."""
        raise NotImplementedError


class ArrayDataset(Dataset):
    """Samples held in memory: images uint8 [N, 3, R, R], masks uint8 [N, R, R] or None."""

    def __init__(self, name: str, images: np.ndarray, masks: np.ndarray | None, **kwargs):
        super().__init__(name, images.shape[-1], len(images), has_masks=masks is not None, **kwargs)
        self.images, self.masks = images, masks

    def cache_samples(self, max_bytes: int) -> None:
        """Nothing to do: the samples are in memory already."""

    def _load(self, raw_index: int) -> tuple[np.ndarray, np.ndarray | None]:
        # Copies, so that a caller writing into a sample cannot change the dataset.
        return self.images[raw_index].copy(), (self.masks[raw_index].copy() if self.masks is not None else None)


@dataclasses.dataclass(frozen=True)
class Record:
    """One sample on disk: its image, its mask (test splits), and the CUB box (x, y, w, h)."""
    image: str
    mask: str | None = None
    box: tuple[int, int, int, int] | None = None


class FileDataset(Dataset):
    """Samples read from files in a folder or a zip archive, one :class:`Record` each.

    ``crop``: 'centre' (centre square, GAN training), 'box' (CUB test crop) or 'none' (stretch);
    then ``crop_ratio`` < 1 keeps the centre square of that fraction of the side (pair folders).
    ``mask_resample``: 'bilinear' resizes the grey mask then thresholds (CUB, pair folders);
    'nearest' binarises by dithering (:func:`decode_dithered_mask`) then resizes with nearest
    neighbour (DRC dogs/cars masks, as the original).
    """

    def __init__(self, name: str, resolution: int, records: list[Record], crop: str = 'centre',
                 mask_resample: str = 'bilinear', zip_path: str | None = None, crop_ratio: float = 1.0, **kwargs):
        has_masks = bool(records) and records[0].mask is not None
        super().__init__(name, resolution, len(records), has_masks=has_masks, **kwargs)
        self.records, self.crop, self.mask_resample, self.zip_path = records, crop, mask_resample, zip_path
        self.crop_ratio = crop_ratio
        self._zip: zipfile.ZipFile | None = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zip=None)   # an open archive cannot cross into worker processes

    def _read_bytes(self, path: str) -> bytes:
        if self.zip_path is None:
            try:
                with open(path, 'rb') as f:
                    return f.read()
            except OSError as err:
                raise dnnlib.UserError(f'cannot read {path} ({err.strerror}); check that the file exists') from None
        try:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.zip_path)
            return self._zip.read(path)
        except ZIP_READ_ERRORS as err:
            reason = f'{type(err).__name__}: {err}' if str(err) else type(err).__name__
            raise dnnlib.UserError(f'cannot read {path} from the zip archive {self.zip_path} ({reason}); '
                                   f'the archive is damaged: re-create it, or remove that member') from None

    def _load(self, raw_index: int) -> tuple[np.ndarray, np.ndarray | None]:
        record, r = self.records[raw_index], self.resolution
        where = f'{self.zip_path}:{record.image}' if self.zip_path else record.image
        image = decode_rgb(self._read_bytes(record.image), where)
        decode_mask = decode_dithered_mask if self.mask_resample == 'nearest' else (
            lambda data, name: grey_channel(decode_rgb(data, name)))
        mask = decode_mask(self._read_bytes(record.mask), record.mask) if record.mask else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise dnnlib.UserError(f'mask {record.mask} is {mask.shape[1]}x{mask.shape[0]} but its image is '
                                   f'{image.shape[1]}x{image.shape[0]}; image and mask must have the same size')
        if self.crop == 'centre':
            image = centre_square_crop(image)
            mask = centre_square_crop(mask) if mask is not None else None
        elif self.crop == 'box':
            left, top, right, bottom = cub_box_crop(image.shape[1], image.shape[0], record.box)
            image, mask = image[top:bottom, left:right], mask[top:bottom, left:right]
        if self.crop_ratio < 1:
            image = centre_square_crop(image, self.crop_ratio)
            mask = centre_square_crop(mask, self.crop_ratio) if mask is not None else None
        image = resize(image, r, Image.Resampling.BILINEAR)
        if mask is not None:
            if self.mask_resample == 'nearest':
                mask = resize(mask, r, Image.Resampling.NEAREST)
            else:
                mask = binarize(resize(mask, r, Image.Resampling.BILINEAR))
        return image.transpose(2, 0, 1), mask


# ----------------------------------------------------------------------------------------------
# DRC layouts (METHOD.md §6).

def _need_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise dnnlib.UserError(f'missing {what}: {path}; is the dataset root complete? (see README, "Datasets")')
    return path


def _check_listed(records: list[Record], listing: str) -> None:
    """Every listed image/mask exists (a cheap stat each); decoding is checked on access."""
    paths = [p for rec in records for p in (rec.image, rec.mask) if p is not None]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise dnnlib.UserError(f'{missing[0]} is listed in {listing} but does not exist '
                               f'({len(missing)} of {len(paths)} listed files missing); complete the dataset folder')
    if not records:
        raise dnnlib.UserError(f'{listing} lists no samples for this split; check the file')


def _read_table(path: str, num_fields: int) -> dict[int, list[str]]:
    """CUB metadata file: '<id> <field> ...' per line → {id: fields}. Rows are matched by id."""
    table = {}
    try:
        with open(_need_file(path, 'CUB metadata file'), encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise dnnlib.UserError(f'cannot read CUB metadata file {path} ({type(err).__name__}); the file is damaged: '
                               f'replace it with the one from the dataset release') from None
    for line_number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != num_fields + 1 or not fields[0].isdecimal() or not fields[0].isascii():
            raise dnnlib.UserError(f'{path}, line {line_number}: expected "<id>" and {num_fields} field(s), '
                                   f'got {line.strip()!r}; the file is damaged')
        table[int(fields[0])] = fields[1:]
    return table


def _parse_box(fields: list[str], path: str, image_id: int) -> tuple[int, int, int, int]:
    """A CUB box ``x y w h`` (pixels, floats in the file) → ints; a UserError for a damaged one."""
    try:
        x, y, w, h = (float(v) for v in fields)
    except ValueError:
        x = y = w = h = float('nan')
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        raise dnnlib.UserError(f'{path}: the box of image id {image_id} is {" ".join(fields)!r}, not four numbers '
                               f'x y w h with w, h > 0; the file is damaged')
    return int(x), int(y), max(1, int(w)), max(1, int(h))


def _cub_records(root: str, split: str, train_masks: bool = False) -> list[Record]:
    """Train (k = 0): images, with their segmentations when ``train_masks``; test (k = 2): images,
    segmentations and boxes."""
    images = _read_table(os.path.join(root, 'images.txt'), 1)
    split_path = os.path.join(root, 'train_val_test_split.txt')
    split_of = _read_table(split_path, 1)
    wanted = '0' if split == 'train' else '2'           # 1 (validation) is used by no stage
    ids = sorted(i for i, (k,) in split_of.items() if k == wanted)
    boxes = _read_table(os.path.join(root, 'bounding_boxes.txt'), 4) if split == 'test' else {}
    records = []
    for i in ids:
        if i not in images or (split == 'test' and i not in boxes):
            raise dnnlib.UserError(f'image id {i} of {split_path} is missing from images.txt or bounding_boxes.txt '
                                   f'in {root}; the metadata files do not match')
        key = os.path.splitext(images[i][0])[0]
        if split == 'train':
            mask = os.path.join(root, 'segmentations', key + '.png') if train_masks else None
            records.append(Record(os.path.join(root, 'images', key + '.jpg'), mask))
        else:
            box = _parse_box(boxes[i], os.path.join(root, 'bounding_boxes.txt'), i)
            records.append(Record(os.path.join(root, 'images', key + '.jpg'),
                                  os.path.join(root, 'segmentations', key + '.png'), box))
    _check_listed(records, split_path)
    return records


def load_tokens(path: str) -> list[str]:
    """DRC split file (.npy array of tokens) → list of filename stems.

    Some DRC releases save the tokens as object arrays, whose data is a pickle: those are read
    with an allow-list that admits NumPy's array rebuilding and plain strings and numbers only,
    so a split file can never run code.
    """
    _need_file(path, 'split file')
    try:
        tokens = safe_pickle.load_npy(path)
    except safe_pickle.RefusedGlobal as err:
        raise dnnlib.UserError(f'{path} is not a plain array of file tokens; refusing to unpickle {err.name}; '
                               f'replace it with the one from the dataset release') from None
    except Exception as err:
        raise dnnlib.UserError(f'cannot read split file {path} ({type(err).__name__}: {err}); '
                               f'replace it with the one from the dataset release') from None
    tokens = np.ravel(tokens)
    strange = [t for t in tokens if not isinstance(t, (str, bytes, int, np.integer))] if tokens.dtype.hasobject else []
    if strange:
        raise dnnlib.UserError(f'{path} is not a plain array of file tokens (it holds a {type(strange[0]).__name__}); '
                               f'replace it with the one from the dataset release')
    try:
        return [t.decode('utf-8') if isinstance(t, bytes) else str(t) for t in tokens]
    except UnicodeDecodeError:
        raise dnnlib.UserError(f'{path} holds a file token that is not UTF-8 text; '
                               f'replace it with the one from the dataset release') from None


# The DRC dogs/cars layout: where a token's files lie (MRCNN_SPLIT_FILES lists the splits' tokens).
def mrcnn_split_file(root: str, kind: str, split: str) -> str:
    """The token list of a split: ``root``/data_tr_sel.npy, ``root``/data_mrcnn_test_select.npy, ..."""
    return os.path.join(root, MRCNN_SPLIT_FILES[kind][0 if split == 'train' else 1])


def mrcnn_sample_paths(root: str, kind: str, split: str, token: str) -> tuple[str, str]:
    """(image, mask) paths of a token. Train: ``<token>_orig.png`` and ``<token>_maskorig.png`` beside it
    (DRC's layout as we know it has no train masks, another copy may); test: ``<token>_resized.png`` and
    ``<token>_maskresized.png``."""
    if split == 'train':
        folder = os.path.join(root, 'train_orig', 'orig') if kind == 'dogs' else os.path.join(root, 'data_mrcnn', 'train', 'orig')
        return os.path.join(folder, f'{token}_orig.png'), os.path.join(folder, f'{token}_maskorig.png')
    folder = os.path.join(root, 'data_mrcnn', 'test', 'resized')
    return os.path.join(folder, f'{token}_resized.png'), os.path.join(folder, f'{token}_maskresized.png')


def _mrcnn_records(root: str, kind: str, split: str, train_masks: bool = False) -> list[Record]:
    """The records of a split (:func:`mrcnn_sample_paths`); train masks only when ``train_masks``."""
    split_path = mrcnn_split_file(root, kind, split)
    tokens = load_tokens(split_path)
    paths = [mrcnn_sample_paths(root, kind, split, t) for t in tokens]
    if split == 'train':
        if train_masks and paths and not os.path.isfile(paths[0][1]):
            raise dnnlib.UserError(f'the {kind} train split has no masks: {paths[0][1]} does not exist (train masks '
                                   f'are read as <token>_maskorig.png beside <token>_orig.png); export --split=test')
        records = [Record(image, mask if train_masks else None) for image, mask in paths]
    else:
        records = [Record(image, mask) for image, mask in paths]
    _check_listed(records, split_path)
    return records


def resolve_drc_root(kind: str, data_root: str | None, env_root: str | None, root_option: str = '--data-root') -> str:
    """The folder of one DRC dataset: ``data_root`` (or its ``kind`` subfolder), else
    ``env_root/kind``, else ``./datasets/DRC_processed/kind``. ``root_option`` is the caller's
    name for ``data_root`` (``--data-root``, ``--real-root``), which the error message names."""
    if data_root:
        nested = os.path.join(data_root, kind)
        if not os.path.isfile(os.path.join(data_root, DRC_MARKERS[kind])) and os.path.isdir(nested):
            data_root = nested   # the DRC_processed folder itself was given
        root, how = data_root, root_option
    elif env_root:
        root, how = os.path.join(env_root, kind), '$ILSGAN_DATA_ROOT'
    else:
        root, how = os.path.join(DEFAULT_DRC_ROOT, kind), 'the default location'
    if not os.path.isdir(root):
        raise dnnlib.UserError(f'{kind} dataset folder not found: {root} (from {how}); pass {root_option}=FOLDER '
                               f'(the folder holding {DRC_MARKERS[kind]}) or set ILSGAN_DATA_ROOT, see README "Datasets"')
    return root


def open_drc(kind: str, split: str, resolution: int, root: str, train_masks: bool = False, **kwargs) -> FileDataset:
    """birds/dogs/cars as laid out by DRC. Train: centre square crop; test: CUB box crop or resized.

    ``train_masks`` reads the masks of the train split too (CUB's segmentations; dogs/cars only in a
    layout that has them), cropped and bilinearly resized exactly as their images, then thresholded.
    """
    if kind == 'birds':
        records = _cub_records(root, split, train_masks)
    else:
        records = _mrcnn_records(root, kind, split, train_masks)
    name = f'{DRC_SHORT_NAMES[kind]}{resolution}' + ('' if split == 'train' else '-test')
    if split == 'train':
        return FileDataset(name, resolution, records, crop='centre', mask_resample='bilinear', **kwargs)
    if kind == 'birds':
        return FileDataset(name, resolution, records, crop='box', mask_resample='bilinear', **kwargs)
    return FileDataset(name, resolution, records, crop='none', mask_resample='nearest', **kwargs)


# ----------------------------------------------------------------------------------------------
# A user's own images, and img/mask pair folders.

def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _list_images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursively), as sorted relative paths; the temporary files of
    an unfinished write (``.tmp-*``, e.g. of a killed generation) are not images of the set."""
    found = []

    def unreadable(err: OSError) -> None:   # os.walk would skip the folder, and train on a subset
        if isinstance(err, (FileNotFoundError, NotADirectoryError)):
            return   # no such folder: no images, which the caller reports
        raise dnnlib.UserError(f'cannot list {err.filename} ({err.strerror}); make it readable, or move it '
                               f'out of {folder}')

    for parent, dirs, files in os.walk(folder, onerror=unreadable):
        dirs.sort()
        found += [os.path.relpath(os.path.join(parent, f), folder) for f in files
                  if _is_image(f) and not dnnlib.is_temp_file(f)]
    return sorted(found)


def open_pairs(path: str, resolution: int, names: list[str] | None = None, **kwargs) -> FileDataset:
    """A folder of ``img/NAME`` + ``mask/NAME`` (mask: grey PNG, m·255, foreground > 127).

    ``names`` (relative to img/) chooses the pairs; default: every image of img/.
    """
    images = _list_images(os.path.join(path, 'img')) if names is None else names
    if not images:
        raise dnnlib.UserError(f'no images in {os.path.join(path, "img")}; expected img/*.png beside mask/*.png')
    records = [Record(os.path.join(path, 'img', rel), os.path.join(path, 'mask', os.path.splitext(rel)[0] + '.png'))
               for rel in images]
    _check_listed(records, os.path.join(path, 'img'))
    return FileDataset(f'{_base_name(path)}{resolution}', resolution, records, crop='none',
                       mask_resample='bilinear', **kwargs)


def open_image_folder(path: str, resolution: int, names: list[str] | None = None, **kwargs) -> FileDataset:
    """Any images in a folder (recursively) or a zip archive: centre square crop, resize to R.

    ``names`` (relative to the folder) chooses the images of a folder; default: all of them.
    """
    if os.path.isdir(path):
        records = [Record(os.path.join(path, rel)) for rel in (_list_images(path) if names is None else names)]
        zip_path = None
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                members = sorted(n for n in archive.namelist() if _is_image(n))
        except ZIP_READ_ERRORS as err:
            raise dnnlib.UserError(f'cannot open {path} as a folder or a zip archive of images ({err})') from None
        records, zip_path = [Record(m) for m in members], path
    if not records:
        raise dnnlib.UserError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in {path}')
    return FileDataset(f'{_base_name(path)}{resolution}', resolution, records, crop='centre', zip_path=zip_path, **kwargs)


def _base_name(path: str) -> str:
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or 'images'


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
    of generated masks), then ``meta.json`` (``source`` and the dataset's name, resolution and n),
    written last so that a folder without it is an interrupted export. :func:`open_pairs` reads
    the pairs back pixel for pixel. Refuses a dataset without masks and an existing non-empty
    ``outdir`` (never overwritten). Returns the count.
    """
    import torch
    from metrics.generate import sample_file
    from torch_utils import misc

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
        grey = misc.to_uint8(torch.from_numpy(mask)[None, None].float(), low=0.0, high=1.0)[0]
        Image.fromarray(image.transpose(1, 2, 0)).save(os.path.join(outdir, 'img', sample_file(i)), compress_level=1)
        Image.fromarray(grey).save(os.path.join(outdir, 'mask', sample_file(i)), compress_level=1)
    meta = dict(source or {}, dataset=dataset.name, resolution=dataset.resolution, n=count,
                layers=['img', 'mask'], ground_truth=True)
    dnnlib.write_bytes_atomic(os.path.join(outdir, 'meta.json'), json.dumps(meta, indent=2).encode('utf-8'))
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
@click.option('--count', type=click.IntRange(min=1), default=None,
              help='Pairs to --export, the first ones  [default: all]')
@dnnlib.report_user_errors
def main(data: str, data_root: str | None, resolution: int, grid_path: str | None, export_dir: str | None,
         split: str, count: int | None) -> None:
    """Read every image and mask of a dataset once, then print the size of each split as JSON.

    With --export, write the ground-truth pairs of one split instead and print their count as JSON.
    """
    if grid_path is not None:
        check_grid_path(grid_path)
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
