"""A held-out procedural dataset in the DRC cars layout: does a preset tuned on the synthetic set work elsewhere?

    python experiments/heldout_data.py --out=DIR [--train=4000] [--test=500] [--resolution=128] [--seed=0] [--workers=1]
    python -m training.dataset --data=car --data-root=DIR --resolution=64 --grid=heldout.png

The demo presets were tuned on training/synthetic.py. This set is drawn by other rules, so a run on
it (``--data=car --data-root=DIR``) shows whether a preset carries over to data it was not tuned on.
It shares no code with training/synthetic.py and differs from it in kind:

* objects are composites of overlapping capsules and ellipses (a vehicle: body, cabin, window,
  wheels with hubs; an animal: body, neck, head, four legs, tail, ears; a bird: body, head, beak,
  wing, tail feathers, thin legs), elongated, with thin parts, mostly upright, any position; the
  synthetic set's objects are single star-shaped outlines r(θ);
* the visible object covers 8–65 % of the image (synthetic: 15–60 %): a target drawn from 10–60 %,
  which elongated objects inside the frame reach up to about 45 % (seed 0, 4000 train images at
  128 px: 10–58 %, median 22 %, 68 % of them under 25 %); about 20 % of the objects are cut by the
  image border, as in photographs (synthetic: none);
* object textures are Voronoi cells, spots or rosettes, wood grain (warped oriented stripes) or a
  smooth colour, always with relief shading and a highlight (synthetic: flat, gradient, stripes,
  checker, rings, value noise);
* backgrounds are clutter over a scene: a horizon with bands of hills under a sky or a field of
  fractal noise, small distractor shapes painted into it (some wearing the object's own texture or
  colours; never part of the mask), and a soft shadow under the object;
* all colours come from one palette of 14, so colour alone does not separate object from background
  (synthetic: uniform RGB).

Each sample is a pure function of (seed, split, index): its own ``numpy`` Generator seeded with
``[seed, split stream, index]``, so a set is the same whatever its size and train and test are
disjoint streams. Scenes are drawn independently of the resolution and rendered directly at it,
anti-aliased from signed distances; the mask is exactly the pixels where the object's signed distance
is negative, i.e. where its anti-aliased coverage exceeds 0.5.

Written as DIR/cars/ (what ``training/dataset.py`` reads for ``--data=car``): ``heldout_options.json``
first, then ``data_mrcnn/train/orig/<token>_orig.png`` + ``<token>_maskorig.png`` and
``data_mrcnn/test/resized/<token>_resized.png`` + ``<token>_maskresized.png`` (masks: one channel,
0 / 255), and last the split files ``data_mrcnn_train_select.npy`` / ``data_mrcnn_test_select.npy``
(plain str arrays), so a folder without them is an interrupted run. An existing non-empty DIR/cars
is never overwritten.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import multiprocessing
import os
import sys
import time
from typing import Callable, NamedTuple

import click
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
from training.drc import mrcnn_sample_paths, mrcnn_split_file  # noqa: E402  (the reader's layout)

SPLIT_STREAMS = {'train': 0, 'test': 1}         # separate random streams keep the splits disjoint
AREA_RANGE = (0.08, 0.65)       # promised visible object area, as a fraction of the image
TARGET_AREA = (0.10, 0.60)      # drawn; a margin for the area estimate's error; large ones shrink to fit
CUT_SHARE = 0.2                 # objects placed across the image border
CUT_RANGE = (0.15, 0.45)        # fraction of a cut object's area that lies beyond the border
MAX_EXTENT = 0.94               # an uncut object stays inside [-0.94, 0.94]² (a margin of 3 % a side)
SHAPE_GRID = 40                 # cells along the longer side of the object when estimating its area
PALETTE = np.array([
    (84, 90, 52), (190, 150, 72), (160, 72, 42), (138, 52, 46), (214, 196, 152), (70, 90, 130),
    (142, 170, 204), (52, 120, 114), (96, 126, 62), (50, 50, 56), (234, 226, 202), (110, 62, 92),
    (220, 122, 42), (140, 140, 134)], np.float32) / 255
DARK_COLOURS = (0, 3, 9, 11)    # tyres, eyes
LIGHT_COLOURS = (4, 6, 10, 13)  # hubs, windows


# ----------------------------------------------------------------------------------------------
# Geometry: objects are unions of capsules and ellipses in object units (x right, y down).

class Part(NamedTuple):
    """One primitive of an object. ``shape`` 'capsule': geometry (x0, y0, x1, y1, r), the points
    within r of the segment; 'ellipse': (cx, cy, a, b, angle). ``paint``: None (the object's
    texture) or an index into its paint colours (0 dark, 1 accent, 2 light); ``silhouette`` False:
    a decal painted on the object, no part of its outline."""
    shape: str
    geometry: tuple[float, ...]
    paint: int | None = None
    silhouette: bool = True


def part_sdf(part: Part, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance to the part (negative inside), same shape as x and y. Exact for capsules;
    for ellipses a first-order estimate whose sign, and so the inside, is exact."""
    if part.shape == 'capsule':
        x0, y0, x1, y1, r = part.geometry
        dx, dy = x1 - x0, y1 - y0
        h = np.clip(((x - x0) * dx + (y - y0) * dy) * (1 / max(dx * dx + dy * dy, 1e-9)), 0, 1)
        return np.hypot(x - x0 - h * dx, y - y0 - h * dy) - r
    cx, cy, a, b, angle = part.geometry
    c, s = math.cos(angle), math.sin(angle)
    px, py = (x - cx) * c + (y - cy) * s, (y - cy) * c - (x - cx) * s
    k0 = np.hypot(px * (1 / a), py * (1 / b))
    k1 = np.hypot(px * (1 / (a * a)), py * (1 / (b * b)))
    return k0 * (k0 - 1) / np.maximum(k1, 1e-6)


def part_bounds(part: Part) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of the part."""
    if part.shape == 'capsule':
        x0, y0, x1, y1, r = part.geometry
        return min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r
    cx, cy, a, b, angle = part.geometry
    c, s = math.cos(angle), math.sin(angle)
    half_x, half_y = math.hypot(a * c, b * s), math.hypot(a * s, b * c)
    return cx - half_x, cy - half_y, cx + half_x, cy + half_y


def object_sdf(parts: list[Part], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance to the union of the silhouette parts, in object units."""
    return np.minimum.reduce([part_sdf(p, x, y) for p in parts if p.silhouette])


def _vehicle(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A car, van or truck: body (two capsules: a box with rounded corners), cabin, window, 2–3 wheels."""
    h = rng.uniform(0.2, 0.32)                  # body half-height
    rr = h * rng.uniform(0.55, 0.9)             # corner radius
    bonnet = rng.uniform(0.0, 0.35)             # the top capsule stops short of the nose
    parts = [Part('capsule', (-1 + rr, -h + rr, 1 - rr - bonnet, -h + rr, rr)),
             Part('capsule', (-1 + rr, h - rr, 1 - rr, h - rr, rr))]
    cx, a, b = rng.uniform(-0.35, 0.1), rng.uniform(0.35, 0.6), rng.uniform(0.22, 0.36)
    cy, tilt = -h - rng.uniform(0.0, 0.06), rng.uniform(-0.1, 0.1)
    parts += [Part('ellipse', (cx, cy, a, b, tilt)),
              Part('ellipse', (cx + 0.05 * a, cy - 0.3 * b, 0.72 * a, 0.5 * b, tilt), paint=2, silhouette=False)]
    wheel = rng.uniform(0.17, 0.25)
    front, rear = rng.uniform(0.5, 0.68), rng.uniform(0.5, 0.68)
    xs = [-rear, front] + ([-rear + 2.15 * wheel] if rng.uniform() < 0.3 else [])
    wy = h - wheel * rng.uniform(0.1, 0.5)
    hub = wheel * rng.uniform(0.35, 0.55)
    for x in xs:
        parts += [Part('capsule', (x, wy, x, wy, wheel), paint=0),
                  Part('capsule', (x, wy, x, wy, hub), paint=2, silhouette=False)]
    if rng.uniform() < 0.4:                     # a spoiler, or a roof bar
        parts.append(Part('capsule', (-0.98, -h + 0.02, -0.82, -h - rng.uniform(0.08, 0.16), 0.04), paint=1))
    return parts, h


def _animal(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A four-legged animal: body, neck, head (with a snout and ears, sometimes), legs, tail, eye."""
    bl, bh, tilt = rng.uniform(0.62, 0.78), rng.uniform(0.24, 0.36), rng.uniform(-0.08, 0.08)
    head = rng.uniform(0.15, 0.24)
    hx, hy = bl + rng.uniform(0.05, 0.25), -bh - rng.uniform(0.0, 0.3)
    parts = [Part('ellipse', (0.0, 0.0, bl, bh, tilt)),
             Part('ellipse', (hx, hy, head * rng.uniform(1.1, 1.5), head, rng.uniform(-0.5, 0.3))),
             Part('capsule', (bl * 0.55, -bh * 0.35, hx - head * 0.3, hy, rng.uniform(0.09, 0.14)))]
    if rng.uniform() < 0.5:
        tip = (hx + head * rng.uniform(0.8, 1.3), hy + head * rng.uniform(0, 0.5))      # a snout
        parts.append(Part('capsule', (hx, hy, *tip, head * 0.5)))
    leg_length, leg_radius = rng.uniform(0.3, 0.6), rng.uniform(0.045, 0.08)
    hips = (-rng.uniform(0.55, 0.75), -rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.5), rng.uniform(0.55, 0.75))
    for x in (bl * h for h in hips):
        parts.append(Part('capsule', (x, bh * 0.3, x + rng.uniform(-0.12, 0.12), bh + leg_length, leg_radius)))
    accent = 1 if rng.uniform() < 0.5 else None
    parts.append(Part('capsule', (-bl * 0.9, -bh * 0.3, -bl - rng.uniform(0.15, 0.4), rng.uniform(-0.45, 0.35),
                                  rng.uniform(0.03, 0.07)), paint=accent))
    if rng.uniform() < 0.5:
        for dx in (-0.35, 0.15):
            parts.append(Part('ellipse', (hx + dx * head, hy - 0.95 * head, 0.25 * head, 0.5 * head, -0.3), paint=accent))
    parts.append(Part('capsule', (hx + 0.4 * head, hy - 0.25 * head, hx + 0.4 * head, hy - 0.25 * head, 0.15 * head),
                      paint=0, silhouette=False))
    return parts, bh


def _bird(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A bird: body, head, beak, wing (folded or raised), two tail feathers, thin legs, eye."""
    bl, bh, tilt = rng.uniform(0.55, 0.72), rng.uniform(0.26, 0.36), rng.uniform(-0.35, 0.05)
    head = rng.uniform(0.16, 0.24)
    hx, hy = bl * 0.9, -bh * rng.uniform(0.8, 1.3)
    parts = [Part('ellipse', (0.0, 0.0, bl, bh, tilt)),
             Part('capsule', (hx, hy, hx, hy, head)),
             Part('capsule', (hx + 0.6 * head, hy, hx + head + rng.uniform(0.12, 0.3), hy + rng.uniform(-0.02, 0.1),
                              rng.uniform(0.03, 0.05)), paint=1)]
    wing_paint = 1 if rng.uniform() < 0.5 else None
    if rng.uniform() < 0.3:
        parts.append(Part('ellipse', (-0.1, -bh - 0.25, 0.55, 0.14, -0.9), paint=wing_paint))
    else:
        parts.append(Part('ellipse', (rng.uniform(-0.25, 0.05), -bh * rng.uniform(0.1, 0.6), bl * rng.uniform(0.55, 0.85),
                                      bh * rng.uniform(0.35, 0.6), rng.uniform(-0.6, 0.15)), paint=wing_paint))
    tail_y, spread, tail_radius = rng.uniform(-0.35, 0.05), rng.uniform(0.08, 0.2), rng.uniform(0.04, 0.08)
    tail_x = -bl - rng.uniform(0.25, 0.45)
    for dy in (0.0, spread):
        parts.append(Part('capsule', (-bl * 0.8, 0.0, tail_x, tail_y + dy, tail_radius)))
    leg_length, leg_radius = rng.uniform(0.25, 0.45), rng.uniform(0.02, 0.035)
    for x in (-rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2)):
        parts.append(Part('capsule', (x, bh * 0.6, x + rng.uniform(-0.05, 0.1), bh + leg_length, leg_radius), paint=1))
    parts.append(Part('capsule', (hx + 0.3 * head, hy - 0.2 * head, hx + 0.3 * head, hy - 0.2 * head, 0.18 * head),
                      paint=0, silhouette=False))
    return parts, bh


OBJECTS: dict[str, Callable[[np.random.Generator], tuple[list[Part], float]]] = {
    'vehicle': _vehicle, 'animal': _animal, 'bird': _bird}


class Layout(NamedTuple):
    """Where an object lies: image = centre + scale · rotation(angle) · (flip · x, y), in image units
    ([-1, 1]² is the image). ``extent``: (xmin, ymin, xmax, ymax) of the object after rotation and flip,
    before scaling. ``cut``: whether it was placed across the border."""
    centre: tuple[float, float]
    scale: float
    angle: float
    flip: float
    extent: tuple[float, float, float, float]
    cut: bool


def _inside_points(parts: list[Part]) -> tuple[np.ndarray, float]:
    """Cell centres inside the object on a grid of :data:`SHAPE_GRID` cells along its longer side:
    ([K, 2] points in object units, area of one cell)."""
    bounds = np.array([part_bounds(p) for p in parts if p.silhouette])
    lo, hi = bounds[:, :2].min(axis=0), bounds[:, 2:].max(axis=0)
    step = float((hi - lo).max()) / SHAPE_GRID
    xs = np.arange(lo[0] + step / 2, hi[0], step)
    ys = np.arange(lo[1] + step / 2, hi[1], step)
    x, y = np.meshgrid(xs, ys)
    inside = object_sdf(parts, x, y) < 0
    return np.stack([x[inside], y[inside]], axis=1), step * step


def layout_object(rng: np.random.Generator, parts: list[Part]) -> Layout:
    """Pose, size and place an object so that its visible area is a draw from :data:`TARGET_AREA`.

    Mostly upright (a quarter at any angle). :data:`CUT_SHARE` of the objects cross the border at
    one end of their longer axis, with a :data:`CUT_RANGE` fraction of their area outside the image
    (and, for a close-up too large for the frame, the far end cut as well); the rest lie inside
    ``[-MAX_EXTENT, MAX_EXTENT]²``, shrunk where they would not fit otherwise.
    """
    upright = rng.uniform() < 0.75
    angle = rng.uniform(-0.45, 0.45) if upright else rng.uniform(-np.pi, np.pi)
    flip = -1.0 if rng.uniform() < 0.5 else 1.0
    target = rng.uniform(*TARGET_AREA)
    cut = rng.uniform() < CUT_SHARE
    low_side, cut_fraction, place = rng.uniform() < 0.5, rng.uniform(*CUT_RANGE), rng.uniform(0, 1, 2)

    points, cell_area = _inside_points(parts)
    c, s = math.cos(angle), math.sin(angle)
    px, py = flip * points[:, 0], points[:, 1]
    rotated = np.stack([c * px - s * py, s * px + c * py], axis=1)
    cell = math.sqrt(cell_area)        # a thin part may reach up to a cell beyond the cell centres inside it
    lo, hi = rotated.min(axis=0) - cell, rotated.max(axis=0) + cell
    size = hi - lo
    centre = np.zeros(2)
    if not cut:
        scale = min(math.sqrt(4 * target / (len(points) * cell_area)), 2 * MAX_EXTENT / float(size.max()))
        centre = -MAX_EXTENT - scale * lo + place * (2 * MAX_EXTENT - scale * size)
    else:
        axis = int(size[1] > size[0])
        other = 1 - axis
        depth = rotated[:, axis] if low_side else -rotated[:, axis]      # measured inward from the cut border
        line = float(np.quantile(depth, cut_fraction))
        max_scale = 2 * MAX_EXTENT / float(size[other])
        scale = min(math.sqrt(4 * target / ((1 - cut_fraction) * len(points) * cell_area)), max_scale)
        for _ in range(4):             # a close-up may leave the frame at the far end too: shrinks the visible part
            visible = np.count_nonzero((depth > line) & (depth < line + 2 / scale)) * cell_area
            scale = min(math.sqrt(4 * target / max(visible, cell_area)), max_scale)
        centre[axis] = -1 - scale * line if low_side else 1 + scale * line
        centre[other] = -MAX_EXTENT - scale * lo[other] + place[other] * (2 * MAX_EXTENT - scale * size[other])
    return Layout((float(centre[0]), float(centre[1])), scale, angle, flip,
                  (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), cut)


# ----------------------------------------------------------------------------------------------
# Noise and colours.

class Grid(NamedTuple):
    """Pixel centres of an R×R image: u [1, R] (x right), v [R, 1] (y down), in [-1, 1]; pixel size."""
    u: np.ndarray
    v: np.ndarray
    pixel: float

    @staticmethod
    def of(resolution: int) -> 'Grid':
        coords = ((np.arange(resolution, dtype=np.float32) + 0.5) / resolution * 2 - 1)
        return Grid(coords[None, :], coords[:, None], 2.0 / resolution)

    def box(self, us, vs) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1): the pixels whose centres may lie in the box spanned by points (us, vs)."""
        r = self.u.shape[1]

        def span(values) -> tuple[int, int]:
            first = math.floor((min(values) + 1) / self.pixel - 0.5)
            last = math.ceil((max(values) + 1) / self.pixel - 0.5) + 1
            return min(max(first, 0), r), min(max(last, 0), r)
        return span(vs) + span(us)


@functools.lru_cache(maxsize=64)
def _interpolation(count: int, points: int, pixel_centres: bool) -> tuple[np.ndarray, np.ndarray]:
    """Smoothstep interpolation from G lattice points spanning [-1, 1] to ``count`` pixel centres, or to
    ``count`` lattice points (ends included): (lower lattice index [count] intp, weight of the upper one
    [count] float32)."""
    pos = ((np.arange(count) + 0.5) / count if pixel_centres else np.arange(count) / (count - 1)) * (points - 1)
    lower = np.minimum(np.floor(pos).astype(np.intp), points - 2)
    f = pos - lower
    return lower, (f * f * (3 - 2 * f)).astype(np.float32)


def _resample(lattice: np.ndarray, count: int, pixel_centres: bool) -> np.ndarray:
    """[G, G] lattice values → [count, count], interpolated by gathers one axis at a time (no matrix
    products: small BLAS calls spin their threads against each other on a busy machine)."""
    lower, w = _interpolation(count, lattice.shape[0], pixel_centres)
    rows = lattice[lower] + (lattice[lower + 1] - lattice[lower]) * w[:, None]           # [count, G]
    return rows[:, lower] + (rows[:, lower + 1] - rows[:, lower]) * w[None, :]


def fractal_noise(rng: np.random.Generator, resolution: int, octaves: int = 5, base: int = 2,
                  persistence: float = 0.55) -> np.ndarray:
    """[R, R] float32 in [0, 1] (min–max normalised): octaves of smoothstep value noise on lattices of
    base·2^k + 1 points, summed on the finest lattice, then interpolated to the pixels. The lattice
    values are drawn whatever the resolution."""
    finest = base * 2 ** (octaves - 1) + 1
    total = np.zeros((finest, finest), np.float32)
    for k in range(octaves):
        points = base * 2 ** k + 1
        lattice = rng.uniform(-1, 1, (points, points)).astype(np.float32) * np.float32(persistence ** k)
        total += lattice if points == finest else _resample(lattice, finest, pixel_centres=False)
    field = _resample(total, resolution, pixel_centres=True)
    return (field - field.min()) / max(float(field.max() - field.min()), 1e-6)


def _curve(rng: np.random.Generator, u: np.ndarray, knots: int) -> np.ndarray:
    """[1, R] piecewise-linear random curve in [0, 1] over x (a skyline)."""
    return np.interp(u, np.linspace(-1.05, 1.05, knots), rng.uniform(0, 1, knots)).astype(np.float32)


def pick_colour(rng: np.random.Generator, choices=None) -> tuple[int, np.ndarray]:
    """(palette index, [3, 1, 1] float32 RGB in [0, 1]): a palette colour, brightness and hue jittered."""
    options = range(len(PALETTE)) if choices is None else choices
    index = options[int(rng.integers(len(options)))]
    colour = PALETTE[index] * rng.uniform(0.82, 1.15) + rng.normal(0, 0.03, 3)
    return index, np.clip(colour, 0, 1).astype(np.float32)[:, None, None]


def _coverage(distance: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance in the units of ``pixel`` (0.5 on the edge)."""
    return np.clip(0.5 - distance * (1 / pixel), 0, 1)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """a + (b − a)·t: [3, 1, 1] or [3, R, R] colours, t [R, R]."""
    return a + (b - a) * t


# ----------------------------------------------------------------------------------------------
# Object textures. Each draws its parameters and returns paint(x, y, rows, cols) → [3, h, w] float32,
# the texture at object coordinates x, y [h, w] of the image pixels [rows, cols], so that the object,
# and a distractor wearing its texture, show the same material.

Texture = Callable[[np.ndarray, np.ndarray, slice, slice], np.ndarray]


def _voronoi(rng: np.random.Generator, c0: np.ndarray, c1: np.ndarray, pixel: float, grid: Grid) -> Texture:
    """Cells of random shades between c0 and c1 with darkened borders (stones, giraffe, tiles)."""
    k = int(rng.integers(30, 80))
    sx, sy = rng.uniform(-1.5, 1.5, k).astype(np.float32), rng.uniform(-1.1, 1.1, k).astype(np.float32)
    shades, width, dark = rng.uniform(0, 1, k).astype(np.float32), rng.uniform(0.02, 0.06), rng.uniform(0.3, 0.8)

    def paint(x, y, rows, cols):
        d2 = (x[None] - sx[:, None, None]) ** 2 + (y[None] - sy[:, None, None]) ** 2
        nearest = d2.argmin(axis=0)
        first = np.take_along_axis(d2, nearest[None], 0)[0]
        np.put_along_axis(d2, nearest[None], np.inf, 0)
        gap = np.sqrt(d2.min(axis=0)) - np.sqrt(first)         # 0 on the border of two cells
        return _mix(c0, c1, shades[nearest]) * (1 - dark * np.clip(1 - gap * (1 / width), 0, 1))
    return paint


def _spots(rng: np.random.Generator, c0: np.ndarray, c1: np.ndarray, pixel: float, grid: Grid) -> Texture:
    """Discs of c1 scattered over c0, or (a third of the time) rings: rosettes."""
    m = int(rng.integers(15, 45))
    sx, sy = rng.uniform(-1.5, 1.5, m).astype(np.float32), rng.uniform(-1.1, 1.1, m).astype(np.float32)
    radii = np.exp(rng.uniform(math.log(0.04), math.log(0.14), m)).astype(np.float32)[:, None, None]
    rings = rng.uniform() < 1 / 3

    def paint(x, y, rows, cols):
        d = np.sqrt((x[None] - sx[:, None, None]) ** 2 + (y[None] - sy[:, None, None]) ** 2) - radii
        d = np.abs(d + 0.35 * radii) - 0.35 * radii if rings else d
        return _mix(c0, c1, _coverage(d.min(axis=0), pixel))
    return paint


def _grain(rng: np.random.Generator, c0: np.ndarray, c1: np.ndarray, pixel: float, grid: Grid) -> Texture:
    """Wood grain: oriented stripes warped by fractal noise, with a fine streak on top."""
    angle = rng.uniform(-0.4, 0.4) + (np.pi / 2 if rng.uniform() < 0.3 else 0)
    frequency, warp_amount, sharpness = rng.uniform(4, 12), rng.uniform(0.1, 0.4), rng.uniform(1, 3)
    warp = fractal_noise(rng, grid.u.shape[1], octaves=3)

    def paint(x, y, rows, cols):
        phase = 2 * np.pi * frequency * (y * math.cos(angle) - x * math.sin(angle) + warp_amount * warp[rows, cols])
        t = (0.5 + 0.5 * np.sin(phase)) ** sharpness
        return _mix(c0, c1, t) * (1 + 0.06 * np.sin(3.7 * phase + 1.3))
    return paint


def _smooth(rng: np.random.Generator, c0: np.ndarray, c1: np.ndarray, pixel: float, grid: Grid) -> Texture:
    """A gentle gradient between c0 and c1 along a random direction (enamel, plastic, plumage)."""
    c, s = math.cos(angle := rng.uniform(0, 2 * np.pi)), math.sin(angle)

    def paint(x, y, rows, cols):
        return _mix(c0, c1, np.clip(0.5 + 0.35 * (x * c + y * s), 0, 1))
    return paint


TEXTURES: dict[str, Callable[..., Texture]] = {'voronoi': _voronoi, 'spots': _spots, 'grain': _grain, 'smooth': _smooth}


# ----------------------------------------------------------------------------------------------
# The object layer, computed on the object's pixel window only (elsewhere its coverage is 0).

def _unit(vector: tuple[float, float, float]) -> tuple[float, float, float]:
    """The vector scaled to length 1, as Python floats (numpy scalars would turn float32 pixels to float64)."""
    length = math.sqrt(sum(c * c for c in vector))
    return tuple(float(c) / length for c in vector)


def object_coordinates(layout: Layout, grid: Grid, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Object-unit coordinates (x, y), each [h, w], of the image pixels [rows, cols]."""
    c, s = math.cos(layout.angle), math.sin(layout.angle)
    du = (grid.u[:, cols] - layout.centre[0]) * (1 / layout.scale)
    dv = (grid.v[rows] - layout.centre[1]) * (1 / layout.scale)
    return layout.flip * (c * du + s * dv), -s * du + c * dv


def _pixel_box(layout: Layout, grid: Grid, bounds: tuple[float, ...], margin: float) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the pixels that may lie in an object-unit box grown by ``margin``."""
    c, s = math.cos(layout.angle), math.sin(layout.angle)
    us, vs = [], []
    for bx in (bounds[0] - margin, bounds[2] + margin):
        for by in (bounds[1] - margin, bounds[3] + margin):
            fx = layout.flip * bx
            us.append(layout.centre[0] + layout.scale * (c * fx - s * by))
            vs.append(layout.centre[1] + layout.scale * (s * fx + c * by))
    return grid.box(us, vs)


def object_layer(rng: np.random.Generator, parts: list[Part], thickness: float, layout: Layout, grid: Grid,
                 colours: tuple[np.ndarray, np.ndarray]) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray,
                                                                   Callable[[slice, slice], np.ndarray]]:
    """The object on its pixel window [rows, cols] (h × w): ((rows, cols), fg [3, h, w] float32 in about
    [0, 1], signed distance [h, w] in image units, texture(rows, cols) → [3, h', w'] its unshaded
    texture anywhere, for distractors).

    The distance is right in sign everywhere (the mask is where it is negative) and capped at
    2 pixels outside, where no value is used. Texture by kind, the parts' paint in order (each with its own coverage),
    then relief: a height rising as a quarter circle over ``thickness`` from the outline, lit by a
    random light, with a specular highlight.
    """
    pixel = grid.pixel / layout.scale                                # one pixel in object units
    margin = 2 * pixel
    boxes = [_pixel_box(layout, grid, part_bounds(p), margin) for p in parts]
    outline = [box for box, p in zip(boxes, parts) if p.silhouette]
    row0, row1 = min(b[0] for b in outline), max(b[1] for b in outline)
    col0, col1 = min(b[2] for b in outline), max(b[3] for b in outline)
    rows, cols = slice(row0, row1), slice(col0, col1)
    x, y = object_coordinates(layout, grid, rows, cols)

    def local(box: tuple[int, int, int, int]) -> tuple[slice, slice]:
        """A part's pixel box as slices of the object's window."""
        return (slice(min(max(box[0] - row0, 0), row1 - row0), min(max(box[1] - row0, 0), row1 - row0)),
                slice(min(max(box[2] - col0, 0), col1 - col0), min(max(box[3] - col0, 0), col1 - col0)))

    d = np.full(x.shape, margin, np.float32)
    for box, part in zip(boxes, parts):
        if part.silhouette:
            lr, lc = local(box)
            d[lr, lc] = np.minimum(d[lr, lc], part_sdf(part, x[lr, lc], y[lr, lc]))

    kind = list(TEXTURES)[int(rng.integers(len(TEXTURES)))]
    texture = TEXTURES[kind](rng, *colours, pixel, grid)
    fg = np.empty((3,) + x.shape, np.float32)
    fg[:] = texture(x, y, rows, cols)
    paints = [pick_colour(rng, DARK_COLOURS)[1], pick_colour(rng)[1], pick_colour(rng, LIGHT_COLOURS)[1]]
    for box, part in zip(boxes, parts):
        if part.paint is not None:
            lr, lc = local(box)
            cover = _coverage(part_sdf(part, x[lr, lc], y[lr, lc]), pixel)
            fg[:, lr, lc] = _mix(fg[:, lr, lc], paints[part.paint], cover)

    # Relief: height = sqrt(1 − (1 − depth)²)·thickness, depth = inside distance / thickness in [0, 1].
    depth = np.clip(-d * (1 / thickness), 0, 1)
    height = np.sqrt(1 - (1 - depth) ** 2) * (thickness * layout.scale)          # image units
    gy, gx = np.gradient(height, grid.pixel) if min(height.shape) > 1 else (0 * height, 0 * height)
    light = _unit((rng.uniform(-0.7, 0.7), rng.uniform(-0.9, -0.2), rng.uniform(0.5, 1.0)))
    half = _unit((light[0], light[1], light[2] + 1))             # halfway between the light and the eye
    norm = 1 / np.sqrt(gx * gx + gy * gy + 1)
    diffuse = np.clip((light[2] - gx * light[0] - gy * light[1]) * norm, 0, 1)
    specular = np.clip((half[2] - gx * half[0] - gy * half[1]) * norm, 0, 1) ** rng.uniform(8, 40)
    ambient = rng.uniform(0.35, 0.6)
    shine = rng.uniform(0.4, 0.8) if kind == 'smooth' else rng.uniform(0.0, 0.35)
    fg = fg * (ambient + (1 - ambient) * diffuse) + shine * specular

    def texture_at(rows: slice, cols: slice) -> np.ndarray:
        return texture(*object_coordinates(layout, grid, rows, cols), rows, cols)
    return (rows, cols), fg.astype(np.float32), d * layout.scale, texture_at


# ----------------------------------------------------------------------------------------------
# The background: a scene, clutter, and the object's shadow. Image coordinates.

def _scene(rng: np.random.Generator, grid: Grid, colours: list[np.ndarray]) -> np.ndarray:
    """[3, R, R] float32: a horizon (sky, 1–3 bands of hills, textured ground) or a field of fractal noise."""
    u, v, r = grid.u, grid.v, grid.u.shape[1]
    ground, detail = fractal_noise(rng, r), fractal_noise(rng, r, octaves=3)
    if rng.uniform() < 0.6:
        horizon = rng.uniform(-0.75, 0.35) + rng.uniform(-0.2, 0.2) * u          # [1, R]
        _, top = pick_colour(rng, LIGHT_COLOURS + (5,))
        _, low = pick_colour(rng, LIGHT_COLOURS)
        bg = _mix(top, low, np.clip((v + 1) / np.maximum(horizon + 1, 0.05), 0, 1))
        for k in range(int(rng.integers(1, 4))):
            skyline = horizon - rng.uniform(0.08, 0.45) / (k + 1) * (0.3 + 0.7 * _curve(rng, u, int(rng.integers(4, 16))))
            bg = _mix(bg, colours[k % len(colours)] * (0.8 + 0.4 * detail), _coverage(skyline - v, grid.pixel))
        g0, g1 = colours[-1], pick_colour(rng)[1]
        bg = _mix(bg, _mix(g0, g1, ground), _coverage(horizon - v, grid.pixel))
    else:
        bg = _mix(colours[0], colours[1], np.clip((ground - rng.uniform(0.3, 0.7)) * rng.uniform(2, 8) + 0.5, 0, 1))
        blotch = np.clip((fractal_noise(rng, r, octaves=4) - 0.6) * 6, 0, 1)
        bg = _mix(bg, colours[-1], blotch)
    return (bg * (0.85 + 0.3 * detail)).astype(np.float32)


def _distractors(rng: np.random.Generator, grid: Grid, bg: np.ndarray, object_colours: list[np.ndarray],
                 object_texture: Callable[[slice, slice], np.ndarray]) -> np.ndarray:
    """Paint 3–10 small shapes (stones, balls, sticks, pebble clusters) into bg [3, R, R]; some take the
    object's colours, some its texture."""
    for _ in range(int(rng.integers(3, 11))):
        kind, x, y = rng.integers(3), rng.uniform(-1.05, 1.05), rng.uniform(-1.05, 1.05)
        size = rng.uniform(0.03, 0.12)
        if kind == 0:
            parts = [Part('ellipse', (x, y, size * rng.uniform(1, 2), size, rng.uniform(0, np.pi)))]
        elif kind == 1:
            angle, length = rng.uniform(0, np.pi), rng.uniform(0.1, 0.5)
            parts = [Part('capsule', (x, y, x + length * math.cos(angle), y + length * math.sin(angle), size / 4))]
        else:
            parts = [Part('capsule', (x + dx, y + dy, x + dx, y + dy, size * 0.6))
                     for dx, dy in rng.uniform(-1.2 * size, 1.2 * size, (3, 2)).tolist()]
        bounds = np.array([part_bounds(p) for p in parts])
        edge = grid.pixel                         # the anti-aliased edge reaches half a pixel beyond
        r0, r1, c0, c1 = grid.box((bounds[:, 0].min() - edge, bounds[:, 2].max() + edge),
                                  (bounds[:, 1].min() - edge, bounds[:, 3].max() + edge))
        rows, cols = slice(r0, r1), slice(c0, c1)
        d = object_sdf(parts, grid.u[:, cols], grid.v[rows])
        fill = rng.uniform()
        colour = (object_texture(rows, cols) if fill < 0.3 else object_colours[int(rng.integers(2))] if fill < 0.6
                  else pick_colour(rng)[1])
        shade = 0.65 + 0.35 * np.sqrt(np.clip(-d * (1 / size), 0, 1))
        bg[:, rows, cols] = _mix(bg[:, rows, cols], colour * shade, _coverage(d, grid.pixel))
    return bg


def _shadow(rng: np.random.Generator, grid: Grid, layout: Layout, bg: np.ndarray) -> np.ndarray:
    """Darken bg [3, R, R] in a soft ellipse under the object's lowest point (mostly upright objects)."""
    if rng.uniform() > (0.85 if abs(layout.angle) < 0.6 else 0.3):
        return bg
    xmin, _, xmax, ymax = (layout.scale * e for e in layout.extent)
    ax = (xmax - xmin) * rng.uniform(0.45, 0.65)
    ay = max(ax * rng.uniform(0.1, 0.25), 0.02)
    cx = layout.centre[0] + 0.5 * (xmin + xmax) + rng.uniform(-0.2, 0.2) * ax
    cy = layout.centre[1] + ymax - 0.2 * ay
    soft, strength = ay * rng.uniform(0.6, 1.4), rng.uniform(0.25, 0.6)
    r0, r1, c0, c1 = grid.box((cx - ax - soft, cx + ax + soft), (cy - ay - soft, cy + ay + soft))
    rows, cols = slice(r0, r1), slice(c0, c1)
    d = part_sdf(Part('ellipse', (cx, cy, ax, ay, 0.0)), grid.u[:, cols], grid.v[rows])
    bg[:, rows, cols] *= 1 - strength * np.clip(0.5 - d * (1 / soft), 0, 1)
    return bg


# ----------------------------------------------------------------------------------------------
# Samples.

def draw_object(rng: np.random.Generator) -> tuple[str, list[Part], float, Layout]:
    """The first draws of a sample: (kind, parts, thickness, layout). Cheap: no pixels."""
    kind = list(OBJECTS)[int(rng.integers(len(OBJECTS)))]
    parts, thickness = OBJECTS[kind](rng)
    return kind, parts, thickness, layout_object(rng, parts)


def sample(seed: int, split: str, index: int, resolution: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of a split: (img uint8 [3, R, R], mask uint8 [R, R] in {0, 1}).

    A pure function of (seed, split, index); the scene drawn does not depend on R either, only its
    rendering (the sensor noise, drawn last, has one value per pixel).
    """
    if split not in SPLIT_STREAMS:
        raise ValueError(f'unknown split {split!r}; expected one of {sorted(SPLIT_STREAMS)}')
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], index])
    grid = Grid.of(resolution)
    kind, parts, thickness, layout = draw_object(rng)

    # Colours: the object takes two palette colours, the background three, sometimes the same ones.
    (i0, c0), (i1, c1) = pick_colour(rng), pick_colour(rng)
    scene_colours = [pick_colour(rng, (i0, i1) if rng.uniform() < 0.4 else None)[1] for _ in range(3)]
    (rows, cols), fg, distance, object_texture = object_layer(rng, parts, thickness, layout, grid, (c0, c1))
    bg = _scene(rng, grid, scene_colours)
    bg = _distractors(rng, grid, bg, [c0, c1], object_texture)
    img = _shadow(rng, grid, layout, bg)
    img[:, rows, cols] += (fg - img[:, rows, cols]) * _coverage(distance, grid.pixel)
    mask = np.zeros((resolution, resolution), np.uint8)
    mask[rows, cols] = distance < 0

    angle, gain = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.15)      # uneven light over the whole frame
    img *= 1 + gain * (math.cos(angle) * grid.u + math.sin(angle) * grid.v)
    img += rng.standard_normal(img.shape, np.float32) * np.float32(rng.uniform(0.005, 0.03))
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), mask


def generate(split: str, num_images: int, seed: int = 0, resolution: int = 128,
             start: int = 0) -> dict[str, np.ndarray]:
    """Samples ``start .. start+num_images-1``: dict(img uint8 [N, 3, R, R], mask uint8 [N, R, R] in {0, 1})."""
    pairs = [sample(seed, split, start + i, resolution) for i in range(num_images)]
    return dict(img=np.stack([p[0] for p in pairs]), mask=np.stack([p[1] for p in pairs]))


# ----------------------------------------------------------------------------------------------
# Writing the DRC cars layout.

def token(split: str, index: int) -> str:
    """File stem of sample ``index`` of a split, e.g. 'train000042'."""
    return f'{split}{index:06d}'


def write_samples(root: str, split: str, start: int, stop: int, resolution: int, seed: int) -> int:
    """Render samples ``start .. stop-1`` of a split and write their PNGs under ``root``; returns the count."""
    for i in range(start, stop):
        img, mask = sample(seed, split, i, resolution)
        image_path, mask_path = mrcnn_sample_paths(root, 'cars', split, token(split, i))
        Image.fromarray(img.transpose(1, 2, 0)).save(image_path, compress_level=1)
        Image.fromarray(mask * np.uint8(255)).save(mask_path, compress_level=1)
    return stop - start


def _write_chunk(job: tuple) -> int:
    return write_samples(*job)


def write_set(out: str, num_train: int, num_test: int, resolution: int = 128, seed: int = 0, workers: int = 1,
              log: Callable[[str], None] = print) -> str:
    """Write the set as ``out``/cars/ (see the module docstring) with ``workers`` processes; returns that folder.

    Refuses an existing non-empty ``out``/cars. Logs one line per 500 images and a final one. The
    files do not depend on ``workers``: each sample is a function of (seed, split, index).
    """
    root = os.path.join(out, 'cars')
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise dnnlib.UserError(f'{root} already exists and is not empty; choose another --out (it is never overwritten)')
    for split in ('train', 'test'):
        os.makedirs(os.path.dirname(mrcnn_sample_paths(root, 'cars', split, '')[0]), exist_ok=True)
    options = dict(generator='experiments/heldout_data.py', train=num_train, test=num_test, resolution=resolution, seed=seed)
    dnnlib.write_bytes_atomic(os.path.join(root, 'heldout_options.json'), dnnlib.json_text(options, indent=2).encode('utf-8'))

    chunk = 100                         # divides 500, so the progress lines fall on multiples of 500
    jobs = [(root, split, begin, min(begin + chunk, count), resolution, seed)
            for split, count in (('train', num_train), ('test', num_test)) for begin in range(0, count, chunk)]
    total, done, begin = num_train + num_test, 0, time.time()
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context('spawn').Pool(workers))
            counts = pool.imap(_write_chunk, jobs)
        else:
            counts = map(_write_chunk, jobs)
        for count in counts:
            done += count
            if done // 500 > (done - count) // 500 or done == total:
                log(f'{done}/{total} images ({time.time() - begin:.1f} s)')

    for split, count in (('train', num_train), ('test', num_test)):   # last: they mark a complete set
        buffer = io.BytesIO()
        np.save(buffer, np.array([token(split, i) for i in range(count)], dtype=str), allow_pickle=False)
        dnnlib.write_bytes_atomic(mrcnn_split_file(root, 'cars', split), buffer.getvalue())
    log(f'wrote {root}: {num_train} train + {num_test} test images at {resolution} px, seed {seed}, '
        f'in {time.time() - begin:.1f} s')
    return root


@click.command()
@click.option('--out', required=True, metavar='DIR',
              help='Write the set to DIR/cars (read with --data=car --data-root=DIR)')
@click.option('--train', 'num_train', default=4000, show_default=True, type=click.IntRange(1, dnnlib.MAX_COUNT), help='Train images')
@click.option('--test', 'num_test', default=500, show_default=True, type=click.IntRange(1, dnnlib.MAX_COUNT),
              help='Test images (with masks)')
@click.option('--resolution', default=128, show_default=True, type=click.IntRange(8, dnnlib.MAX_SIDE), help='Image size R')
@click.option('--seed', default=0, show_default=True, type=dnnlib.SEED, help='Random seed of the set')
@click.option('--workers', default=1, show_default=True, type=click.IntRange(1, dnnlib.MAX_WORKERS),
              help='Processes that render (the files are the same for any number)')
@dnnlib.report_user_errors
def main(out: str, num_train: int, num_test: int, resolution: int, seed: int, workers: int) -> None:
    """Write the held-out procedural set in the DRC cars layout."""
    write_set(out, num_train, num_test, resolution, seed, workers)


if __name__ == '__main__':
    main()
