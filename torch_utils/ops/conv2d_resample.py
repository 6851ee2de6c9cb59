"""2-D convolution with optional FIR up/down-sampling (METHOD.md §11).

Definition (the slow composition, `_conv2d_resample_slow`, which the tests compare against):

    P  = padding + up-filter padding + down-filter padding          (all on the up-sampled grid)
    u  = upfirdn2d(x, f if up > 1 else None, up=up, padding=P, gain=up^2)
    c  = conv2d(u, w)                                              ("valid", no padding)
    y  = upfirdn2d(c, f, down=down) if down > 1 else c

with the filter paddings of `upsample2d` ((fw+up-1)//2, (fw-up)//2) and `downsample2d`
((fw-down+1)//2, (fw-down)//2).  So a 3x3 conv with padding=1 keeps the size, up=2 doubles it and
down=2 halves it.  flip_weight=True means w is correlated (torch's F.conv2d convention),
False means a true convolution (w flipped spatially).

Fast paths, each derived in its function's docstring: 1x1 kernels commute with the filters;
up > 1 is a stride-up transposed convolution followed by the FIR filter; down > 1 is the FIR
filter followed by a stride-down convolution.
"""

from __future__ import annotations

import torch

from torch_utils.ops import conv2d_gradfix, upfirdn2d
from torch_utils.ops.upfirdn2d import IntOrPair, _get_filter_size, _parse_padding


def _conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding=0, groups: int = 1,
          transpose: bool = False, flip_weight: bool = True) -> torch.Tensor:
    """conv2d (transpose=False, w [O, I/g, kh, kw]) or its transpose with the same w, stride s.

    flip_weight=False makes both a true convolution with w.  For the transpose, conv_transpose2d
    scatters x[i] * w'[k] to output i*s + k, which is a convolution with w'; to realise the
    correlation with w (flip_weight=True) we pass w' = w flipped.
    """
    flip = (not flip_weight) if not transpose else flip_weight
    if flip and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    if not transpose:
        return conv2d_gradfix.conv2d(x, w, stride=stride, padding=padding, groups=groups)
    # conv_transpose2d wants [I, O/g, kh, kw]: regroup [g*O/g, I/g, ...] -> [g*I/g, O/g, ...].
    out_channels, in_per_group, kh, kw = w.shape
    w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
    w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    return conv2d_gradfix.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)


def _total_padding(f, up: int, down: int, padding) -> tuple[int, int, int, int]:
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    return px0, px1, py0, py1


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1,
                    down: int = 1, padding: IntOrPair = 0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """Convolve x [N, I, H, W] with w [O, I/groups, kh, kw], up/down-sampling with FIR f.

    f: filter from `upfirdn2d.setup_filter` (2-D or separable 1-D), or None (= [[1]]).
    up, down: integer factors >= 1.  padding: int, [x, y] or [x0, x1, y0, y1] (on the up-sampled grid).
    Returns [N, O, H', W'], e.g. H' = H*up/down for a kh x kw kernel with padding kh//2 and an
    even-length f; in general the sizes of the slow composition in the module docstring.
    """
    if not (isinstance(x, torch.Tensor) and x.ndim == 4 and isinstance(w, torch.Tensor) and w.ndim == 4):
        raise ValueError('x and w must be 4-D tensors')
    up, down = int(up), int(down)
    if up < 1 or down < 1:
        raise ValueError(f'up and down must be >= 1, got up={up}, down={down}')
    if w.dtype != x.dtype:
        raise ValueError(f'x ({x.dtype}) and w ({w.dtype}) must have the same dtype')
    pad = _total_padding(f, up, down, padding)
    px0, px1, py0, py1 = pad
    kh, kw = w.shape[2], w.shape[3]

    # A 1x1 conv mixes channels pixel by pixel and the FIR ops treat every channel alike, so they
    # commute: run the conv at the lower resolution (down-sample first, up-sample last).
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)

    if down > 1 and up == 1:
        return _filter_then_strided_conv(x, w, f, down, pad, groups, flip_weight, flip_filter)
    if up > 1 and down == 1:
        return _transposed_conv_then_filter(x, w, f, up, pad, groups, flip_weight, flip_filter)

    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    return _conv2d_resample_slow(x, w, f, up, down, pad, groups, flip_weight, flip_filter)


def _conv2d_resample_slow(x, w, f, up, down, pad, groups, flip_weight, flip_filter) -> torch.Tensor:
    """The definition, with `pad` the total padding from `_total_padding`."""
    x = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x


def _filter_then_strided_conv(x, w, f, down, pad, groups, flip_weight, flip_filter) -> torch.Tensor:
    """down > 1, up = 1.

    Slow: keep every down-th sample of filter(conv(pad(x))).  The FIR filter and the (valid)
    convolution are both shift-invariant and the filter treats every channel alike, so they
    commute, with the same output length (L - fw + 1 - kw + 1 either way).  Sub-sampling right
    after the convolution is a convolution with stride `down`.
    """
    x = upfirdn2d.upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
    return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)


def _transposed_conv_then_filter(x, w, f, up, pad, groups, flip_weight, flip_filter) -> torch.Tensor:
    """up > 1, down = 1.

    Along one axis, with input length H, kernel length K, stride s = up and total padding (a, b):
    the slow path correlates K taps w with Z = pad(zero_insert(x), a, b), giving
        c[o] = sum_{i,k : i*s = o + k - a} x[i] w[k],        o in [0, H*s + a + b - K].
    With k' = K-1-k (w' = w flipped) that is o = i*s + k' - (K-1-a): exactly the "full"
    transposed convolution t[j] = sum_{i*s + k' = j} x[i] w'[k'] (length (H-1)*s + K) read at
    j = o + K-1-a.  So c = t with K-1-a samples removed in front and K-s-b at the back
    (negative = zeros added, since t is zero outside its support).  The FIR filter commutes with
    the convolution (see `_filter_then_strided_conv`), so it can run last, on c.  The symmetric
    part of the crop is done by conv_transpose2d's own padding, the rest by upfirdn2d's.
    """
    px0, px1, py0, py1 = pad
    kh, kw = w.shape[2], w.shape[3]
    crop_x0, crop_x1 = kw - 1 - px0, kw - up - px1
    crop_y0, crop_y1 = kh - 1 - py0, kh - up - py1
    shared_x = max(min(crop_x0, crop_x1), 0)
    shared_y = max(min(crop_y0, crop_y1), 0)
    x = _conv(x, w, stride=up, padding=[shared_y, shared_x], groups=groups, transpose=True,
              flip_weight=flip_weight)
    rest = [shared_x - crop_x0, shared_x - crop_x1, shared_y - crop_y0, shared_y - crop_y1]
    return upfirdn2d.upfirdn2d(x, f, padding=rest, gain=up ** 2, flip_filter=flip_filter)
