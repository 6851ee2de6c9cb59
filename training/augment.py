"""Adaptive discriminator augmentation (ADA), written from Karras et al. 2020, appendix B.

Every image the discriminator sees goes through :class:`AugmentPipe`. Each transform is applied
per sample with probability ``multiplier * p``; ``p`` is a buffer steered during training by
:class:`AdaptiveAugment` (METHOD.md §3, ORIGINAL.md §5.4).

* Geometric transforms (pixel blitting: x-flip, 90° rotations, integer translation; general:
  isotropic scale, pre-rotation, anisotropic scale, post-rotation, fractional translation) are
  composed into one 3×3 homogeneous matrix per sample and executed once. The warp is
  reflect-pad → ×2 upsampling with the sym6 low-pass → bilinear sampling → ×2 downsampling with
  the same low-pass, so resampling does not alias. Batches in which every sample's matrix only
  permutes pixels (blits alone) are executed exactly by indexing instead; in other batches the
  blits go through the filtered warp too (integer shifts stay exact, flips and quarter turns
  carry sym6's small phase error at high frequencies). Batches without any transform skip the
  warp, whereas the original always executes it.
* Colour transforms (brightness, contrast, luma flip, hue rotation, saturation) are composed into
  one 4×4 homogeneous matrix acting on (r, g, b, 1).

The segmentation evaluation (METHOD.md §8) uses the same pipe with fixed p = 0.5 and
``warp='plain'`` (one bilinear sample, zero padding), and passes masks that receive the same
geometric transform as the images.

Coordinates: pixel centres of an H×W image sit at x = i + 1/2 − W/2, y = j + 1/2 − H/2 (origin at
the image centre, unit = one pixel). Geometric matrices map *output* coordinates to the *input*
coordinates that are sampled there; since every transform's distribution is symmetric, drawing
the sampling matrix is the same as drawing the forward transform.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils.checkpoint import rebuildable
from torch_utils.ops import grid_sample_gradfix, upfirdn2d

# Symlet-6 low-pass taps (orthonormal: sum h[k] h[k + 2l] = δ_l, sum h = √2, 6 vanishing moments).
# Derived by spectral factorisation of the Daubechies polynomial P(y) = Σ_k C(5 + k, k) y^k,
# keeping the root set whose phase is closest to linear; tests/test_augment.py checks the
# defining identities. Orthonormality is what makes upsample(f) → downsample(f flipped) an exact
# identity, so a warp by the identity matrix returns its input.
SYM6 = (
    0.015404109327044778, 0.0034907120842221527, -0.11799011114851957, -0.048311742585697336,
    0.4910559419279736, 0.78764114102865, 0.3379294217281656, -0.07263752278637624,
    -0.021060292512370793, 0.04472490177078124, 0.0017677118642539852, -0.007800708325032365,
)

# Low-res pixels the 12-tap filter reaches at ×2 (12 high-res taps = ±3 low-res pixels).
_FILTER_REACH = (len(SYM6) + 3) // 4

# sym6 is not symmetric: its centre of mass (its delay at low frequencies) sits at tap
# c = Σ k h[k] / Σ h[k] ≈ 5.10, not at the middle 5.5 that upsample2d's padding assumes, so the
# ×2 image is shifted by Δ = c − 5.5 high-res pixels and the flipped-filter downsampling undoes
# exactly that shift. A warp that rotates or flips would turn the first shift but not the
# second, leaving a residual of (I − A)·Δ; sampling at G(x − Δ) + Δ keeps both aligned.
_FILTER_DELAY = (sum(k * h for k, h in enumerate(SYM6)) / sum(SYM6) - (len(SYM6) - 1) / 2) / 2  # low-res px

GEOMETRIC_OPS = ('xflip', 'rotate90', 'xint', 'scale', 'rotate', 'aniso', 'xfrac')
COLOUR_OPS = ('brightness', 'contrast', 'lumaflip', 'hue', 'saturation')

_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)

# Named pipes of StyleGAN2-ADA's --augpipe. The image-space filtering, noise and cutout pipes
# ('filter', 'noise', 'cutout', 'bgcf', ...) are not implemented: ILSGAN trains with 'bgc'.
AUGPIPE_SPECS: dict[str, dict] = {
    'blit': dict(_BLIT),
    'geom': dict(_GEOM),
    'color': dict(_COLOR),
    'bg': dict(_BLIT, **_GEOM),
    'bgc': dict(_BLIT, **_GEOM, **_COLOR),
}

# Segmentation-evaluation augmentations (METHOD.md §8); each op fires with probability 0.5.
# The original seg pipe draws its translation with std 0.125 in grid_sample's normalised units,
# where the image spans [-1, 1]: 0.0625 of the image size, half of ADA's 0.125 (ORIGINAL.md §9.1).
_SEG_GEOM = dict(xflip=1, scale=1, rotate=1, xfrac=1, xfrac_std=0.125 / 2)
SEGMENTATION_AUG_SPECS: dict[str, dict] = {
    'color': dict(_COLOR),
    'geom': dict(_SEG_GEOM),
    'gc': dict(_COLOR, **_SEG_GEOM),
}
SEGMENTATION_AUG_P = 0.5

# Unit vector of the luma axis in RGB: equal weights, as in the ADA paper.
LUMA_AXIS = (1 / math.sqrt(3),) * 3


# ------------------------------------------------------------------------------------------------
# Matrix builders. Arguments are [N] tensors (or floats broadcast against them).


def _matrix(rows: list[list[torch.Tensor | float]], like: torch.Tensor) -> torch.Tensor:
    """Stack scalar entries into [N, len(rows), len(rows[0])] matrices shaped after ``like`` [N]."""
    entries = [torch.as_tensor(e, dtype=like.dtype, device=like.device).expand(like.shape)
               for row in rows for e in row]
    return torch.stack(entries, dim=-1).reshape(*like.shape, len(rows), len(rows[0]))


def translation_matrix(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] homogeneous 2-D translation by (tx, ty) pixels."""
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def scaling_matrix(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] homogeneous 2-D scaling about the image centre."""
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def rotation_matrix(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] rotation about the image centre given cos θ and sin θ (exact for multiples of 90°)."""
    return _matrix([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], cos)


def _luma_projector(like: torch.Tensor) -> torch.Tensor:
    """[3, 3] v vᵀ for the unit luma axis v."""
    v = torch.tensor(LUMA_AXIS, dtype=like.dtype, device=like.device)
    return torch.outer(v, v)


def _colour_matrix(linear: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """[N, 4, 4] homogeneous colour matrix from a [N, 3, 3] linear part and a [N, 3] offset."""
    out = torch.zeros(*linear.shape[:-2], 4, 4, dtype=linear.dtype, device=linear.device)
    out[..., :3, :3] = linear
    out[..., 3, 3] = 1
    if offset is not None:
        out[..., :3, 3] = offset
    return out


def brightness_matrix(b: torch.Tensor) -> torch.Tensor:
    """[N, 4, 4]: add b to every channel."""
    eye = torch.eye(3, dtype=b.dtype, device=b.device).expand(*b.shape, 3, 3)
    return _colour_matrix(eye, b[..., None].expand(*b.shape, 3))


def contrast_matrix(c: torch.Tensor) -> torch.Tensor:
    """[N, 4, 4]: scale colours by c about 0, the mid-grey of [-1, 1] images."""
    eye = torch.eye(3, dtype=c.dtype, device=c.device)
    return _colour_matrix(c[..., None, None] * eye)


def lumaflip_matrix(i: torch.Tensor) -> torch.Tensor:
    """[N, 4, 4]: for i = 1 the Householder reflection I − 2 v vᵀ (negates luma, keeps chroma); i = 0: I."""
    eye = torch.eye(3, dtype=i.dtype, device=i.device)
    return _colour_matrix(eye - 2 * i[..., None, None] * _luma_projector(i))


def hue_matrix(theta: torch.Tensor) -> torch.Tensor:
    """[N, 4, 4]: rotation by θ about the luma axis (Rodrigues' formula)."""
    v = torch.tensor(LUMA_AXIS, dtype=theta.dtype, device=theta.device)
    cross = torch.tensor([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]],
                         dtype=theta.dtype, device=theta.device)
    eye = torch.eye(3, dtype=theta.dtype, device=theta.device)
    cos, sin = torch.cos(theta)[..., None, None], torch.sin(theta)[..., None, None]
    return _colour_matrix(cos * eye + sin * cross + (1 - cos) * _luma_projector(theta))


def saturation_matrix(s: torch.Tensor) -> torch.Tensor:
    """[N, 4, 4]: keep the luma component, scale the chroma component (orthogonal to luma) by s."""
    projector = _luma_projector(s)
    eye = torch.eye(3, dtype=s.dtype, device=s.device)
    return _colour_matrix(projector + s[..., None, None] * (eye - projector))


def apply_colour_matrix(images: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Apply [N, 4, 4] colour matrices to images [N, C, H, W] with C = 3 (RGB) or 1 (grey).

    A grey pixel x stands for (x, x, x); its image under the matrix is collapsed back to one
    channel by averaging the three outputs.
    """
    N, channels, H, W = images.shape
    C = C.to(images.dtype)
    if channels == 3:
        flat = images.reshape(N, 3, H * W)
        return (C[:, :3, :3] @ flat + C[:, :3, 3:]).reshape(N, 3, H, W)
    if channels == 1:
        gain = C[:, :3, :3].sum(dim=2).mean(dim=1)
        offset = C[:, :3, 3].mean(dim=1)
        return images * gain[:, None, None, None] + offset[:, None, None, None]
    raise ValueError(f'colour augmentation needs 1 or 3 channels, got {channels}')


# ------------------------------------------------------------------------------------------------


class _Draws:
    """Per-sample random numbers for a batch of N, on one device, from an optional generator."""

    def __init__(self, n: int, p: torch.Tensor, device: torch.device,
                 generator: torch.Generator | None) -> None:
        self.n, self.device, self.generator = n, device, generator
        self.p = p.to(device, torch.float32)

    def uniform(self, *shape: int) -> torch.Tensor:
        """[N, *shape] uniform in [0, 1)."""
        return torch.rand([self.n, *shape], device=self.device, generator=self.generator)

    def normal(self, *shape: int) -> torch.Tensor:
        """[N, *shape] standard normal."""
        return torch.randn([self.n, *shape], device=self.device, generator=self.generator)

    def fires(self, multiplier: float, probability: torch.Tensor | None = None) -> torch.Tensor:
        """[N] in {0, 1}: 1 for the samples that receive an op of probability multiplier·p."""
        probability = multiplier * self.p if probability is None else probability
        return (self.uniform() < probability).to(torch.float32)


@rebuildable
class AugmentPipe(torch.nn.Module):
    """ADA augmentation: ``forward(images [N, C, H, W] in ~[-1, 1], masks=None)``.

    Every op argument (``xflip`` … ``saturation``) is a probability multiplier: the op fires per
    sample with probability ``multiplier * p``. The ``*_std`` / ``*_max`` arguments set the
    strength (log2 standard deviations for scales, fractions of the image size for translations,
    fractions of a half turn for rotations). ``warp`` is ``'filtered'`` (ADA: reflect padding,
    ×2 sym6 up/downsampling around the bilinear warp) or ``'plain'`` (one bilinear sample with
    zero padding, as the original segmentation augmentation).

    Twice differentiable with respect to the images: R1 is computed through it.
    """

    def __init__(self,
                 xflip: float = 0, rotate90: float = 0, xint: float = 0, xint_max: float = 0.125,
                 scale: float = 0, rotate: float = 0, aniso: float = 0, xfrac: float = 0,
                 scale_std: float = 0.2, rotate_max: float = 1, aniso_std: float = 0.2,
                 xfrac_std: float = 0.125,
                 brightness: float = 0, contrast: float = 0, lumaflip: float = 0, hue: float = 0,
                 saturation: float = 0, brightness_std: float = 0.2, contrast_std: float = 0.5,
                 hue_max: float = 1, saturation_std: float = 1,
                 warp: str = 'filtered') -> None:
        super().__init__()
        if warp not in ('filtered', 'plain'):
            raise ValueError(f"warp must be 'filtered' or 'plain', got {warp!r}")
        self.multipliers = dict(xflip=float(xflip), rotate90=float(rotate90), xint=float(xint),
                                scale=float(scale), rotate=float(rotate), aniso=float(aniso),
                                xfrac=float(xfrac), brightness=float(brightness),
                                contrast=float(contrast), lumaflip=float(lumaflip), hue=float(hue),
                                saturation=float(saturation))
        self.xint_max = float(xint_max)
        self.scale_std = float(scale_std)
        self.rotate_max = float(rotate_max)
        self.aniso_std = float(aniso_std)
        self.xfrac_std = float(xfrac_std)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)
        self.hue_max = float(hue_max)
        self.saturation_std = float(saturation_std)
        self.warp = warp
        self.register_buffer('p', torch.zeros([]))
        self.register_buffer('warp_filter', upfirdn2d.setup_filter(list(SYM6)), persistent=False)

    def _geometry(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """[N, 3, 3] composed sampling matrices, or None when no geometric op is enabled."""
        m = self.multipliers
        if not any(m[name] > 0 for name in GEOMETRIC_OPS):
            return None
        N, _, H, W = images.shape
        draw = _Draws(N, self.p, images.device, generator)
        G = torch.eye(3, device=images.device).expand(N, 3, 3)
        if m['xflip'] > 0:
            # A fired x-flip flips half the time: a flip applied to every image would be learnt
            # by the generator (a leaking augmentation) once p reaches 1.
            flip = torch.floor(draw.uniform() * 2) * draw.fires(m['xflip'])
            G = G @ scaling_matrix(1 - 2 * flip, torch.ones_like(flip))
        if m['rotate90'] > 0:
            quarter = (torch.floor(draw.uniform() * 4) * draw.fires(m['rotate90'])).long()
            cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=images.device)[quarter]
            sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=images.device)[quarter]
            G = G @ rotation_matrix(cos, sin)
        if m['xint'] > 0:
            shift = (draw.uniform(2) * 2 - 1) * self.xint_max * draw.fires(m['xint'])[:, None]
            G = G @ translation_matrix(torch.round(shift[:, 0] * W), torch.round(shift[:, 1] * H))
        if m['scale'] > 0:
            s = torch.exp2(draw.normal() * self.scale_std * draw.fires(m['scale']))
            G = G @ scaling_matrix(s, s)
        # The rotation is split into a pre- and a post-rotation around the anisotropic scaling;
        # each fires with probability 1 − √(1 − p·m), so that at least one fires with p·m.
        rotation_probability = 1 - torch.sqrt(torch.clamp(1 - m['rotate'] * draw.p, 0, 1))
        if m['rotate'] > 0:
            G = G @ self._random_rotation(draw, rotation_probability)
        if m['aniso'] > 0:
            s = torch.exp2(draw.normal() * self.aniso_std * draw.fires(m['aniso']))
            G = G @ scaling_matrix(s, 1 / s)
        if m['rotate'] > 0:
            G = G @ self._random_rotation(draw, rotation_probability)
        if m['xfrac'] > 0:
            shift = draw.normal(2) * self.xfrac_std * draw.fires(m['xfrac'])[:, None]
            G = G @ translation_matrix(shift[:, 0] * W, shift[:, 1] * H)
        return G

    def _random_rotation(self, draw: _Draws, probability: torch.Tensor) -> torch.Tensor:
        """[N, 3, 3]: uniform angle in ±π·rotate_max for the samples that fire, else identity."""
        theta = (draw.uniform() * 2 - 1) * math.pi * self.rotate_max * draw.fires(1.0, probability)
        return rotation_matrix(torch.cos(theta), torch.sin(theta))

    def _colour(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """[N, 4, 4] composed colour matrices (first op rightmost), or None when none is enabled."""
        m = self.multipliers
        if not any(m[name] > 0 for name in COLOUR_OPS):
            return None
        N = images.shape[0]
        draw = _Draws(N, self.p, images.device, generator)
        C = torch.eye(4, device=images.device).expand(N, 4, 4)
        if m['brightness'] > 0:
            C = brightness_matrix(draw.normal() * self.brightness_std * draw.fires(m['brightness'])) @ C
        if m['contrast'] > 0:
            C = contrast_matrix(torch.exp2(draw.normal() * self.contrast_std * draw.fires(m['contrast']))) @ C
        if m['lumaflip'] > 0:
            C = lumaflip_matrix(torch.floor(draw.uniform() * 2) * draw.fires(m['lumaflip'])) @ C
        if m['hue'] > 0:
            C = hue_matrix((draw.uniform() * 2 - 1) * math.pi * self.hue_max * draw.fires(m['hue'])) @ C
        if m['saturation'] > 0:
            s = torch.exp2(draw.normal() * self.saturation_std * draw.fires(m['saturation']))
            C = saturation_matrix(s) @ C
        return C

    # -- forward --------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None,
                generator: torch.Generator | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Augment images [N, C, H, W] (~[-1, 1]) and, if given, masks [N, 1, H, W] in {0, 1}.

        Masks get the images' geometric transform (pixels sampled beyond the padded image become
        0; with ``warp='filtered'`` the reflect padding reflects the mask as it does the image)
        and no colour transform. Returns images, or (images, masks). ``generator`` (on the images' device)
        makes the draws reproducible.
        """
        if images.ndim != 4:
            raise ValueError(f'images must be [N, C, H, W], got shape {tuple(images.shape)}')
        if masks is not None and (masks.ndim != 4 or masks.shape[1] != 1
                                  or masks.shape[0] != images.shape[0] or masks.shape[2:] != images.shape[2:]):
            raise ValueError(f'masks must be [N, 1, H, W] matching images {tuple(images.shape)}, '
                             f'got {tuple(masks.shape)}')
        if float(self.p) > 0:
            G = self._geometry(images, generator)
            if G is not None:
                images, masks = geometric_warp(images, G, masks, warp=self.warp, warp_filter=self.warp_filter)
            C = self._colour(images, generator)
            if C is not None:
                images = apply_colour_matrix(images, C)
        return images if masks is None else (images, masks)


# ------------------------------------------------------------------------------------------------
# The geometric warp. `pads` = (left, right, top, bottom) reflect padding in pixels.


def geometric_warp(images: torch.Tensor, G: torch.Tensor, masks: torch.Tensor | None = None,
                   warp: str = 'filtered', warp_filter: torch.Tensor | None = None,
                   shortcuts: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample images [N, C, H, W] (and masks [N, 1, H, W] in {0, 1}) with sampling matrices G [N, 3, 3].

    ``warp='filtered'``: reflect padding, ×2 upsampling, bilinear sampling, ×2 downsampling (ADA);
    ``'plain'``: one bilinear sample with zero padding. With ``shortcuts`` an all-identity batch
    is returned as is and an all-blit batch (pixel centres onto pixel centres) is copied exactly.
    Masks are warped as a one-hot (background, foreground) pair and re-hardened by arg-max.
    """
    if warp not in ('filtered', 'plain'):
        raise ValueError(f"warp must be 'filtered' or 'plain', got {warp!r}")
    N, _, H, W = images.shape
    if warp_filter is None:
        warp_filter = upfirdn2d.setup_filter(list(SYM6), device=images.device)
    G_host = G.detach().to('cpu', torch.float64)  # the geometric path's one host sync
    if shortcuts and torch.equal(G_host, torch.eye(3, dtype=torch.float64).expand(N, 3, 3)):
        return images, masks
    blit = shortcuts and _is_pixel_permutation(G_host, H, W)
    filtered = warp == 'filtered' and not blit
    # The filtered warp computes `extend` extra output pixels on each side so that the
    # downsampling filter sees real content at the crop border.
    extend = _FILTER_REACH if filtered else 0
    if warp == 'filtered':
        reach = _FILTER_REACH + 1 if filtered else 0  # upsampling taps + the bilinear neighbour
        pads = _reflect_margins(G_host, H, W, extend, reach)
    else:
        pads = (0, 0, 0, 0)

    mask_out = None
    if blit:
        rows, cols = _source_pixels(G_host, H, W, pads)
        images = _gather_pixels(_reflect_pad(images, pads), rows.to(images.device), cols.to(images.device))
        if masks is not None:
            mask_out = _gather_pixels(_reflect_pad(masks.float(), pads), rows.to(masks.device),
                                      cols.to(masks.device)).to(masks.dtype)
        return images, mask_out

    padded = _reflect_pad(images, pads)
    if masks is not None:
        # Warp the one-hot pair (background, foreground) and take the arg-max: partial
        # coverage goes to the larger class, out-of-image pixels (both 0) to background.
        onehot = _reflect_pad(torch.cat([1 - masks.float(), masks.float()], dim=1), pads)
        grid = _sampling_grid(G, H, W, pads, resolution=1, extend=0).to(onehot.dtype)
        warped = F.grid_sample(onehot, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
        mask_out = (warped[:, 1:] > warped[:, :1]).to(masks.dtype)

    if filtered:
        padded = upfirdn2d.upsample2d(padded, warp_filter, up=2)
    grid = _sampling_grid(G, H, W, pads, resolution=2 if filtered else 1, extend=extend,
                          delay=_FILTER_DELAY if filtered else 0.0)
    warped = grid_sample_gradfix.grid_sample(padded, grid.to(padded.dtype))
    if filtered:
        # Correlation (flipped taps) after convolution makes up→down the filter's
        # autocorrelation at even lags, which is δ for an orthonormal filter.
        warped = upfirdn2d.downsample2d(warped, warp_filter, down=2, flip_filter=True)
        warped = warped[:, :, extend:extend + H, extend:extend + W]
    return warped, mask_out


def _is_pixel_permutation(G: torch.Tensor, H: int, W: int, tol: float = 1e-4) -> bool:
    """True when every [N, 3, 3] matrix maps output pixel centres one-to-one onto input pixel centres.

    That holds when the linear part is an integer matrix of determinant ±1 (a signed
    permutation, given the draws) and the first pixel centre lands on a pixel centre.
    """
    linear = G[:, :2, :2]
    unimodular = torch.linalg.det(linear).abs().sub(1).abs().max() < tol
    integer = (linear - linear.round()).abs().max() < tol
    first = G[:, :2, :] @ torch.tensor([0.5 - W / 2, 0.5 - H / 2, 1.0], dtype=G.dtype)
    index = first + torch.tensor([W / 2 - 0.5, H / 2 - 0.5], dtype=G.dtype)
    return bool(unimodular and integer and (index - index.round()).abs().max() < tol)


def _reflect_margins(G: torch.Tensor, H: int, W: int, extend: int, reach: int) -> tuple[int, int, int, int]:
    """Reflect padding (left, right, top, bottom) covering where the batch's warps sample.

    The output rectangle (grown by ``extend`` pixels) is mapped through every matrix; the padding
    covers the union of the mapped rectangles plus ``reach`` pixels of filter support, limited to
    one image size less a pixel (what reflection can provide; beyond it the warp reads zeros).
    """
    half_w, half_h = W / 2 + extend, H / 2 + extend
    corners = torch.tensor([[-half_w, -half_h, 1], [half_w, -half_h, 1], [-half_w, half_h, 1],
                            [half_w, half_h, 1]], dtype=G.dtype).T
    mapped = G[:, :2, :] @ corners  # [N, 2, 4]
    xs, ys = mapped[:, 0], mapped[:, 1]

    def margin(beyond: float, limit: int) -> int:
        return min(max(math.ceil(beyond + reach - 1e-6), 0), limit)

    return (margin(float(-xs.min() - W / 2), W - 1), margin(float(xs.max() - W / 2), W - 1),
            margin(float(-ys.min() - H / 2), H - 1), margin(float(ys.max() - H / 2), H - 1))


def _reflect_pad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    return F.pad(x, list(pads), mode='reflect') if any(pads) else x


def _sampling_grid(G: torch.Tensor, H: int, W: int, pads: tuple[int, int, int, int],
                   resolution: int, extend: int, delay: float = 0.0) -> torch.Tensor:
    """[N, r(H + 2e), r(W + 2e), 2] grid_sample coordinates (align_corners=False) of the padded input.

    Output pixel a of the r-times denser, e-extended output has centre x = (a + 1/2)/r − e − W/2;
    G maps it to input coordinates, which the padded input's edges (−W/2 − left, W/2 + right)
    normalise to [−1, 1]. Upsampling keeps the image's extent, so the same normalisation serves
    the ×2 image. ``delay`` (pixels, both axes) is the upsampling filter's shift of the content,
    undone by the downsampling filter: points are mapped as G(x − delay) + delay.
    """
    left, right, top, bottom = pads
    device = G.device
    xs = (torch.arange(resolution * (W + 2 * extend), device=device, dtype=torch.float64) + 0.5) / resolution - extend - W / 2
    ys = (torch.arange(resolution * (H + 2 * extend), device=device, dtype=torch.float64) + 0.5) / resolution - extend - H / 2
    yy, xx = torch.meshgrid(ys, xs, indexing='ij')
    points = torch.stack([xx - delay, yy - delay, torch.ones_like(xx)], dim=-1)  # [Ho, Wo, 3]
    mapped = torch.einsum('nij,hwj->nhwi', G[:, :2, :].to(torch.float64), points) + delay
    width, height = W + left + right, H + top + bottom
    gx = 2 * (mapped[..., 0] + W / 2 + left) / width - 1
    gy = 2 * (mapped[..., 1] + H / 2 + top) / height - 1
    return torch.stack([gx, gy], dim=-1).to(torch.float32)


def _source_pixels(G: torch.Tensor, H: int, W: int, pads: tuple[int, int, int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, H, W] integer (row, column) of the padded input read by each output pixel of a blit."""
    left, _, top, _ = pads
    xs = torch.arange(W, dtype=G.dtype) + 0.5 - W / 2
    ys = torch.arange(H, dtype=G.dtype) + 0.5 - H / 2
    yy, xx = torch.meshgrid(ys, xs, indexing='ij')
    points = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1)
    mapped = torch.einsum('nij,hwj->nhwi', G[:, :2, :], points)
    cols = torch.round(mapped[..., 0] + W / 2 - 0.5 + left).long()
    rows = torch.round(mapped[..., 1] + H / 2 - 0.5 + top).long()
    return rows, cols


def _gather_pixels(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """out[n, c, i, j] = x[n, c, rows[n, i, j], cols[n, i, j]], 0 where the index is outside x."""
    N, C, Hp, Wp = x.shape
    inside = (rows >= 0) & (rows < Hp) & (cols >= 0) & (cols < Wp)
    index = (rows.clamp(0, Hp - 1) * Wp + cols.clamp(0, Wp - 1)).reshape(N, 1, -1).expand(N, C, -1)
    out = x.reshape(N, C, Hp * Wp).gather(2, index).reshape(N, C, *rows.shape[1:])
    return out * inside[:, None].to(x.dtype)


# ------------------------------------------------------------------------------------------------


def segmentation_augment_pipe(kind: str | None) -> AugmentPipe | None:
    """The UNet-training augmentation of METHOD.md §8: 'color', 'geom', 'gc' or 'none' (→ None).

    Every op fires per sample with the fixed probability 0.5; the geometric warp is one bilinear
    sample with zero padding, as in the original segmentation script.
    """
    if kind is None or kind == 'none':
        return None
    if kind not in SEGMENTATION_AUG_SPECS:
        raise ValueError(f"unknown segmentation augmentation {kind!r}; "
                         f"choose from {', '.join(list(SEGMENTATION_AUG_SPECS) + ['none'])}")
    pipe = AugmentPipe(**SEGMENTATION_AUG_SPECS[kind], warp='plain')
    pipe.p.fill_(SEGMENTATION_AUG_P)
    return pipe


class AdaptiveAugment:
    """The ADA controller: steers ``pipe.p`` towards E[sign(D(real))] = target (METHOD.md §3).

    Per iteration call :meth:`observe` with D's logits on real images. After every ``interval``
    iterations (:meth:`due`), reduce :meth:`pending` (sum, count) across processes if there are
    several, and call :meth:`update` with the resulting mean sign::

        p ← max(0, p + sign(mean − target) · batch_size · interval / (ada_kimg · 1000))

    so p can move by 1 within ``ada_kimg`` thousand images. State is plain floats.
    """

    def __init__(self, target: float = 0.6, interval: int = 4, ada_kimg: float = 500,
                 batch_size: int = 32) -> None:
        self.target = float(target)
        self.interval = int(interval)
        self.ada_kimg = float(ada_kimg)
        self.batch_size = int(batch_size)
        self._stats: torch.Tensor | None = None  # [2] float64: sum of signs, count

    @property
    def step(self) -> float:
        """How far p moves in one adjustment."""
        return self.batch_size * self.interval / (self.ada_kimg * 1000)

    def due(self, completed: int) -> bool:
        """Whether an adjustment is due after ``completed`` iterations: after every ``interval``-th
        (4, 8, 12, … for interval 4), so each adjustment sees the signs of a whole interval."""
        return completed > 0 and completed % self.interval == 0

    def observe(self, real_logits: torch.Tensor) -> None:
        """Accumulate sign(D(real)) without a host sync; real_logits: any shape."""
        signs = torch.sign(real_logits.detach()).to(torch.float64)
        batch = torch.stack([signs.sum(), torch.tensor(float(signs.numel()), dtype=torch.float64,
                                                        device=signs.device)])
        self._stats = batch if self._stats is None else self._stats.to(batch.device) + batch

    def pending(self, device: torch.device | str | None = None) -> torch.Tensor:
        """[2] float64 (sum of signs, count) since the last update; all-reduce (sum) it across processes."""
        stats = self._stats if self._stats is not None else torch.zeros(2, dtype=torch.float64)
        return stats.clone() if device is None else stats.to(device, copy=True)

    def reset(self) -> None:
        self._stats = None

    def mean_sign(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float | None:
        """Mean sign since the last update (after the optional cross-process ``reduce``); None if empty."""
        stats = self.pending()
        if reduce is not None:
            stats = reduce(stats)
        total, count = (float(v) for v in stats.cpu())
        return total / count if count > 0 else None

    def update(self, pipe: AugmentPipe, mean_sign: float | None) -> float:
        """Move ``pipe.p`` one step towards the target, clear the accumulator, return the new p."""
        self.reset()
        p = float(pipe.p)
        if mean_sign is not None and not math.isnan(mean_sign):
            p = max(0.0, p + float(np.sign(mean_sign - self.target)) * self.step)
            pipe.p.fill_(p)
        return p

    def state_dict(self) -> dict:
        total, count = (float(v) for v in self.pending().cpu())
        return dict(target=self.target, interval=self.interval, ada_kimg=self.ada_kimg,
                    batch_size=self.batch_size, sign_sum=total, sign_count=count)

    def load_state_dict(self, state: dict) -> None:
        """Restore the pending sign statistics. The settings (target, interval, ada_kimg, batch)
        stay those of the constructor, so a resumed run can change them (e.g. ada_kimg = 100)."""
        self._stats = None
        if state.get('sign_count', 0) > 0:
            self._stats = torch.tensor([state['sign_sum'], state['sign_count']], dtype=torch.float64)


# Alternative name of the controller.
AdaController = AdaptiveAugment
