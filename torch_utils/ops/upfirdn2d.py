"""Up-sample, FIR-filter, down-sample a batch of 2-D images (METHOD.md §11).

For every channel independently, `upfirdn2d` does, in order:
  1. up-sample by inserting up-1 zeros after every sample (so the length becomes H*up);
  2. zero-pad by `padding` (a negative amount crops);
  3. convolve, in the "valid" sense, with the FIR filter f scaled by gain^(f.ndim/2)
     (a true convolution; a correlation when flip_filter=True);
  4. keep every down-th sample, starting with the first.
Output height: (H*up_y + pad_y0 + pad_y1 - fh) // down_y + 1 (likewise for width).

A filter is a 2-D tensor [fh, fw], or a 1-D tensor [fw] meaning the separable filter f ⊗ f
(applied once along x and once along y).  `setup_filter` prepares filters.  The pure-PyTorch
reference (`impl='ref'`) is the specification; `impl='cuda'` runs cuda/upfirdn2d.cu on CUDA
tensors (lazy build, one warning and the reference on failure; 'cuda' on CPU means 'ref').
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

from torch_utils import custom_ops

IntOrPair = Union[int, Sequence[int]]


def _parse_scaling(scaling: IntOrPair) -> tuple[int, int]:
    """int or [sx, sy] -> (sx, sy), each >= 1."""
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    sx, sy = (int(s) for s in scaling)
    if sx < 1 or sy < 1:
        raise ValueError(f'up/down factors must be >= 1, got {scaling}')
    return sx, sy


def _parse_padding(padding: IntOrPair) -> tuple[int, int, int, int]:
    """int, [px, py] or [px0, px1, py0, py1] -> (px0, px1, py0, py1)."""
    if isinstance(padding, int):
        padding = [padding, padding]
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    if len(padding) != 4:
        raise ValueError(f'padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding}')
    return tuple(padding)


def _get_filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(fw, fh) of a 2-D, separable 1-D, or absent filter."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f'filter must be 1-D or 2-D, got shape {tuple(f.shape)}')
    fw = f.shape[-1]
    fh = f.shape[0]
    return int(fw), int(fh)


def setup_filter(f, device: torch.device = torch.device('cpu'), normalize: bool = True,
                 flip_filter: bool = False, gain: float = 1, separable: bool | None = None) -> torch.Tensor:
    """Turn a list/array/tensor of taps into a float32 filter for `upfirdn2d`.

    f: None (identity, [[1]]), a scalar, 1-D taps or a 2-D kernel.
    separable: keep a 1-D filter 1-D (applied along x and y); None = only when it has >= 8 taps,
        so short filters such as [1, 3, 3, 1] become their 2-D outer product [4, 4].
    normalize: scale so the (2-D equivalent) filter sums to 1.  gain: overall gain folded in,
        as gain^(ndim/2) per filter.  flip_filter: flip the taps.
    Returns [fh, fw] or [fw], float32, on `device`.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f'filter must have 1 or 2 dimensions and some taps, got shape {tuple(f.shape)}')
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if separable and f.ndim != 1:
        raise ValueError('a separable filter must be 1-D')
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: IntOrPair = 1, down: IntOrPair = 1,
              padding: IntOrPair = 0, flip_filter: bool = False, gain: float = 1,
              impl: str = 'cuda') -> torch.Tensor:
    """Up-sample, pad, FIR-filter and down-sample x [N, C, H, W]; see the module docstring.

    f: [fh, fw], separable [fw], or None (= [[1]]).  up/down: int or [x, y].
    padding: int, [x, y] or [x0, x1, y0, y1] (negative crops).
    Returns [N, C, (H*up_y + py0 + py1 - fh) // down_y + 1, (same along x)], x's dtype.
    """
    if impl not in ('cuda', 'ref'):
        raise ValueError(f"impl must be 'cuda' or 'ref', got {impl!r}")
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError('x must be a 4-D tensor [N, C, H, W]')
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padding = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    _check_output_size(x, upx, upy, downx, downy, padding, fw, fh)
    if impl == 'cuda' and x.is_cuda and _plugin() is not None:
        return _upfirdn2d_cuda(x, f, (upx, upy), (downx, downy), padding, flip_filter, gain)
    return _upfirdn2d_ref(x, f, (upx, upy), (downx, downy), padding, flip_filter, gain)


def _check_output_size(x, upx, upy, downx, downy, padding, fw, fh) -> None:
    px0, px1, py0, py1 = padding
    width = x.shape[3] * upx + px0 + px1 - fw
    height = x.shape[2] * upy + py0 + py1 - fh
    if width < 0 or height < 0:
        raise ValueError(f'upfirdn2d: padded input is smaller than the filter '
                         f'(input {tuple(x.shape)}, filter {fh}x{fw}, up {upx, upy}, padding {padding})')


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain) -> torch.Tensor:
    """The specification: zero insertion, pad/crop, grouped conv2d, strided slicing."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    n, c, h, w = x.shape

    # 1. Zero insertion: each sample followed by up-1 zeros.
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    # 2. Pad with zeros, then crop where the padding is negative. Symmetric padding is left to the
    #    convolution below: the same zeros, without a padded copy that its backward would keep.
    symmetric = px0 == px1 >= 0 and py0 == py1 >= 0
    inner = (py0, px0) if symmetric else (0, 0)
    if not symmetric:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
        x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    # 3. FIR filter.  conv2d correlates, so a true convolution needs the taps flipped.
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), padding=inner, groups=c)
    else:
        x = F.conv2d(x, f[None, None, None, :].expand(c, 1, 1, f.shape[0]), padding=(0, inner[1]), groups=c)
        x = F.conv2d(x, f[None, None, :, None].expand(c, 1, f.shape[0], 1), padding=(inner[0], 0), groups=c)

    # 4. Keep every down-th sample.
    return x[:, :, ::downy, ::downx]


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding: IntOrPair = 0, flip_filter: bool = False,
             gain: float = 1, impl: str = 'cuda') -> torch.Tensor:
    """Filter x [N, C, H, W] with f, padded so the output keeps the size H x W (plus `padding`)."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    # A filter of length k needs k-1 extra samples; the odd one goes in front.
    padding = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=padding, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: IntOrPair = 2, padding: IntOrPair = 0,
               flip_filter: bool = False, gain: float = 1, impl: str = 'cuda') -> torch.Tensor:
    """Up-sample x [N, C, H, W] to [N, C, H*up, W*up] (plus `padding`) with FIR filter f.

    The gain up^2 (up_x*up_y) restores the mean lost to the inserted zeros.
    """
    upx, upy = _parse_scaling(up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    padding = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2,
               py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=padding, flip_filter=flip_filter,
                     gain=gain * upx * upy, impl=impl)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: IntOrPair = 2, padding: IntOrPair = 0,
                 flip_filter: bool = False, gain: float = 1, impl: str = 'cuda') -> torch.Tensor:
    """Low-pass with f and down-sample x [N, C, H, W] to [N, C, H/down, W/down] (plus `padding`)."""
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    padding = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2,
               py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=padding, flip_filter=flip_filter,
                     gain=gain, impl=impl)


# ---------------------------------------------------------------------------------------------
# CUDA path.  The kernel correlates with a 2-D tap array; gain and flipping are folded in here,
# and a separable filter runs as two passes (x then y).

_plugin_state: list = []  # [] = not tried yet; [module or None] afterwards


def _plugin():
    """The compiled kernel, or None; built and self-tested on the first CUDA call only."""
    if not _plugin_state:
        module = custom_ops.get_plugin('upfirdn2d_plugin', sources=['cuda/upfirdn2d.cpp', 'cuda/upfirdn2d.cu'],
                                       headers=['cuda/upfirdn2d.h', 'cuda/upfirdn2d_kernel.cuh'])
        if module is not None and not custom_ops.passes_self_test('upfirdn2d_plugin', lambda: _self_test(module)):
            module = None
        _plugin_state.append(module)
    return _plugin_state[0]


def _self_test(module) -> bool:
    """Does the built kernel run here (right architecture, working launch) and agree with 'ref'?"""
    x = torch.linspace(-1, 1, 2 * 5 * 4, device='cuda').reshape(1, 2, 5, 4)
    taps = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], device='cuda')
    y = module.upfirdn2d(x, taps, 2, 1, 1, 2, 1, 2, -1, 3)
    y_ref = _upfirdn2d_ref(x, taps, (2, 1), (1, 2), (1, 2, -1, 3), True, 1)
    return y.shape == y_ref.shape and bool(torch.allclose(y, y_ref, atol=1e-5))


def _upfirdn2d_cuda(x, f, up, down, padding, flip_filter, gain) -> torch.Tensor:
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    tap_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # what the kernel reads
    f = f.to(device=x.device, dtype=tap_dtype) * (gain ** (f.ndim / 2))
    if f.ndim == 2:
        return _Upfirdn2dCuda.apply(x, f, (upx, upy, downx, downy, px0, px1, py0, py1, flip_filter))
    x = _Upfirdn2dCuda.apply(x, f[None, :], (upx, 1, downx, 1, px0, px1, 0, 0, flip_filter))
    return _Upfirdn2dCuda.apply(x, f[:, None], (1, upy, 1, downy, 0, 0, py0, py1, flip_filter))


def _adjoint_padding(in_size: int, out_size: int, up: int, down: int, pad0: int, pad1: int,
                     taps: int) -> tuple[int, int]:
    """Padding of the upfirdn (up=down, down=up, flipped taps) that is the adjoint along one axis.

    Forward: length in_size*up, padded to L = in_size*up + pad0 + pad1, filtered to M = L - taps + 1,
    then samples 0, down, ..., (out_size-1)*down kept.  The adjoint inserts zeros (length
    out_size*down, i.e. M plus (out_size*down - M) extra), pads by taps-1 for the full
    correlation, removes pad0/pad1 again, and keeps every up-th sample of the in_size*up result.
    """
    filtered = in_size * up + pad0 + pad1 - taps + 1
    return taps - 1 - pad0, taps - 1 - pad1 + filtered - out_size * down


class _Upfirdn2dCuda(torch.autograd.Function):
    """upfirdn2d with a 2-D filter by the kernel; its gradient is another upfirdn2d, so any order works."""

    @staticmethod
    def forward(ctx, x, f, params):
        upx, upy, downx, downy, px0, px1, py0, py1, flip_filter = params
        taps = f if flip_filter else f.flip([0, 1])
        y = _plugin().upfirdn2d(x.contiguous(), taps.contiguous(), upx, upy, downx, downy, px0, px1, py0, py1)
        ctx.save_for_backward(f)
        ctx.params = params
        ctx.in_shape = x.shape
        ctx.out_shape = y.shape
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        upx, upy, downx, downy, px0, px1, py0, py1, flip_filter = ctx.params
        fh, fw = f.shape
        _, _, in_h, in_w = ctx.in_shape
        _, _, out_h, out_w = ctx.out_shape
        qx0, qx1 = _adjoint_padding(in_w, out_w, upx, downx, px0, px1, fw)
        qy0, qy1 = _adjoint_padding(in_h, out_h, upy, downy, py0, py1, fh)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = _Upfirdn2dCuda.apply(dy, f, (downx, downy, upx, upy, qx0, qx1, qy0, qy1, not flip_filter))
        return dx, None, None
