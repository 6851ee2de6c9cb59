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
import stat
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image, ImageOps

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
# An image file (or zip member, inflated) larger than this is refused before it is read: no image of
# this project comes near it, and a zip bomb or /dev/zero named *.png would otherwise fill memory.
MAX_FILE_BYTES = 256 * 2 ** 20
# Grey modes of more than 8 bits that PIL's convert('RGB') would clip to white instead of scaling.
WIDE_GREY_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F')


# ----------------------------------------------------------------------------------------------
# Decoding and geometry. Arrays here are HWC uint8, as PIL and pyspng give them.

def decode_rgb(data: bytes, name: str, exif: bool = False) -> np.ndarray:
    """Encoded image bytes → [H, W, 3] uint8 RGB (grey expanded, alpha dropped, 16 bit reduced to
    its high byte). ``exif``: turned as its EXIF orientation says (as a viewer shows it)."""
    try:
        if pyspng is not None and data[:8] == PNG_SIGNATURE:
            # pyspng has no decompression-bomb guard: apply PIL's limit to the IHDR size first.
            width, height = struct.unpack('>II', data[16:24])
            if width * height > 2 * Image.MAX_IMAGE_PIXELS:
                raise ValueError(f'a PNG of {width} x {height} pixels, more than the {2 * Image.MAX_IMAGE_PIXELS} '
                                 f'of the decompression-bomb limit')
            return pyspng.load(data, format='RGB')
        with Image.open(io.BytesIO(data)) as image:
            if exif and _turned(image):
                image = ImageOps.exif_transpose(image)
            if image.mode in WIDE_GREY_MODES:
                return np.repeat(_wide_grey_to_uint8(np.asarray(image))[:, :, None], 3, axis=2)
            return np.array(image.convert('RGB'))
    except Exception as err:  # every decoder failure (truncated, not an image, ...) means the same
        raise _unreadable(err, name) from None


def _turned(image: Image.Image) -> bool:
    """Whether the image's EXIF orientation asks for a turn (exif_transpose copies the image even
    when it does not: this keeps the common case free)."""
    return image.getexif().get(0x0112, 1) not in (1, None)


def _wide_grey_to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit grey (PIL's I;16 modes, and mode I of a 16-bit PNG) → uint8, the high byte: 65535 → 255.
    A 32-bit image whose values exceed 16 bits is scaled by its own range instead; a float image
    (mode F) in [0, 1] is scaled by 255, another float range by its own range."""
    if values.dtype.kind == 'f':
        values = np.nan_to_num(values.astype(np.float64))
        low, high = float(values.min(initial=0)), float(values.max(initial=0))
        if low < 0 or high > 1:
            values = (values - low) / max(high - low, 1e-12)
        return np.rint(values * 255).astype(np.uint8)
    values = values.astype(np.int64)
    top = int(values.max(initial=0))
    if top > 65535 or values.min(initial=0) < 0:
        values = (values - values.min()) * 255 // max(top - int(values.min()), 1)
        return values.astype(np.uint8)
    return (values >> 8).astype(np.uint8)


def decode_dithered_mask(data: bytes, name: str, exif: bool = False) -> np.ndarray:
    """Encoded mask bytes → [H, W] uint8 in {0, 1}, as the original reads DRC dogs/cars masks:
    PIL's convert('1') (luma, then Floyd–Steinberg dithering of every grey pixel; 0 and 255 stay)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray((ImageOps.exif_transpose(image) if exif and _turned(image) else image).convert('1'),
                              dtype=np.uint8)
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
    first. ``ratio`` < 1 is eval_segmentation.py's --crop-ratio: then the offsets are (H − S)/2 and
    (W − S)/2 rounded half to even, as the original's torchvision CenterCrop places them (3.5 → 4)."""
    h, w = image.shape[:2]
    side = max(int(min(h, w) * ratio), 1)
    if ratio < 1:
        top, left = round((h - side) / 2), round((w - side) / 2)
    else:
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
    box_source: str | None = None   # where the box was read ('bounding_boxes.txt, line 8'), for errors


class FileDataset(Dataset):
    """Samples read from files in a folder or a zip archive, one :class:`Record` each.

    ``crop``: 'centre' (centre square, GAN training), 'box' (CUB test crop) or 'none' (stretch);
    then ``crop_ratio`` < 1 keeps the centre square of that fraction of the side (pair folders).
    ``mask_resample``: 'bilinear' resizes the grey mask then thresholds (CUB, pair folders);
    'nearest' binarises by dithering (:func:`decode_dithered_mask`) then resizes with nearest
    neighbour (DRC dogs/cars masks, as the original). ``exif``: images and masks alike are turned as
    their EXIF orientation says (a user's folders; the DRC readers read the files as stored, as
    the original does, since their boxes and masks are in stored coordinates).

    Only regular files are read (a FIFO or a device named ``*.png`` is refused without opening it),
    each at most :data:`MAX_FILE_BYTES` (a zip member by its inflated size, before inflating it).
    A grey mask stored as 0/1 (not 0/255) is read as a mask: a file whose largest value is 1.
    """

    def __init__(self, name: str, resolution: int, records: list[Record], crop: str = 'centre',
                 mask_resample: str = 'bilinear', zip_path: str | None = None, crop_ratio: float = 1.0,
                 exif: bool = False, **kwargs):
        has_masks = bool(records) and records[0].mask is not None
        super().__init__(name, resolution, len(records), has_masks=has_masks, **kwargs)
        self.records, self.crop, self.mask_resample, self.zip_path = records, crop, mask_resample, zip_path
        self.crop_ratio, self.exif = crop_ratio, exif
        self._zip: zipfile.ZipFile | None = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zip=None)   # an open archive cannot cross into worker processes

    def _read_bytes(self, path: str) -> bytes:
        if self.zip_path is None:
            return read_image_file(path)
        try:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.zip_path)
            info = self._zip.getinfo(path)
            if info.file_size > MAX_FILE_BYTES:
                raise dnnlib.UserError(f'{path} in the zip archive {self.zip_path} inflates to {info.file_size:,} bytes, '
                                       f'more than the {MAX_FILE_BYTES:,} of any image; remove that member')
            with self._zip.open(info) as member:
                data = member.read(MAX_FILE_BYTES + 1)   # bounded even if the header lies about the size
            if len(data) > MAX_FILE_BYTES:
                raise dnnlib.UserError(f'{path} in the zip archive {self.zip_path} inflates to more than the '
                                       f'{MAX_FILE_BYTES:,} bytes of any image; remove that member')
            return data
        except ZIP_READ_ERRORS as err:
            reason = f'{type(err).__name__}: {err}' if str(err) else type(err).__name__
            raise dnnlib.UserError(f'cannot read {path} from the zip archive {self.zip_path} ({reason}); '
                                   f'the archive is damaged: re-create it, or remove that member') from None

    def _load(self, raw_index: int) -> tuple[np.ndarray, np.ndarray | None]:
        record, r = self.records[raw_index], self.resolution
        where = f'{self.zip_path}:{record.image}' if self.zip_path else record.image
        image = decode_rgb(self._read_bytes(record.image), where, self.exif)
        decode_mask = decode_dithered_mask if self.mask_resample == 'nearest' else (
            lambda data, name, exif: as_mask_levels(grey_channel(decode_rgb(data, name, exif))))
        mask = decode_mask(self._read_bytes(record.mask), record.mask, self.exif) if record.mask else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise dnnlib.UserError(f'mask {record.mask} is {mask.shape[1]}x{mask.shape[0]} but its image is '
                                   f'{image.shape[1]}x{image.shape[0]}; image and mask must have the same size')
        if self.crop == 'centre':
            image = centre_square_crop(image)
            mask = centre_square_crop(mask) if mask is not None else None
        elif self.crop == 'box':
            check_box_inside(record, image.shape[1], image.shape[0])
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


def read_image_file(path: str) -> bytes:
    """The bytes of the image file ``path``; a :class:`dnnlib.UserError` naming it when it is
    missing, not a regular file (a FIFO would block the open, a device never ends: refused from
    its stat, without opening it) or larger than :data:`MAX_FILE_BYTES`. Symlinks are followed."""
    info = regular_file_stat(path)
    if info.st_size > MAX_FILE_BYTES:
        raise dnnlib.UserError(f'{path} holds {info.st_size:,} bytes, more than the {MAX_FILE_BYTES:,} of any image; '
                               f'remove it from the data folder')
    try:
        with open(path, 'rb') as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise dnnlib.UserError(f'cannot read {path} ({err.strerror}); check that the file exists') from None


def regular_file_stat(path: str) -> os.stat_result:
    """``os.stat(path)`` (a symlink followed) of a regular file; a UserError naming a missing file,
    a dangling link, a folder, a FIFO, a device or a socket, found without opening it."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise dnnlib.UserError(f'cannot read {path} ({err.strerror}); check that the file exists') from None
    if not stat.S_ISREG(info.st_mode):
        kind = ('a folder' if stat.S_ISDIR(info.st_mode) else 'a FIFO (named pipe)' if stat.S_ISFIFO(info.st_mode)
                else 'a device' if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else 'a socket' if stat.S_ISSOCK(info.st_mode) else 'not a regular file')
        raise dnnlib.UserError(f'{path} is {kind}, not an image file; remove it from the data folder')
    return info


def as_mask_levels(grey: np.ndarray) -> np.ndarray:
    """A grey mask stored as 0/1 (largest value 1) → 0/255, so that foreground (> 127) is found;
    a mask stored as 0/255 or soft 0..255 is returned as it is."""
    return grey * np.uint8(255) if grey.size and grey.max() == 1 else grey


def check_box_inside(record: Record, width: int, height: int) -> None:
    """A CUB box must overlap its image (a box outside it would crop nothing: an all-black test
    sample with an empty mask); a UserError naming the box's line otherwise."""
    x, y, w, h = record.box
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise dnnlib.UserError(f'{record.box_source or "the box"}: the box {x} {y} {w} {h} of {record.image} lies '
                               f'outside its {width} x {height} image; the file is damaged: replace it with the one '
                               f'from the dataset release')


def check_listed(records: list[Record], listing: str) -> None:
    """Every listed image/mask exists (a cheap stat each); decoding is checked on access."""
    paths = [p for rec in records for p in (rec.image, rec.mask) if p is not None]
    missing = [p for p in paths if not dnnlib.check_regular_file(p)]   # a FIFO, device or folder: refused by name
    if missing:
        raise dnnlib.UserError(f'{missing[0]} is listed in {listing} but does not exist '
                               f'({len(missing)} of {len(paths)} listed files missing); complete the dataset folder')
    if not records:
        raise dnnlib.UserError(f'{listing} lists no samples for this split; check the file')


# ----------------------------------------------------------------------------------------------
# A user's own images, and img/mask pair folders.

def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


RUN_MARKER = 'training_options.json'   # a training run folder: its PNGs are outputs, never training data


def list_images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursively), as sorted relative paths; the temporary files of
    an unfinished write (``.tmp-*``, e.g. of a killed generation) are not images of the set.

    Symlinked folders and files are followed, as if they were there (a folder reached twice, e.g.
    through a link loop, is read once). A training run folder inside ``folder`` (one holding
    training_options.json: its grids and samples are a run's output) is skipped with a warning."""
    found, seen, runs = [], set(), []

    def unreadable(err: OSError) -> None:   # os.walk would skip the folder, and train on a subset
        if isinstance(err, (FileNotFoundError, NotADirectoryError)):
            return   # no such folder: no images, which the caller reports
        raise dnnlib.UserError(f'cannot list {err.filename} ({err.strerror}); make it readable, or move it '
                               f'out of {folder}')

    for parent, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen or (RUN_MARKER in files and parent != folder):
            if real not in seen:
                runs.append(parent)
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        images = [f for f in files if is_image(f) and not dnnlib.is_temp_file(f)]
        for name in images:   # a FIFO or device named *.png stops the listing, before anything reads it
            regular_file_stat(os.path.join(parent, name))
        found += [os.path.relpath(os.path.join(parent, f), folder) for f in images]
    if runs:
        dnnlib.warn(f'{len(runs)} training run folder(s) inside {folder} skipped (e.g. {runs[0]}): their images are '
                    f'a run\'s output, not training data')
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
                       mask_resample='bilinear', exif=True, **kwargs)


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
    return FileDataset(f'{_base_name(path)}{resolution}', resolution, records, crop='centre', zip_path=zip_path,
                       exif=True, **kwargs)


def _base_name(path: str) -> str:
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or 'images'
