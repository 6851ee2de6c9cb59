"""Two more held-out procedural sets in the DRC cars layout: small, off-centre objects in clutter.

    python experiments/heldout_scenes.py --kind=blocks --out=DIR [--train=2000] [--test=200] [--resolution=64] [--seed=0]
    python experiments/heldout_scenes.py --kind=blobs  --out=DIR ...
    python train_ILS_64.py --outdir=runs --data=car --data-root=DIR --cfg=cpu --seed=0

They stress what outside photographs stress and the built-in synthetic set (training/synthetic.py)
does not: every object is small (its visible part covers 10-25 % of the image), lies anywhere in
the frame (its centre is drawn uniformly over [-0.75, 0.75]² of the image's [-1, 1]², so most are
off-centre and about half are cut by the border), on a cluttered textured background with a ground and a sky, and the
object's colours are shared with the background. The two kinds share no shapes, textures, palettes
or code with each other, with training/synthetic.py or with experiments/heldout_data.py:

* ``blocks``: man-made things, unions of 3-6 rotated rectangles (a base and boxes stacked on its
  edges), painted with multiplicative fractal grain and per-box shading; the scene is a sky
  gradient over a ground of anisotropic fractal noise, with 15-40 small boxes and discs of clutter.
  Palette: greys, rust, ochre, slate.
* ``blobs``: soft creatures, the level set of a sum of 3-7 Gaussian bumps, painted with stripes or
  dots over radial shading; the scene is a tiled or brick ground (perspective-free, periodic) under a
  sky with soft cloud ellipses, with 5-15 small dots and ovals of clutter. Palette: greens,
  browns, pinks, teal.

Each sample is a pure function of (kind, seed, split, index), so train and test are disjoint
streams. Shapes are rendered at 2x supersampling; the mask is the pixels whose coverage is over
one half. Written like experiments/heldout_data.py: DIR/cars/heldout_options.json first, the PNGs,
then the split files last (a folder without them is an interrupted run); a non-empty DIR/cars is
never overwritten.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from typing import Callable

import click
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
from training.drc import mrcnn_sample_paths, mrcnn_split_file  # noqa: E402  (the reader's layout)

KINDS = ('blocks', 'blobs')
KIND_STREAMS = {'blocks': 7001, 'blobs': 7002}    # no two kinds (or splits) share a random stream
SPLIT_STREAMS = {'train': 0, 'test': 1}
AREA_RANGE = (0.10, 0.25)     # visible object area, as a fraction of the image (by rejection)
SUPERSAMPLE = 2
CENTRE_RANGE = 0.75           # object centres uniform over [-0.75, 0.75]² (the image is [-1, 1]²)
PALETTES = {
    'blocks': np.array([(96, 96, 100), (150, 148, 140), (176, 92, 54), (198, 160, 80), (80, 96, 120),
                        (60, 58, 54), (210, 206, 196), (120, 110, 84), (140, 60, 48), (104, 128, 150)],
                       np.float32) / 255,
    'blobs': np.array([(62, 120, 60), (120, 160, 70), (110, 80, 50), (170, 130, 96), (200, 120, 140),
                       (60, 140, 140), (230, 210, 170), (40, 70, 50), (150, 100, 150), (90, 170, 200)],
                      np.float32) / 255,
}


# ----------------------------------------------------------------------------------------------
# Fields on the supersampled grid: x right, y down, both in [-1, 1].

def coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of a size×size grid: (x [1, size], y [size, 1]) in [-1, 1]."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1)
    return c[None, :], c[:, None]


def smooth_noise(rng: np.random.Generator, size: int, cells: int, stretch: float = 1.0) -> np.ndarray:
    """[size, size] float32 in [0, 1]: a cells×(cells·stretch) lattice of uniform values, bicubic-resized."""
    lattice = rng.uniform(0, 1, (max(2, int(cells)), max(2, int(cells * stretch)))).astype(np.float32)
    field = np.asarray(Image.fromarray(lattice, mode='F').resize((size, size), Image.BICUBIC), np.float32)
    return np.clip(field, 0, 1)


def octave_noise(rng: np.random.Generator, size: int, cells: tuple[int, ...], stretch: float = 1.0) -> np.ndarray:
    """[size, size] in [0, 1]: :func:`smooth_noise` octaves with halving weights, min-max normalised."""
    total = sum(smooth_noise(rng, size, c, stretch) * 0.6 ** k for k, c in enumerate(cells))
    return (total - total.min()) / max(float(total.max() - total.min()), 1e-6)


def downsample(field: np.ndarray, factor: int) -> np.ndarray:
    """Average factor×factor blocks of the last two axes."""
    *lead, h, w = field.shape
    return field.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def box_inside(x, y, cx, cy, hw, hh, angle) -> np.ndarray:
    """Bool field: inside a rectangle of half-sizes (hw, hh) centred at (cx, cy), rotated by angle."""
    c, s = math.cos(angle), math.sin(angle)
    px, py = (x - cx) * c + (y - cy) * s, (y - cy) * c - (x - cx) * s
    return (np.abs(px) <= hw) & (np.abs(py) <= hh)


def ellipse_inside(x, y, cx, cy, a, b, angle) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    px, py = (x - cx) * c + (y - cy) * s, (y - cy) * c - (x - cx) * s
    return (px / a) ** 2 + (py / b) ** 2 <= 1


# ----------------------------------------------------------------------------------------------
# Objects: a shape function of object coordinates plus the paint, placed by :func:`place`.

def blocks_shape(rng: np.random.Generator) -> Callable:
    """A union of 3-6 rotated rectangles in object units (roughly within [-1, 1]²): returns
    f(x, y) -> (inside bool, part index int, -1 outside)."""
    boxes = [(0.0, 0.2, rng.uniform(0.5, 0.9), rng.uniform(0.2, 0.4), rng.uniform(-0.15, 0.15))]
    for _ in range(int(rng.integers(2, 6))):
        bx, by, bw, bh, _ = boxes[int(rng.integers(len(boxes)))]
        side = int(rng.integers(4))
        w, h = rng.uniform(0.1, 0.45), rng.uniform(0.1, 0.45)
        if side == 0:       # on top
            boxes.append((bx + rng.uniform(-bw, bw) * 0.7, by - bh - h * 0.8, w, h, rng.uniform(-0.3, 0.3)))
        elif side == 1:     # below (legs, wheels)
            boxes.append((bx + rng.uniform(-bw, bw) * 0.8, by + bh + h * 0.6, w * 0.5, h, rng.uniform(-0.2, 0.2)))
        else:               # left or right
            sign = -1 if side == 2 else 1
            boxes.append((bx + sign * (bw + w * 0.7), by + rng.uniform(-bh, bh) * 0.6, w, h * 0.6, rng.uniform(-0.6, 0.6)))

    def shape(x, y):
        part = np.full(np.broadcast_shapes(x.shape, y.shape), -1, np.int16)
        for i, (cx, cy, hw, hh, angle) in enumerate(boxes):
            part[box_inside(x, y, cx, cy, hw, hh, angle)] = i
        return part >= 0, part
    return shape


def blobs_shape(rng: np.random.Generator) -> Callable:
    """A metaball: sum of 3-7 Gaussian bumps above a threshold; f(x, y) -> (inside, field)."""
    count = int(rng.integers(3, 8))
    centres = rng.uniform(-0.55, 0.55, (count, 2))
    sigmas = rng.uniform(0.12, 0.3, count)
    weights = rng.uniform(0.7, 1.3, count)

    def shape(x, y):
        field = sum(w * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
                    for (cx, cy), s, w in zip(centres, sigmas, weights))
        return field > 0.5, field
    return shape


def place(rng: np.random.Generator, shape: Callable, size: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Pose the object so that its visible area lies in :data:`AREA_RANGE`: (coverage [size, size]
    float in [0, 1] on the supersampled grid, the shape's second output there, pose (cx, cy, scale,
    angle)). The centre is uniform over the square of :data:`CENTRE_RANGE`: anywhere, often cut."""
    fine = 96
    fx, fy = coords(fine)
    base_area = np.count_nonzero(shape(fx, fy)[0]) / fine ** 2 * 4        # object units² within [-1, 1]²
    x, y = coords(size)
    for attempt in range(60):
        target = rng.uniform(*AREA_RANGE) * 4
        scale = math.sqrt(target / max(base_area, 1e-3)) * rng.uniform(1.0, 1.5)   # a cut one needs more
        cx, cy = rng.uniform(-CENTRE_RANGE, CENTRE_RANGE, 2)
        angle = rng.uniform(-0.3, 0.3) if rng.uniform() < 0.8 else rng.uniform(-math.pi, math.pi)
        c, s = math.cos(angle), math.sin(angle)
        ox, oy = ((x - cx) * c + (y - cy) * s) / scale, ((y - cy) * c - (x - cx) * s) / scale
        inside, extra = shape(ox, oy)
        visible = downsample(inside.astype(np.float32), SUPERSAMPLE) > 0.5
        if AREA_RANGE[0] <= visible.mean() <= AREA_RANGE[1]:
            return inside.astype(np.float32), extra, (cx, cy, scale, angle)
    raise RuntimeError('no pose with the visible area in range')      # not reached for these shapes


# ----------------------------------------------------------------------------------------------
# Scenes.

def pick(rng: np.random.Generator, palette: np.ndarray, k: int) -> np.ndarray:
    """k distinct colours [k, 3], each jittered a little."""
    idx = rng.choice(len(palette), k, replace=False)
    return np.clip(palette[idx] * rng.uniform(0.85, 1.15, (k, 1)), 0, 1)


def sky_and_ground(rng: np.random.Generator, size: int, sky: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """[3, size, size]: a sky (two colours, vertical gradient) above a tilted horizon, ``ground`` below
    (ground: [3, size, size] already painted)."""
    x, y = coords(size)
    horizon = rng.uniform(-0.6, 0.3) + rng.uniform(-0.25, 0.25) * x
    t = np.clip((y + 1) / 2, 0, 1)
    sky_img = sky[0][:, None, None] * (1 - t) + sky[1][:, None, None] * t
    below = (y > horizon).astype(np.float32)
    return sky_img * (1 - below) + ground * below


def blocks_scene(rng, size, palette, shared) -> np.ndarray:
    sky = pick(rng, palette, 2) * np.array([[1.0], [1.1]], np.float32)
    g = pick(rng, palette, 2)
    if rng.uniform() < 0.6:
        g[int(rng.integers(2))] = shared[int(rng.integers(len(shared)))]
    grain = octave_noise(rng, size, (4, 9, 20, 40), stretch=rng.uniform(1.5, 4))      # wide strata
    ground = g[0][:, None, None] * (1 - grain) + g[1][:, None, None] * grain
    img = sky_and_ground(rng, size, np.clip(sky, 0, 1), ground)
    x, y = coords(size)
    for _ in range(int(rng.integers(15, 41))):          # clutter: small boxes and discs
        colour = shared[int(rng.integers(len(shared)))] if rng.uniform() < 0.4 else pick(rng, palette, 1)[0]
        cx, cy = rng.uniform(-1.1, 1.1, 2)
        a, b = rng.uniform(0.02, 0.16), rng.uniform(0.02, 0.12)
        inside = (box_inside(x, y, cx, cy, a, b, rng.uniform(-np.pi, np.pi)) if rng.uniform() < 0.6
                  else ellipse_inside(x, y, cx, cy, a, a, 0.0))
        img[:, inside] = colour[:, None] * rng.uniform(0.8, 1.1)
    return img


def blobs_scene(rng, size, palette, shared) -> np.ndarray:
    sky = pick(rng, palette, 2)
    tiles = pick(rng, palette, 2)
    if rng.uniform() < 0.6:
        tiles[int(rng.integers(2))] = shared[int(rng.integers(len(shared)))]
    x, y = coords(size)
    period = rng.uniform(0.12, 0.3)
    rows = np.floor((y + 2) / (period * 0.6))
    if rng.uniform() < 0.5:      # bricks: rows offset by half a brick, mortar lines in the second colour
        u = (x + 2 + 0.5 * period * (rows % 2)) / period
        v = (y + 2) / (period * 0.6)
        mortar = (np.abs(u - np.round(u)) < 0.08) | (np.abs(v - np.round(v)) < 0.12)
        pattern = mortar.astype(np.float32)
    else:                        # checker tiles
        pattern = ((np.floor((x + 2) / period) + rows) % 2).astype(np.float32)
    pattern = np.clip(pattern + 0.3 * (smooth_noise(rng, size, 12) - 0.5), 0, 1)
    ground = tiles[0][:, None, None] * (1 - pattern) + tiles[1][:, None, None] * pattern
    img = sky_and_ground(rng, size, sky, ground)
    for _ in range(int(rng.integers(2, 6))):            # clouds: soft ellipses of a light colour
        cx, cy = rng.uniform(-1, 1), rng.uniform(-1, -0.3)
        a, b = rng.uniform(0.15, 0.4), rng.uniform(0.05, 0.12)
        w = np.exp(-(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)) * rng.uniform(0.3, 0.7)
        img = img * (1 - w) + w * 0.95
    for _ in range(int(rng.integers(5, 16))):           # clutter: small dots and ovals
        colour = shared[int(rng.integers(len(shared)))] if rng.uniform() < 0.5 else pick(rng, palette, 1)[0]
        cx, cy = rng.uniform(-1.1, 1.1, 2)
        a = rng.uniform(0.03, 0.12)
        img[:, ellipse_inside(x, y, cx, cy, a, a * rng.uniform(0.4, 1.0), rng.uniform(-np.pi, np.pi))] = colour[:, None]
    return img


def blocks_paint(rng, size, colours, parts) -> np.ndarray:
    """[3, size, size]: the object's first colour with fractal grain, each box shaded its own way."""
    grain = octave_noise(rng, size, (6, 14, 30))
    img = colours[0][:, None, None] * (0.75 + 0.5 * grain)
    shades = rng.uniform(0.7, 1.25, 8)
    stripe = rng.uniform() < 0.5
    for i in range(8):
        img[:, parts == i] *= shades[i]
    if stripe:                   # a band of the second colour across the object
        _, y = coords(size)
        band = (np.abs(y - rng.uniform(-0.8, 0.8)) < rng.uniform(0.03, 0.1)) & (parts >= 0)
        img[:, band] = colours[1][:, None]
    return img


def blobs_paint(rng, size, colours, field) -> np.ndarray:
    """[3, size, size]: stripes or dots of the second colour over the first, with radial shading."""
    x, y = coords(size)
    if rng.uniform() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.05, 0.15)
        t = (x * math.cos(angle) + y * math.sin(angle)) / period
        mix = (np.sin(t * 2 * np.pi + 2 * smooth_noise(rng, size, 6)) > 0.3).astype(np.float32)
    else:
        mix = (smooth_noise(rng, size, int(rng.integers(10, 24))) > 0.62).astype(np.float32)
    img = colours[0][:, None, None] * (1 - mix) + colours[1][:, None, None] * mix
    shade = 0.7 + 0.45 * np.clip(np.asarray(field, np.float32) - 0.5, 0, 1)
    return img * shade


KIND_RULES = {'blocks': (blocks_shape, blocks_scene, blocks_paint),
              'blobs': (blobs_shape, blobs_scene, blobs_paint)}


def sample(kind: str, seed: int, split: str, index: int, resolution: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index``: (img uint8 [3, R, R], mask uint8 [R, R] in {0, 1}); a pure function of its arguments."""
    if kind not in KIND_RULES:
        raise ValueError(f'unknown kind {kind!r}; expected one of {KINDS}')
    if split not in SPLIT_STREAMS:
        raise ValueError(f'unknown split {split!r}; expected one of {sorted(SPLIT_STREAMS)}')
    rng = np.random.default_rng([KIND_STREAMS[kind], seed, SPLIT_STREAMS[split], index])
    make_shape, make_scene, make_paint = KIND_RULES[kind]
    palette = PALETTES[kind]
    size = resolution * SUPERSAMPLE
    coverage, extra, _ = place(rng, make_shape(rng), size)
    colours = pick(rng, palette, 2)
    bg = make_scene(rng, size, palette, colours)
    fg = make_paint(rng, size, colours, extra)
    img = downsample(bg * (1 - coverage) + fg * coverage, SUPERSAMPLE)
    mask = (downsample(coverage, SUPERSAMPLE) > 0.5).astype(np.uint8)
    img = img + rng.standard_normal(img.shape).astype(np.float32) * rng.uniform(0.005, 0.025)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), mask


def generate(kind: str, split: str, num_images: int, seed: int = 0, resolution: int = 64) -> dict[str, np.ndarray]:
    """Samples 0..num_images-1: dict(img uint8 [N, 3, R, R], mask uint8 [N, R, R] in {0, 1})."""
    pairs = [sample(kind, seed, split, i, resolution) for i in range(num_images)]
    return dict(img=np.stack([p[0] for p in pairs]), mask=np.stack([p[1] for p in pairs]))


def write_set(kind: str, out: str, num_train: int, num_test: int, resolution: int = 64, seed: int = 0,
              log: Callable[[str], None] = print) -> str:
    """Write the set as ``out``/cars/ (see the module docstring); returns that folder."""
    root = os.path.join(out, 'cars')
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise dnnlib.UserError(f'{root} already exists and is not empty; choose another --out (it is never overwritten)')
    for split in ('train', 'test'):
        os.makedirs(os.path.dirname(mrcnn_sample_paths(root, 'cars', split, '')[0]), exist_ok=True)
    options = dict(generator='experiments/heldout_scenes.py', kind=kind, train=num_train, test=num_test,
                   resolution=resolution, seed=seed)
    dnnlib.write_bytes_atomic(os.path.join(root, 'heldout_options.json'), dnnlib.json_text(options, indent=2).encode('utf-8'))
    begin = time.time()
    for split, count in (('train', num_train), ('test', num_test)):
        for i in range(count):
            img, mask = sample(kind, seed, split, i, resolution)
            image_path, mask_path = mrcnn_sample_paths(root, 'cars', split, f'{split}{i:06d}')
            Image.fromarray(img.transpose(1, 2, 0)).save(image_path, compress_level=1)
            Image.fromarray(mask * np.uint8(255)).save(mask_path, compress_level=1)
    for split, count in (('train', num_train), ('test', num_test)):   # last: they mark a complete set
        buffer = io.BytesIO()
        np.save(buffer, np.array([f'{split}{i:06d}' for i in range(count)], dtype=str), allow_pickle=False)
        dnnlib.write_bytes_atomic(mrcnn_split_file(root, 'cars', split), buffer.getvalue())
    log(f'wrote {root}: {kind}, {num_train} train + {num_test} test images at {resolution} px, seed {seed}, '
        f'in {time.time() - begin:.1f} s')
    return root


@click.command()
@click.option('--kind', required=True, type=click.Choice(KINDS), help='Which generator')
@click.option('--out', required=True, metavar='DIR', help='Write the set to DIR/cars (read with --data=car --data-root=DIR)')
@click.option('--train', 'num_train', default=2000, show_default=True, type=click.IntRange(1, dnnlib.MAX_COUNT), help='Train images')
@click.option('--test', 'num_test', default=200, show_default=True, type=click.IntRange(1, dnnlib.MAX_COUNT), help='Test images (with masks)')
@click.option('--resolution', default=64, show_default=True, type=click.IntRange(min=8, max=1024), help='Image size R')
@click.option('--seed', default=0, show_default=True, type=dnnlib.SEED, help='Random seed of the set')
@dnnlib.report_user_errors
def main(kind: str, out: str, num_train: int, num_test: int, resolution: int, seed: int) -> None:
    """Write one of the two held-out scene sets in the DRC cars layout."""
    write_set(kind, out, num_train, num_test, resolution, seed)


if __name__ == '__main__':
    main()
