"""Tiny on-disk dataset trees in the DRC layouts (METHOD.md §6), built inside tests.

Images carry colour markers whose survival after cropping the tests can check by hand:
``marker_image(w, h)`` is blue left of the centre square, red inside it and green right of it
(columns for wide images, rows for tall ones), with the centre square computed here directly
from the rule in METHOD.md, independently of training/dataset.py.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write_image(path: str, array: np.ndarray, **save_kwargs) -> str:
    """Save an [H, W, 3] or [H, W] uint8 array; the format follows the extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path, **save_kwargs)
    return path


def solid(w: int, h: int, colour: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def centre_square(w: int, h: int) -> tuple[int, int, int]:
    """(top, left, side) of the centre square crop: side = min, offset floor((long − short)/2)."""
    side = min(w, h)
    return (h - side) // 2, (w - side) // 2, side


def marker_image(w: int, h: int) -> np.ndarray:
    """[h, w, 3]: red on the centre square, blue before it, green after it."""
    top, left, side = centre_square(w, h)
    img = solid(w, h, BLUE)
    if w >= h:
        img[:, left + side:] = GREEN
        img[:, left:left + side] = RED
    else:
        img[top + side:, :] = GREEN
        img[top:top + side, :] = RED
    return img


def threshold_mask(w: int, h: int) -> np.ndarray:
    """[h, w] grey mask whose columns cycle through 0, 127, 128, 255 (the 0.5 threshold's edges)."""
    values = np.array([0, 127, 128, 255], np.uint8)
    return np.tile(values[np.arange(w) % 4], (h, 1))


def build_cub(root: str) -> dict:
    """A CUB tree with three train images (one wide, one tall, one square), two test images, and
    one validation image. Split and box files list ids in a different row order than images.txt,
    so a loader that matches rows by position instead of by id reads the wrong boxes/splits.
    """
    items = {
        # id: (relpath, image, split)
        1: ('001.A/wide.jpg', marker_image(101, 60), 0),
        2: ('001.A/tall.jpg', marker_image(60, 100), 0),
        3: ('002.B/test_box.jpg', None, 2),
        4: ('002.B/val.jpg', solid(40, 40, GREEN), 1),
        5: ('003.C/test_full.jpg', None, 2),
        6: ('003.C/square.jpg', solid(50, 50, RED), 0),
    }
    # Test image 3: 100×36 (W×H), box (0, 5, 33, 21): r = int(24.75) = 24, cx = int(33/2) = 16,
    # cy = int(31/2) = 15, crop [max(0,−8), max(0,−9), min(100,40), min(36,39)] = [0, 0, 40, 36].
    box_img = solid(100, 36, BLUE)
    box_img[:, 0:40] = RED
    box_mask = np.zeros((36, 100), np.uint8)
    box_mask[10:30, 15:35] = 255
    # Test image 5: 128×128, box (21, 21, 86, 86): r = int(64.5) = 64, cx = cy = int(128/2) = 64,
    # crop [0, 0, 128, 128]: the whole image, so at R = 128 the mask values pass unresized.
    full_img = solid(128, 128, GREEN)
    full_mask = threshold_mask(128, 128)
    boxes = {1: (0, 0, 10, 10), 2: (0, 0, 10, 10), 3: (0.0, 5.0, 33.0, 21.0), 4: (0, 0, 5, 5),
             5: (21.0, 21.0, 86.0, 86.0), 6: (1, 1, 5, 5)}
    for i, (rel, img, _split) in items.items():
        if img is not None:
            write_image(os.path.join(root, 'images', rel), img, quality=100, subsampling=0)
    write_image(os.path.join(root, 'images', items[3][0]), box_img, quality=100, subsampling=0)
    write_image(os.path.join(root, 'segmentations', items[3][0][:-4] + '.png'), box_mask)
    write_image(os.path.join(root, 'images', items[5][0]), full_img, quality=100, subsampling=0)
    write_image(os.path.join(root, 'segmentations', items[5][0][:-4] + '.png'), full_mask)
    with open(os.path.join(root, 'images.txt'), 'w') as f:
        f.writelines(f'{i} {rel}\n' for i, (rel, _, _) in items.items())
    with open(os.path.join(root, 'train_val_test_split.txt'), 'w') as f:
        f.writelines(f'{i} {items[i][2]}\n' for i in sorted(items, reverse=True))
    with open(os.path.join(root, 'bounding_boxes.txt'), 'w') as f:
        f.writelines(f'{i} ' + ' '.join(str(float(v)) for v in boxes[i]) + '\n' for i in (5, 3, 1, 2, 4, 6))
    return dict(train_ids=[1, 2, 6], test_ids=[3, 5], items=items, box_crop=(0, 0, 40, 36))


MRCNN_SPLIT_FILES = {'dogs': ('data_tr_sel.npy', 'data_te_sel.npy'),
                     'cars': ('data_mrcnn_train_select.npy', 'data_mrcnn_test_select.npy')}


def mrcnn_train_folder(root: str, kind: str) -> str:
    return os.path.join(root, 'train_orig', 'orig') if kind == 'dogs' else os.path.join(root, 'data_mrcnn', 'train', 'orig')


def build_mrcnn(root: str, kind: str, object_tokens: bool = False) -> dict:
    """A dogs or cars tree: train tokens [red square, wide marker, tall marker], test tokens
    [red 64×64 with a threshold mask, a 192×80 image with a mask of 1-pixel stripes every 3
    columns: nearest resizing to 64 keeps them all, bilinear would blur them to grey 85]. With ``object_tokens`` the
    split files are object arrays (as some DRC releases ship them)."""
    train = {'t_red': solid(64, 64, RED), 't_wide': marker_image(101, 60), 't_tall': marker_image(60, 100)}
    stripes = np.zeros((80, 192), np.uint8)
    stripes[:, 1::3] = 255
    test = {'s_thresh': (solid(64, 64, RED), threshold_mask(64, 64)), 's_stripes': (marker_image(192, 80), stripes)}
    for token, img in train.items():
        write_image(os.path.join(mrcnn_train_folder(root, kind), f'{token}_orig.png'), img)
    resized = os.path.join(root, 'data_mrcnn', 'test', 'resized')
    for token, (img, mask) in test.items():
        write_image(os.path.join(resized, f'{token}_resized.png'), img)
        write_image(os.path.join(resized, f'{token}_maskresized.png'), np.repeat(mask[:, :, None], 3, axis=2))
    dtype = object if object_tokens else str
    for name, tokens in zip(MRCNN_SPLIT_FILES[kind], (list(train), list(test))):
        np.save(os.path.join(root, name), np.array(tokens, dtype=dtype), allow_pickle=object_tokens)
    return dict(train=train, test=test)


def build_pairs(root: str, count: int = 3, size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """img/00000i.png + mask/00000i.png (RGB grey m·255) as written by our sample generator."""
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(1, count + 1):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        grey = rng.choice(np.array([0, 100, 127, 128, 200, 255], np.uint8), (size, size))
        write_image(os.path.join(root, 'img', f'{i:06d}.png'), img)
        write_image(os.path.join(root, 'mask', f'{i:06d}.png'), np.repeat(grey[:, :, None], 3, axis=2))
        pairs.append((img, grey))
    return pairs


def object_mask(w: int, h: int) -> np.ndarray:
    """[h, w] uint8 in {0, 255}: an off-centre object inside the centre square (a rectangle in its
    top-left part and a 1-pixel column at its right edge) plus a bar outside it, along the longer
    side, that the centre crop must cut away. Any shift or flip of the crop moves it."""
    top, left, side = centre_square(w, h)
    mask = np.zeros((h, w), np.uint8)
    mask[top + side // 8:top + side // 2, left + side // 5:left + (2 * side) // 3] = 255
    mask[top:top + side, left + side - 1] = 255
    if w > h:
        mask[:, :max(1, left // 2)] = 255
    elif h > w:
        mask[:max(1, top // 2), :] = 255
    return mask


def add_train_masks(root: str, kind: str) -> dict[str, tuple[str, np.ndarray]]:
    """Give every train image of a tree built by :func:`build_cub` / :func:`build_mrcnn` a mask
    (CUB: ``segmentations/<key>.png``; dogs/cars: ``<token>_maskorig.png`` beside ``<token>_orig.png``)
    and replace the image by one whose red channel is that mask (green 0, blue 255 − mask), so that
    image and mask can be checked against each other pixel for pixel. Returns {name: (image path, mask)}.
    """
    written = {}
    if kind == 'birds':
        with open(os.path.join(root, 'images.txt')) as f:
            rels = dict(line.split() for line in f if line.strip())
        with open(os.path.join(root, 'train_val_test_split.txt')) as f:
            train = [i for i, k in (line.split() for line in f if line.strip()) if k == '0']
        for i in train:
            image_path = os.path.join(root, 'images', rels[i])
            written[rels[i]] = (image_path, os.path.join(root, 'segmentations', rels[i][:-4] + '.png'))
    else:
        folder = mrcnn_train_folder(root, kind)
        for name in sorted(os.listdir(folder)):
            if name.endswith('_orig.png'):
                written[name] = (os.path.join(folder, name), os.path.join(folder, name.replace('_orig', '_maskorig')))
    result = {}
    for name, (image_path, mask_path) in written.items():
        h, w = np.asarray(Image.open(image_path)).shape[:2]
        mask = object_mask(w, h)
        image = np.stack([mask, np.zeros_like(mask), 255 - mask], axis=2)
        write_image(image_path, image, **({'quality': 100, 'subsampling': 0} if image_path.endswith('.jpg') else {}))
        write_image(mask_path, mask)
        result[name] = (image_path, mask)
    return result
