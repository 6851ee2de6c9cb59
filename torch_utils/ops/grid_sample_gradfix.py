"""Bilinear grid_sample that can be differentiated twice (METHOD.md §11).

R1 through ADA's geometric warp differentiates d logits / d images once more, which needs the
derivative of grid_sample's backward; PyTorch's grid_sampler_2d_backward has none.

Design: the forward is F.grid_sample (bilinear, zeros padding, align_corners=False).  Its backward
uses aten's fast grid_sampler_2d_backward when no graph is being built, and otherwise the same
gradients written out in plain differentiable PyTorch ops (gather / index_add), so autograd
supplies every higher derivative, with respect to the input, the grid and the incoming gradient.

Convention (align_corners=False): grid x = -1 is the left edge of pixel 0, +1 the right edge of
pixel W-1, so the continuous pixel coordinate is ix = ((gx + 1) * W - 1) / 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

enabled = True


def grid_sample(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample input [N, C, H, W] at grid [N, Ho, Wo, 2] (x, y in [-1, 1]) -> [N, C, Ho, Wo].

    Bilinear, zero outside the image, align_corners=False; twice differentiable.
    """
    if input.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != input.shape[0]:
        raise ValueError(f'expected input [N, C, H, W] and grid [N, Ho, Wo, 2], got '
                         f'{tuple(input.shape)} and {tuple(grid.shape)}')
    if not enabled:
        return F.grid_sample(input, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    return _GridSample.apply(input, grid)


class _GridSample(torch.autograd.Function):

    @staticmethod
    def forward(ctx, input, grid):
        ctx.save_for_backward(input, grid)
        return F.grid_sample(input, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

    @staticmethod
    def backward(ctx, grad_output):
        input, grid = ctx.saved_tensors
        want = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
        if torch.is_grad_enabled():
            # Building a graph (create_graph=True): differentiable formulas.
            grad_input, grad_grid = _grid_sample_backward_ref(grad_output, input, grid)
            return (grad_input if want[0] else None), (grad_grid if want[1] else None)
        grad_input, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_output, input, grid, 0, 0, False, want)
        return (grad_input if want[0] else None), (grad_grid if want[1] else None)


def _corners(input: torch.Tensor, grid: torch.Tensor):
    """The four bilinear neighbours of every grid point.

    Returns (flat_index, valid, weight_x, weight_y) lists of 4 entries, each [N, Ho*Wo]; flat_index
    is clamped into the image (valid marks the real ones), weight_x/y are differentiable in grid,
    plus (frac_x, frac_y).
    """
    n, c, h, w = input.shape
    ix = ((grid[..., 0] + 1) * w - 1) / 2
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    ix, iy = ix.reshape(n, -1), iy.reshape(n, -1)
    x0 = torch.floor(ix).detach()
    y0 = torch.floor(iy).detach()
    fx, fy = ix - x0, iy - y0
    x0, y0 = x0.long(), y0.long()
    result = []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xs, ys = x0 + dx, y0 + dy
            valid = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
            index = ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)
            result.append((index, valid, wx, wy))
    return result, fx, fy


def _gather(flat: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """flat [N, C, H*W], index/valid [N, P] -> [N, C, P] with zeros where not valid."""
    values = flat.gather(2, index[:, None, :].expand(-1, flat.shape[1], -1))
    return values * valid[:, None, :].to(flat.dtype)


def grid_sample_ref(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Same as `grid_sample`, in gather ops only (any order of gradients; slower)."""
    n, c, h, w = input.shape
    corners, _, _ = _corners(input, grid)
    flat = input.reshape(n, c, h * w)
    out = sum(_gather(flat, index, valid) * (wx * wy)[:, None, :] for index, valid, wx, wy in corners)
    return out.reshape(n, c, *grid.shape[1:3])


def _grid_sample_backward_ref(grad_output, input, grid):
    """(d/d input, d/d grid) of <grad_output, grid_sample(input, grid)>, in differentiable ops."""
    n, c, h, w = input.shape
    corners, fx, fy = _corners(input, grid)
    flat = input.reshape(n, c, h * w)
    g = grad_output.reshape(n, c, -1)

    # d/d input: scatter each output's gradient back to its four neighbours.
    grad_flat = torch.zeros_like(flat)
    for index, valid, wx, wy in corners:
        contribution = g * (wx * wy * valid.to(g.dtype))[:, None, :]
        grad_flat = grad_flat.scatter_add(2, index[:, None, :].expand(-1, c, -1), contribution)
    grad_input = grad_flat.reshape(n, c, h, w)

    # d/d grid: the bilinear surface's slope along x and y, times d ix / d gx = W / 2.
    v00, v10, v01, v11 = (_gather(flat, index, valid) for index, valid, _, _ in corners)
    fx, fy = fx[:, None, :], fy[:, None, :]
    slope_x = (1 - fy) * (v10 - v00) + fy * (v11 - v01)
    slope_y = (1 - fx) * (v01 - v00) + fx * (v11 - v10)
    grad_gx = (g * slope_x).sum(1) * (w / 2)
    grad_gy = (g * slope_y).sum(1) * (h / 2)
    grad_grid = torch.stack([grad_gx, grad_gy], dim=-1).reshape(grid.shape)
    return grad_input, grad_grid
