"""A procedural foreground/background dataset with exact masks, so every stage runs without a download.

Each sample is a foreground object (its shape gives the mask) pasted over a background scene. The
two are drawn independently, which is the assumption ILSGAN builds on (METHOD.md §1): a GAN that
learns this data must explain it as a layer over a layer. Objects vary in shape (ellipses,
rounded rectangles, polygons, stars, blobs), size (15–60 % of the image), texture and colour;
backgrounds are textured scenes (a sky gradient over a textured ground, or a textured field) whose
colours are drawn from the same distribution as the objects', so colour alone does not separate
object from background.

Every sample is a function of ``(seed, split, index)`` only, so a set is the same whatever its
size or chunking, and the train and test splits are disjoint streams. Images are rendered at
:data:`NATIVE_RESOLUTION` and area-downsampled for smaller resolutions. Generated sets are cached
as ``.npz`` files keyed by version, seed, split, size and resolution.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from typing import Callable

import numpy as np

import dnnlib

SYNTHETIC_VERSION = 1           # bump whenever the generator's output changes: it keys the cache
NATIVE_RESOLUTION = 128
DEFAULT_NUM_IMAGES = {'train': 4000, 'test': 500}
SPLIT_STREAMS = {'train': 0, 'test': 1}   # separate random streams keep the splits disjoint

SHAPES = ('ellipse', 'rounded_rect', 'polygon', 'star', 'blob')
PATTERNS = ('flat', 'gradient', 'stripes', 'checker', 'rings', 'noise')
AREA_RANGE = (0.18, 0.55)       # target object area; inside the promised 15–60 % with a margin
MAX_EXTENT = 0.97               # half-width of the object's bounding box, in [-1, 1] image units
NOISE_GRID = 6                  # low-frequency value noise: a 6×6 grid of random values, interpolated
GRAIN_GRID = 48                 # fine grain: a 48×48 grid per image width, interpolated


# ----------------------------------------------------------------------------------------------
# Per-sample parameters: small draws from one generator per sample.

def _sample_params(rng: np.random.Generator) -> dict[str, np.ndarray | float | int]:
    """All random choices of one sample (scalars and small grids), drawn from its own generator."""
    p: dict[str, np.ndarray | float | int] = {}
    # Foreground shape.
    p['shape'] = rng.integers(len(SHAPES))
    p['sides'] = rng.integers(3, 7)                    # polygon: triangle .. hexagon
    p['points'] = rng.integers(4, 8)                   # star: 4..7 points
    p['inner'] = rng.uniform(0.45, 0.7)                # star: inner/outer radius
    p['power'] = rng.uniform(2.5, 8.0)                 # rounded rectangle: superellipse exponent
    p['harmonics'] = rng.uniform(0.0, 0.14, 3)         # blob: amplitudes of cos(2θ), cos(3θ), cos(4θ)
    p['harmonic_phases'] = rng.uniform(0, 2 * np.pi, 3)
    p['rotation'] = rng.uniform(0, 2 * np.pi)
    p['aspect'] = np.exp(rng.uniform(-0.45, 0.45))
    p['area'] = rng.uniform(*AREA_RANGE)
    p['centre'] = rng.uniform(-1, 1, 2)                # position inside the room left by the extent
    p['shading'] = rng.uniform(0.0, 0.45)              # darkening toward the rim: a rounded look
    # Layer textures (foreground, background ground, background sky).
    for layer in ('fg', 'ground', 'sky'):
        p[f'{layer}_pattern'] = rng.integers(len(PATTERNS))
        p[f'{layer}_colours'] = rng.uniform(0, 1, (2, 3))
        p[f'{layer}_freq'] = rng.uniform(2.0, 9.0)
        p[f'{layer}_angle'] = rng.uniform(0, 2 * np.pi)
        p[f'{layer}_phase'] = rng.uniform(0, 2 * np.pi)
        p[f'{layer}_noise'] = rng.uniform(0, 1, (NOISE_GRID, NOISE_GRID))
        p[f'{layer}_grain'] = rng.uniform(0, 1, 2)          # window of the shared grain tile
        p[f'{layer}_grain_amount'] = rng.uniform(0.0, 0.06)
    p['fg_pattern'] = rng.integers(1, len(PATTERNS))   # objects are never flat: they carry a texture
    p['sky_pattern'] = rng.choice([PATTERNS.index(k) for k in ('flat', 'gradient', 'noise')])
    # Background scene: with a horizon (sky gradient over a textured ground) or one textured field.
    p['horizon'] = rng.uniform() < 0.65
    p['horizon_height'] = rng.uniform(-0.6, 0.5)
    p['horizon_slope'] = rng.uniform(-0.3, 0.3)
    p['light'] = rng.uniform(0.75, 1.15)
    p['light_noise'] = rng.uniform(0, 1, (NOISE_GRID, NOISE_GRID))
    return p


def _stack(params: list[dict]) -> dict[str, np.ndarray]:
    """Per-sample parameters → one [n, ...] array per key; floats as float32 (rendering precision)."""
    stacked = {key: np.stack([np.asarray(p[key]) for p in params]) for key in params[0]}
    return {key: value.astype(np.float32) if value.dtype == np.float64 else value for key, value in stacked.items()}


def _subset(p: dict[str, np.ndarray], sel: np.ndarray) -> dict[str, np.ndarray]:
    return {key: value[sel] for key, value in p.items()}


def _by_kind(kind: np.ndarray, functions: tuple[Callable, ...], p: dict[str, np.ndarray],
             shape: tuple[int, ...], *fields: np.ndarray) -> np.ndarray:
    """[n, ...] float32: ``functions[kind[i]]`` evaluated for every sample i.

    Fields with a leading dimension of n are per-sample and get subset with the parameters;
    fields with a leading dimension of 1 (pixel coordinates) are shared.
    """
    out = np.empty(shape, np.float32)
    for k, fn in enumerate(functions):
        sel = kind == k
        if sel.any():
            out[sel] = fn(_subset(p, sel), *(f[sel] if f.shape[0] == len(kind) else f for f in fields))
    return out


def _wrap(x: np.ndarray, period) -> np.ndarray:
    """x mod period in [0, period); floor-based because np.mod is several times slower on float32."""
    return x - np.floor(x / period) * period


def _col(x: np.ndarray, ndim: int) -> np.ndarray:
    """[n] → [n, 1, ..., 1] so that it broadcasts against [n, ...] fields of ``ndim`` dims."""
    return np.asarray(x, np.float32).reshape((-1,) + (1,) * (ndim - 1))


# ----------------------------------------------------------------------------------------------
# Shapes: each is a radial function r(θ) in the object's own frame; inside ⇔ ρ < r(θ).

def _r_ellipse(p, theta):
    return np.ones_like(theta)


def _r_rounded_rect(p, theta):
    n = _col(p['power'], theta.ndim)
    return (np.abs(np.cos(theta)) ** n + np.abs(np.sin(theta)) ** n) ** (-1 / n)


def _r_polygon(p, theta):
    n = _col(p['sides'], theta.ndim)
    sector = 2 * np.pi / n
    return np.cos(np.pi / n) / np.cos(_wrap(theta, sector) - np.pi / n)


def _r_star(p, theta):
    n = _col(p['points'], theta.ndim)
    q = _col(p['inner'], theta.ndim)
    tooth = np.abs(2 * _wrap(theta * n / (2 * np.pi), 1.0) - 1)   # 1 at the tips, 0 between them
    return q + (1 - q) * tooth


def _r_blob(p, theta):
    r = np.ones_like(theta)
    for j, k in enumerate((2, 3, 4)):
        r = r + _col(p['harmonics'][:, j], theta.ndim) * np.cos(k * theta + _col(p['harmonic_phases'][:, j], theta.ndim))
    return r


RADIAL = (_r_ellipse, _r_rounded_rect, _r_polygon, _r_star, _r_blob)


def _object_frame(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scale and centre of each object so that its area is ``p['area']`` and it fits the image.

    Area of {ρ < r(θ)} is ½∮r² dθ in the object frame; the anisotropy (√a, 1/√a) preserves area,
    and the image [-1, 1]² has area 4, so the scale is s = √(4·area / A). The object is shrunk if
    its bounding box would leave the image, then placed at random inside the remaining room.
    """
    n = len(p['shape'])
    theta = np.broadcast_to(np.linspace(0, 2 * np.pi, 720, endpoint=False, dtype=np.float32), (n, 720))
    r = _by_kind(p['shape'], RADIAL, p, theta.shape, np.ascontiguousarray(theta))
    unit_area = 0.5 * np.mean(r ** 2, axis=1) * 2 * np.pi
    ax, ay = np.sqrt(p['aspect'])[:, None], 1 / np.sqrt(p['aspect'])[:, None]
    cos, sin = np.cos(p['rotation'])[:, None], np.sin(p['rotation'])[:, None]
    x_local, y_local = ax * r * np.cos(theta), ay * r * np.sin(theta)
    extent_x = np.max(np.abs(cos * x_local - sin * y_local), axis=1)
    extent_y = np.max(np.abs(sin * x_local + cos * y_local), axis=1)
    scale = np.sqrt(4 * p['area'] / unit_area)
    scale = np.minimum(scale, MAX_EXTENT / np.maximum(extent_x, extent_y))
    room_x, room_y = MAX_EXTENT - scale * extent_x, MAX_EXTENT - scale * extent_y
    return dict(scale=scale, cx=p['centre'][:, 0] * room_x, cy=p['centre'][:, 1] * room_y)


# ----------------------------------------------------------------------------------------------
# Textures: a pattern value t in [0, 1] per pixel blends two colours.

def _smooth_field(grids: np.ndarray, resolution: int) -> np.ndarray:
    """[n, G, G] → [n, R, R] bilinear upsampling of grids spanning the image, one axis at a time.

    Gathers rather than batched matrix products (small BLAS calls are slow when threads contend);
    the transposes keep every step contiguous, which numpy's broadcasting needs to be fast.
    """
    grid = grids.shape[-1]
    pos = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution * (grid - 1)
    lo = np.minimum(np.floor(pos).astype(np.intp), grid - 2)
    frac = (pos - lo).astype(np.float32)[:, None]
    g = grids.astype(np.float32)
    rows = g[:, lo, :] * (1 - frac) + g[:, lo + 1, :] * frac                           # [n, R(y), G(x)]
    rows = np.ascontiguousarray(rows.transpose(0, 2, 1))                               # [n, G(x), R(y)]
    field = rows[:, lo, :] * (1 - frac) + rows[:, lo + 1, :] * frac                    # [n, R(x), R(y)]
    return np.ascontiguousarray(field.transpose(0, 2, 1))


@functools.lru_cache(maxsize=4)
def _grain_tile(resolution: int) -> np.ndarray:
    """[2R, 2R] fixed fine-grained noise (unit variance-ish); samples take shifted windows of it.

    One shared tile, windowed at a per-sample offset, costs a copy instead of a per-sample
    upsampling, and each sample's grain is still a function of its own generator (the offset).
    """
    grid = np.random.default_rng(2024).normal(0, 1, (1, 2 * GRAIN_GRID, 2 * GRAIN_GRID))
    return _smooth_field(grid, 2 * resolution)[0]


def _grain(offsets: np.ndarray, resolution: int) -> np.ndarray:
    """[n, 2] offsets in [0, 1) → [n, R, R] windows of the grain tile."""
    tile = _grain_tile(resolution)
    corners = (offsets * resolution).astype(np.intp)
    return np.stack([tile[y:y + resolution, x:x + resolution] for y, x in corners])


def _along(p, u, v):
    """Coordinate along each sample's texture direction: [k, R, R]."""
    return _col(np.cos(p['angle']), 3) * u + _col(np.sin(p['angle']), 3) * v


def _t_flat(p, u, v):
    return np.zeros((len(p['angle']), v.shape[1], u.shape[2]), np.float32)


def _t_gradient(p, u, v):
    return np.clip(0.5 + 0.5 * _along(p, u, v), 0, 1)


def _t_stripes(p, u, v):
    wave = np.sin(_col(p['freq'] * np.pi, 3) * _along(p, u, v) + _col(p['phase'], 3))
    return np.clip(0.5 + 2.0 * wave, 0, 1)          # steep, slightly soft-edged stripes


def _t_checker(p, u, v):
    f = _col(p['freq'], 3) * 0.5
    c, s = _col(np.cos(p['angle']), 3), _col(np.sin(p['angle']), 3)
    i = np.floor(f * (c * u + s * v) + 0.5 * _col(p['phase'], 3))
    j = np.floor(f * (-s * u + c * v))
    return _wrap(i + j, 2.0)


def _t_rings(p, u, v):
    du, dv = u - 0.5 * _col(np.cos(p['phase']), 3), v - 0.5 * _col(np.sin(p['phase']), 3)
    return 0.5 + 0.5 * np.cos(_col(p['freq'] * np.pi, 3) * np.sqrt(du * du + dv * dv))


def _t_noise(p, u, v):
    return _smooth_field(p['noise'], u.shape[2])


TEXTURES = (_t_flat, _t_gradient, _t_stripes, _t_checker, _t_rings, _t_noise)


def _texture(p: dict[str, np.ndarray], layer: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[n, 3, R, R] float in [0, 1]: layer ``layer``'s pattern between its two colours, plus grain.

    u: [1, 1, R], v: [1, R, 1] pixel-centre coordinates in [-1, 1].
    """
    n, resolution = len(p['shape']), u.shape[-1]
    q = {key[len(layer) + 1:]: value for key, value in p.items() if key.startswith(layer + '_')}
    t = _by_kind(q['pattern'], TEXTURES, q, (n, resolution, resolution), u, v)
    c0, c1 = q['colours'][:, 0, :, None, None], q['colours'][:, 1, :, None, None]
    rgb = (c1 - c0) * t[:, None]
    rgb += c0
    rgb += (_grain(q['grain'], resolution) * _col(q['grain_amount'], 3))[:, None]
    return rgb


# ----------------------------------------------------------------------------------------------
# Rendering.

def _render(p: dict[str, np.ndarray], resolution: int) -> dict[str, np.ndarray]:
    """Layers of a batch of samples: fg, bg, img uint8 [n, 3, R, R]; mask uint8 [n, R, R] in {0, 1}."""
    coords = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution * 2 - 1
    u, v = coords[None, None, :], coords[None, :, None]         # pixel centres, x right, y down

    # Foreground shape and mask.
    frame = _object_frame(p)
    dx = (u - _col(frame['cx'], 3)) / _col(frame['scale'], 3)
    dy = (v - _col(frame['cy'], 3)) / _col(frame['scale'], 3)
    cos, sin = _col(np.cos(p['rotation']), 3), _col(np.sin(p['rotation']), 3)
    x_local = (cos * dx + sin * dy) / _col(np.sqrt(p['aspect']), 3)
    y_local = (-sin * dx + cos * dy) * _col(np.sqrt(p['aspect']), 3)
    rho = np.sqrt(x_local ** 2 + y_local ** 2)
    theta = np.arctan2(y_local, x_local)         # [-π, π]; every r(θ) is 2π-periodic
    boundary = _by_kind(p['shape'], RADIAL, p, theta.shape, theta)
    mask = rho < boundary

    # Foreground appearance (defined over the whole image, as the generator's fg layer is).
    fg = _texture(p, 'fg', u, v)
    rim = np.clip(rho / boundary, 0, 1.5) ** 2
    fg *= (1 - _col(p['shading'], 3) * rim)[:, None]

    # Background scene, independent of everything above.
    bg = _texture(p, 'ground', u, v)
    scenic = p['horizon'].astype(bool)
    if scenic.any():
        q = _subset(p, scenic)
        above = v < _col(q['horizon_height'], 3) + _col(q['horizon_slope'], 3) * u
        bg[scenic] = np.where(above[:, None], _texture(q, 'sky', u, v), bg[scenic])
    bg *= (_col(p['light'], 3) * (0.85 + 0.3 * _smooth_field(p['light_noise'], resolution)))[:, None]

    fg, bg = _to_uint8(fg), _to_uint8(bg)
    img = np.where(mask[:, None], fg, bg)
    return dict(img=img, mask=mask.astype(np.uint8), fg=fg, bg=bg)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float → uint8, rounded and clipped."""
    x *= 255
    x += 0.5
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def generate(split: str, num_images: int, seed: int = 0, resolution: int = NATIVE_RESOLUTION,
             start: int = 0, layers: bool = False, chunk: int = 64) -> dict[str, np.ndarray]:
    """Samples ``start .. start+num_images-1`` of a split.

    Returns dict(img: uint8 [N, 3, R, R], mask: uint8 [N, R, R] in {0, 1}), plus the layers
    fg, bg: uint8 [N, 3, R, R] if ``layers``, with img = mask·fg + (1 − mask)·bg exactly.
    Sample i depends only on (seed, split, i), not on N, ``start`` or ``chunk``.
    """
    if split not in SPLIT_STREAMS:
        raise ValueError(f'unknown split {split!r}; expected one of {sorted(SPLIT_STREAMS)}')
    keys = ('img', 'mask', 'fg', 'bg') if layers else ('img', 'mask')
    out = {key: np.empty((num_images,) + (() if key == 'mask' else (3,)) + (resolution, resolution), np.uint8)
           for key in keys}
    for begin in range(0, num_images, chunk):
        end = min(begin + chunk, num_images)
        params = [_sample_params(np.random.default_rng([seed, SPLIT_STREAMS[split], start + i]))
                  for i in range(begin, end)]
        rendered = _render(_stack(params), resolution)
        for key in keys:
            out[key][begin:end] = rendered[key]
    return out


def downsample(img: np.ndarray, mask: np.ndarray, factor: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Area (box-filter) downsampling by an integer factor, in chunks to bound memory.

    img uint8 [N, 3, R, R] → [N, 3, R/f, R/f] (mean, rounded); mask uint8 [N, R, R] → covered
    fraction > 0.5 → {0, 1}.
    """
    if factor == 1:
        return img, mask
    n, c, h, w = img.shape
    img_small = np.empty((n, c, h // factor, w // factor), np.uint8)
    mask_small = np.empty((n, h // factor, w // factor), np.uint8)
    for i in range(0, n, chunk):
        block = img[i:i + chunk].reshape(-1, c, h // factor, factor, w // factor, factor)
        img_small[i:i + chunk] = np.rint(block.mean(axis=(3, 5), dtype=np.float32))
        cover = mask[i:i + chunk].reshape(-1, h // factor, factor, w // factor, factor).mean(axis=(2, 4), dtype=np.float32)
        mask_small[i:i + chunk] = cover > 0.5
    return img_small, mask_small


def cache_path(cache_root: str, split: str, num_images: int, seed: int) -> str:
    return os.path.join(cache_root, 'synthetic',
                        f'v{SYNTHETIC_VERSION}-seed{seed}-{split}{num_images}-r{NATIVE_RESOLUTION}.npz')


def load_or_generate(cache_root: str, split: str, num_images: int, seed: int = 0,
                     verbose: bool = False) -> dict[str, np.ndarray]:
    """dict(img uint8 [N, 3, 128, 128], mask uint8 [N, 128, 128]) from the cache, generated on first use.

    An unreadable cache file (truncated, empty) is generated again and replaced. The file is
    written to a temporary name and renamed, so concurrent or interrupted runs never leave a
    half-written set behind; a cache folder that cannot be written is a one-line error naming
    ``$ILSGAN_CACHE``.
    """
    path = cache_path(cache_root, split, num_images, seed)
    cached = dnnlib.read_cache(path, lambda name: _read_npz(name, num_images))
    if cached is not None:
        return cached
    if verbose:
        print(f'Generating {num_images} synthetic {split} images (seed {seed}) into {path} ...',
              file=sys.stderr, flush=True)
    with dnnlib.writing_cache(path):   # before the work: an unwritable cache is found now, not after it
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=dnnlib.TEMP_PREFIX, suffix='.npz')
    try:
        with dnnlib.writing_cache(path), os.fdopen(fd, 'wb') as f:
            data = generate(split, num_images, seed)
            np.savez(f, img=data['img'], mask=data['mask'])   # streamed: the set is ~260 MB
        with dnnlib.writing_cache(path):
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return dict(img=data['img'], mask=data['mask'])


def _read_npz(path: str, num_images: int) -> dict[str, np.ndarray]:
    """The cached set, checked: a readable file of another shape or type (hand-made, another
    version's) is as unusable as a truncated one: ValueError, so the set is made again."""
    with np.load(path) as data:
        img, mask = data['img'], data['mask']
    res = NATIVE_RESOLUTION
    if img.shape != (num_images, 3, res, res) or mask.shape != (num_images, res, res) or \
            img.dtype != np.uint8 or mask.dtype != np.uint8:
        raise ValueError(f'img {img.dtype}{list(img.shape)} and mask {mask.dtype}{list(mask.shape)}, '
                         f'not uint8[{num_images}, 3, {res}, {res}] and uint8[{num_images}, {res}, {res}]')
    return dict(img=img, mask=mask)
