"""Image files as datasets: decoding, crops, the Dataset classes, and a user's own folders.

Every dataset yields uint8 CHW images ``[3, R, R]``. The ``'train'`` split (what the GAN learns
from) yields ``(image, np.zeros([0]))``; the ``'test'`` split and img/mask pair folders yield
``(image, mask)`` with mask uint8 ``[R, R]`` in {0, 1} (segmentation evaluation). Every failure
to find or read a file is a :class:`dnnlib.UserError` naming it, and a sample that cannot be
read is never replaced by another one. The DRC layouts are read by training/drc.py; the one
entry point, :func:`training.dataset.open_dataset`, picks a reader by name or path.
"""

from __future__ import annotations

import dataclasses
import io
import lzma
import os
import re
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

import dnnlib

try:
    import pyspng  # several times faster than PIL for PNG
except ImportError:
    pyspng = None

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.ppm', '.tif', '.tiff')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
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


def check_listed(records: list[Record], listing: str) -> None:
    """Every listed image/mask exists (a cheap stat each); decoding is checked on access."""
    paths = [p for rec in records for p in (rec.image, rec.mask) if p is not None]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise dnnlib.UserError(f'{missing[0]} is listed in {listing} but does not exist '
                               f'({len(missing)} of {len(paths)} listed files missing); complete the dataset folder')
    if not records:
        raise dnnlib.UserError(f'{listing} lists no samples for this split; check the file')


# ----------------------------------------------------------------------------------------------
# A user's own images, and img/mask pair folders.

def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: str) -> list[str]:
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
                  if is_image(f) and not dnnlib.is_temp_file(f)]
    return sorted(found)


def open_pairs(path: str, resolution: int, names: list[str] | None = None, **kwargs) -> FileDataset:
    """A folder of ``img/NAME`` + ``mask/NAME`` (mask: grey PNG, m·255, foreground > 127).

    ``names`` (relative to img/) chooses the pairs; default: every image of img/.
    """
    images = list_images(os.path.join(path, 'img')) if names is None else names
    if not images:
        raise dnnlib.UserError(f'no images in {os.path.join(path, "img")}; expected img/*.png beside mask/*.png')
    records = [Record(os.path.join(path, 'img', rel), os.path.join(path, 'mask', os.path.splitext(rel)[0] + '.png'))
               for rel in images]
    check_listed(records, os.path.join(path, 'img'))
    return FileDataset(f'{_base_name(path)}{resolution}', resolution, records, crop='none',
                       mask_resample='bilinear', **kwargs)


def open_image_folder(path: str, resolution: int, names: list[str] | None = None, **kwargs) -> FileDataset:
    """Any images in a folder (recursively) or a zip archive: centre square crop, resize to R.

    ``names`` (relative to the folder) chooses the images of a folder; default: all of them.
    """
    if os.path.isdir(path):
        records = [Record(os.path.join(path, rel)) for rel in (list_images(path) if names is None else names)]
        zip_path = None
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                members = sorted(n for n in archive.namelist() if is_image(n))
        except ZIP_READ_ERRORS as err:
            raise dnnlib.UserError(f'cannot open {path} as a folder or a zip archive of images ({err})') from None
        records, zip_path = [Record(m) for m in members], path
    if not records:
        raise dnnlib.UserError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in {path}')
    return FileDataset(f'{_base_name(path)}{resolution}', resolution, records, crop='centre', zip_path=zip_path, **kwargs)


def _base_name(path: str) -> str:
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or 'images'
