"""Which generated layer is the object: a rule for the layers' roles that reads no label.

A layered GAN may learn its two layers the wrong way round: the foreground draws the scene and the
mask marks a hole where the background layer shows the object. The composite is the same either
way (m·f + (1 − m)·b = (1 − m)·b + m·f), so nothing in training tells the two apart, but a UNet
trained on such pairs learns to mark everything except the object. Photographs frame their
object: it covers little of the image's border, the scene most of it. The ``border`` rule reads
each generated mask's border (its outermost ring of pixels, binarised at 0.5, as
:func:`metrics.layout.mask_geometry` measures it) and, where the mask covers more than half of it,
swaps the roles of that sample's layers: mask ← 1 − mask, fg ↔ bg. ``as_drawn`` keeps G's roles
(the original's behaviour). Neither reads a test label.
"""

from __future__ import annotations

import numpy as np
import torch

from metrics.layout import mask_geometry

ROLE_RULES = ('as_drawn', 'border')
SWAP_BORDER = 0.5       # a mask covering more than this share of the border marks the scene, not the object


def border_coverage(masks: torch.Tensor | np.ndarray) -> np.ndarray:
    """Share of the outermost ring of pixels above 0.5: masks [N, 1, H, W] or [N, H, W] → [N] in [0, 1]."""
    masks = masks.detach().float().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks, np.float32)
    return mask_geometry(masks[:, 0] if masks.ndim == 4 else masks)['border']


def swapped(rule: str, masks: torch.Tensor | np.ndarray) -> np.ndarray:
    """Which samples' roles the rule swaps: bool [N]."""
    if rule not in ROLE_RULES:
        raise ValueError(f'unknown role rule {rule!r}; expected one of {ROLE_RULES}')
    if rule == 'as_drawn':
        return np.zeros(len(masks), bool)
    return border_coverage(masks) > SWAP_BORDER


def apply_roles(rule: str, layers: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The layers with each swapped sample's roles exchanged (mask ← 1 − mask, fg ↔ bg; img, the
    composite, is unchanged), and the bool [N] of swapped samples. ``layers``: dict(fg, bg [N, 3, R, R],
    mask [N, 1, R, R] in [0, 1], img ...); other entries pass through."""
    swap = swapped(rule, layers['mask'])
    if not swap.any():
        return layers, swap
    where = torch.from_numpy(swap).to(layers['mask'].device)
    flip = where[:, None, None, None]
    out = dict(layers)
    out['mask'] = torch.where(flip, 1 - layers['mask'], layers['mask'])
    out['fg'] = torch.where(flip, layers['bg'], layers['fg'])
    out['bg'] = torch.where(flip, layers['fg'], layers['bg'])
    return out, swap
