"""Do the generated masks follow the objects? Layout statistics of masks, generated against real.

A generator that has not learnt layouts draws the same centred blob for every latent; the UNet
trained on such pairs learns "the object is in the middle" and its IoU stalls. This module turns
that into numbers. Per mask (binarised at 0.5): the centroid (x, y) and the area; over a set of
masks, their spread (standard deviations). The spread of the generated masks divided by that of
the dataset's own masks is ~0 for one blob whatever the latent and ~1 for layouts as varied as
the data's. The collapses seen in practice are counted too: empty masks, full masks, and grey
(not binary) masks. A mask that takes the object's surround instead of the object (binary, of a
plausible size: none of those counters sees it) covers much of the image's border where the
data's objects cover little of it: the mean border coverage of both sets is reported side by side.

The reference is the dataset's test split (every segmentation dataset has masks there). For the
synthetic set and DRC dogs/cars it is the training distribution; for CUB the test crop is centred
on the bird's box while the GAN trains on centre crops of whole images, so CUB's reference spread
is smaller than its training images' and the ratios read high.
"""

from __future__ import annotations

import os

import numpy as np

import dnnlib

EMPTY_AREA = 0.01           # a mask covering less than 1 % of the image is empty
FULL_AREA = 0.99            # ... more than 99 %, full
GREY_RANGE = (0.1, 0.9)     # a pixel strictly inside this range is neither object nor background
GREY_FRACTION = 0.5         # a mask with more than half of its pixels grey is grey
# Warnings (:func:`layout_warnings`): the thresholds sit far from what working runs give, so that a
# warning means a failure, not noise. Measured on the demo: seed 0's surround mask covers 0.29 of the
# border where the data's masks cover 0.00 and the working seeds' 0.00-0.001; working seeds' area
# spread is 0.11-0.14 of the data's, a collapsed run is 50-100 % empty or grey.
COLLAPSE_SHARE = 0.5        # a collapse is reported when more than half of the masks show it
BORDER_EXCESS = 0.1         # generated border coverage above the data's by more than this
LOW_SPREAD = 0.3            # a spread ratio below this: one layout for every latent


def mask_geometry(masks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-mask layout of soft masks.

    ``masks``: [N, H, W] float in [0, 1]. Returns arrays of shape [N]:
    ``area`` (fraction of pixels > 0.5, in [0, 1]); ``x``, ``y`` (centroid of those pixels, pixel
    centres at (j + 0.5)/W and (i + 0.5)/H, so in (0, 1) with 0.5 the image centre; NaN for a mask
    with no pixel > 0.5); ``grey`` (fraction of pixels strictly inside :data:`GREY_RANGE`);
    ``border`` (fraction of the outermost ring of pixels that is > 0.5, in [0, 1]).
    """
    masks = np.asarray(masks, np.float64)
    if masks.ndim != 3:
        raise ValueError(f'masks must be [N, H, W], got shape {masks.shape}')
    _, h, w = masks.shape
    binary = masks > 0.5
    count = binary.sum(axis=(1, 2))
    xs = (np.arange(w) + 0.5) / w
    ys = (np.arange(h) + 0.5) / h
    with np.errstate(invalid='ignore', divide='ignore'):
        x = (binary.sum(axis=1) * xs).sum(axis=1) / count
        y = (binary.sum(axis=2) * ys).sum(axis=1) / count
    grey = ((masks > GREY_RANGE[0]) & (masks < GREY_RANGE[1])).mean(axis=(1, 2))
    ring = np.ones((h, w), bool)
    ring[1:-1, 1:-1] = False                 # the outermost row and column on each side
    border = binary[:, ring].mean(axis=1)
    return dict(area=count / (h * w), x=x, y=y, grey=grey, border=border)


def layout_statistics(masks: np.ndarray) -> dict[str, float | int | None]:
    """Statistics of a set of masks [N, H, W] in [0, 1] (see :func:`mask_geometry`).

    ``std_x``, ``std_y``: spread of the centroids over the non-empty masks (None if fewer than
    one); ``position_spread`` = sqrt(std_x² + std_y²), in image widths; ``std_area``,
    ``mean_area``: over all masks; ``mean_x``, ``mean_y``; ``empty``, ``full``, ``grey``: the
    fractions of masks with area < 1 %, area > 99 %, and more than half of the pixels in (0.1, 0.9);
    ``mean_border``: the mean border coverage.
    Standard deviations are population ones (ddof 0).
    """
    g = mask_geometry(masks)
    placed = ~np.isnan(g['x'])
    stats: dict[str, float | int | None] = dict(count=int(len(g['area'])))
    if placed.any():
        std_x, std_y = float(np.std(g['x'][placed])), float(np.std(g['y'][placed]))
        stats.update(mean_x=float(np.mean(g['x'][placed])), mean_y=float(np.mean(g['y'][placed])),
                     std_x=std_x, std_y=std_y, position_spread=float(np.hypot(std_x, std_y)))
    else:
        stats.update(mean_x=None, mean_y=None, std_x=None, std_y=None, position_spread=None)
    stats.update(mean_area=float(np.mean(g['area'])), std_area=float(np.std(g['area'])),
                 empty=float(np.mean(g['area'] < EMPTY_AREA)), full=float(np.mean(g['area'] > FULL_AREA)),
                 grey=float(np.mean(g['grey'] > GREY_FRACTION)), mean_border=float(np.mean(g['border'])))
    return stats


def _ratio(generated: float | None, data: float | None) -> float | None:
    """generated / data, or None where either is undefined or the data has no spread to compare with."""
    if generated is None or data is None or data <= 0:
        return None
    return generated / data


def compare_layouts(generated: np.ndarray, data: np.ndarray) -> dict:
    """Layout of generated masks against the data's: both [N, H, W] in [0, 1] (sizes may differ).

    Returns ``{'generated': stats, 'data': stats, 'ratios': {...}}`` with the statistics of
    :func:`layout_statistics` and the spread ratios generated / data: ``position`` (of
    ``position_spread``), ``x``, ``y``, ``area`` (of ``std_area``); each ~0 when every mask has
    the same place and size, ~1 when they vary as much as the data's; None when undefined.
    """
    gen, ref = layout_statistics(generated), layout_statistics(data)
    ratios = dict(position=_ratio(gen['position_spread'], ref['position_spread']),
                  x=_ratio(gen['std_x'], ref['std_x']), y=_ratio(gen['std_y'], ref['std_y']),
                  area=_ratio(gen['std_area'], ref['std_area']))
    return dict(generated=gen, data=ref, ratios=ratios)


# ----------------------------------------------------------------------------------------------
# Reading the masks of a synthetic set and of a dataset.

def load_generated_masks(syn_dir: str, resolution: int, num_workers: int = 2, progress: bool = False) -> np.ndarray:
    """The soft masks of a generated set (``syn_dir``/mask/*.png, m·255): float32 [N, R, R] in [0, 1]."""
    from metrics.segmentation import load_pairs
    from training.dataset import open_dataset
    folder = os.path.join(syn_dir, 'mask')
    if not os.path.isdir(folder):
        raise dnnlib.UserError(f'{syn_dir} has no mask/ folder; regenerate it with generate_segmentation_samples.py')
    images, _ = load_pairs(open_dataset(folder, 'train', resolution), num_workers, 'generated masks', progress)
    return images[:, 0].numpy().astype(np.float32) / 255


def load_data_masks(data: str, resolution: int, data_root: str | None = None, num_workers: int = 2,
                    progress: bool = False) -> np.ndarray:
    """The masks of the dataset's test split: float32 [N, R, R] in {0, 1}."""
    from metrics.segmentation import load_pairs
    from training.dataset import open_dataset
    _, masks = load_pairs(open_dataset(data, 'test', resolution, data_root), num_workers, 'data masks', progress)
    return masks.numpy().astype(np.float32)


def layout_warnings(layout: dict | None, generator_layout: dict | None = None) -> list[str]:
    """One sentence per failure that :func:`compare_layouts`'s result shows; [] when none does.

    Collapses (empty, full or grey masks in more than half of the set), a mask that takes the
    objects' surround (border coverage above the data's by more than :data:`BORDER_EXCESS`), and
    layouts that do not vary with the latent (position or area spread below :data:`LOW_SPREAD` of
    the data's). The numbers in each sentence are the measured ones.

    ``generator_layout``: the same comparison for G's own masks when the set's were moved by the
    training perturbation; the spread warnings then read it, since the shift, not G, spreads the
    set's positions.
    """
    if not layout:
        return []
    gen, data = layout['generated'], layout.get('data') or {}
    ratios = (generator_layout or layout)['ratios']
    warnings = []
    collapses = (('empty', 'empty (area < 1 %): the foreground layer has vanished'),
                 ('full', 'full (area > 99 %): the mask covers the whole image'),
                 ('grey', 'grey (most pixels between 0.1 and 0.9): the layers have not separated'))
    for key, what in collapses:
        if (gen.get(key) or 0) > COLLAPSE_SHARE:
            warnings.append(f'{100 * gen[key]:.0f} % of the masks are {what}')
    gen_border, data_border = gen.get('mean_border'), data.get('mean_border')
    if gen_border is not None and data_border is not None and gen_border > data_border + BORDER_EXCESS:
        warnings.append(f'the masks cover {gen_border:.2f} of the image border where the data\'s cover '
                        f'{data_border:.2f}: the mask may have taken the surround of the objects (ground, '
                        f'frame) rather than the objects')
    for key, what in (('position', 'position'), ('area', 'size')):
        if ratios.get(key) is not None and ratios[key] < LOW_SPREAD:
            warnings.append(f'the masks\' {what} varies {ratios[key]:.2f} as much as the data\'s: about one '
                            f'{what} for every latent')
    return warnings


def format_layout_rows(layout: dict | None, generator_layout: dict | None = None) -> list[tuple[str, str]]:
    """The auto test's table rows: spread ratios and the collapse fractions of the generated masks;
    with ``generator_layout`` (a perturbed set), one more row: the spread ratios of G's own masks."""
    if layout is None:
        return [('layout spread gen/data', '—'), ('masks empty/full/grey', '—'), ('mask on the border gen/data', '—')]

    def fmt(value):
        return '—' if value is None else f'{value:.2f}'

    def spread(ratios: dict) -> str:
        return f'position {fmt(ratios["position"])}, area {fmt(ratios["area"])}'
    g, d = layout['generated'], layout.get('data') or {}
    rows = [('layout spread gen/data', spread(layout['ratios']))]
    if generator_layout is not None:
        rows.append(("G's own layout spread gen/data", spread(generator_layout['ratios'])))
    return rows + [('masks empty/full/grey', ' / '.join(f'{100 * g[k]:.1f}%' for k in ('empty', 'full', 'grey'))),
                   ('mask on the border gen/data', f'{fmt(g.get("mean_border"))} / {fmt(d.get("mean_border"))}')]
