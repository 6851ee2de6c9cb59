"""The DRC layouts of birds (CUB-200-2011), dogs and cars (METHOD.md §6), read as datasets.

Train splits are centre-cropped; the CUB test split is cropped about its boxes, the dogs/cars
test splits are read as resized. Split files that hold object arrays are read through an
allow-list (:mod:`torch_utils.safe_pickle`), so a split file can never run code.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

import dnnlib
from torch_utils import safe_pickle
from training.image_files import FileDataset, Record, check_listed

DRC_KINDS = {'cub': 'birds', 'bird': 'birds', 'birds': 'birds', 'dog': 'dogs', 'dogs': 'dogs',
             'car': 'cars', 'cars': 'cars'}
DRC_SHORT_NAMES = {'birds': 'cub', 'dogs': 'dog', 'cars': 'car'}
# The DRC dogs/cars split files (train, test); the train one also marks the dataset's folder.
MRCNN_SPLIT_FILES = {'dogs': ('data_tr_sel.npy', 'data_te_sel.npy'),
                     'cars': ('data_mrcnn_train_select.npy', 'data_mrcnn_test_select.npy')}
DRC_MARKERS = {'birds': 'images.txt', **{kind: files[0] for kind, files in MRCNN_SPLIT_FILES.items()}}
DEFAULT_DRC_ROOT = os.path.join('datasets', 'DRC_processed')
# SHA-256 of the CUB train_val_test_split.txt that the ReDO repository publishes (11 788 lines:
# 10 000 train, 788 val, 1 000 test), the split the paper's CUB scores are measured on.
CUB_SPLIT_SHA256 = '7620961c0d472a9721d9f2e5541a6dba2a6009e21caadb3861c5c7b64270764c'
_checked_splits: set[tuple[str, str]] = set()


# ----------------------------------------------------------------------------------------------
# Reading the layouts.

def _need_file(path: str, what: str) -> str:
    if not dnnlib.check_regular_file(path):
        raise dnnlib.UserError(f'missing {what}: {path}; is the dataset root complete? (see README, "Datasets")')
    return path


def _read_table(path: str, num_fields: int, line_numbers: dict[int, int] | None = None) -> dict[int, list[str]]:
    """CUB metadata file: '<id> <field> ...' per line → {id: fields}. Rows are matched by id; an id
    listed twice is an error naming both lines (the later line would silently replace a sample).
    ``line_numbers``, when given, receives each id's line."""
    table, lines_of = {}, {}
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
        image_id = int(fields[0])
        if image_id in table:
            raise dnnlib.UserError(f'{path}, line {line_number}: image id {image_id} is listed a second time (first on '
                                   f'line {lines_of[image_id]}); the file is damaged: replace it with the one from the '
                                   f'dataset release')
        table[image_id], lines_of[image_id] = fields[1:], line_number
    if line_numbers is not None:
        line_numbers.update(lines_of)
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
    image_lines: dict[int, int] = {}
    images = _read_table(os.path.join(root, 'images.txt'), 1, image_lines)
    first_id_of: dict[str, int] = {}
    for image_id in sorted(images, key=image_lines.get):   # one file under two ids: a test sample could be a train one
        other = first_id_of.setdefault(images[image_id][0], image_id)
        if other != image_id:
            raise dnnlib.UserError(f'{os.path.join(root, "images.txt")}, line {image_lines[image_id]}: '
                                   f'{images[image_id][0]} is listed a second time (as id {other} on line '
                                   f'{image_lines[other]}); the file is damaged: replace it with the one from the '
                                   f'dataset release')
    split_path = os.path.join(root, 'train_val_test_split.txt')
    split_of = _read_table(split_path, 1)
    check_cub_split(split_path, split_of)
    wanted = '0' if split == 'train' else '2'           # 1 (validation) is used by no stage
    ids = sorted(i for i, (k,) in split_of.items() if k == wanted)
    box_lines: dict[int, int] = {}
    boxes = _read_table(os.path.join(root, 'bounding_boxes.txt'), 4, box_lines) if split == 'test' else {}
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
                                  os.path.join(root, 'segmentations', key + '.png'), box,
                                  f'{os.path.join(root, "bounding_boxes.txt")}, line {box_lines[i]}'))
    check_listed(records, split_path)
    return records


def check_cub_split(path: str, split_of: dict[int, list[str]]) -> None:
    """One warning (once per file and content) when the CUB split file is not ReDO's: the run
    still uses it, but its scores do not compare with the paper's."""
    with open(path, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest == CUB_SPLIT_SHA256 or (os.path.abspath(path), digest) in _checked_splits:
        return
    _checked_splits.add((os.path.abspath(path), digest))
    counts = [sum(k == str(kind) for (k,) in split_of.values()) for kind in range(3)]
    dnnlib.warn(f'{path} is not the train_val_test_split.txt that ReDO publishes (SHA-256 {digest[:16]}..., '
                f'expected {CUB_SPLIT_SHA256[:16]}...; {counts[0]} train / {counts[1]} val / {counts[2]} test, '
                f'expected 10000 / 788 / 1000): its scores do not compare with the paper\'s')


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
    for token in tokens:   # a token is a file stem inside the dataset: '../x' or '/x' would read elsewhere
        if os.path.isabs(token) or '..' in token.replace('\\', '/').split('/') or '\0' in token:
            raise dnnlib.UserError(f'{split_path} holds the token {token!r}, which points outside the dataset '
                                   f'folder {root}; replace the file with the one from the dataset release')
    paths = [mrcnn_sample_paths(root, kind, split, t) for t in tokens]
    if split == 'train':
        if train_masks and paths and not os.path.isfile(paths[0][1]):
            raise dnnlib.UserError(f'the {kind} train split has no masks: {paths[0][1]} does not exist (train masks '
                                   f'are read as <token>_maskorig.png beside <token>_orig.png); export --split=test')
        records = [Record(image, mask if train_masks else None) for image, mask in paths]
    else:
        records = [Record(image, mask) for image, mask in paths]
    check_listed(records, split_path)
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
