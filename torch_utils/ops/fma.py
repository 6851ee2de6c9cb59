"""Fused multiply-add a*b + c with broadcasting (METHOD.md §11)."""

from __future__ import annotations

import torch


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a * b + c for broadcast-compatible tensors; result has the broadcast shape."""
    return _FusedMultiplyAdd.apply(a, b, c)


def _sum_to_shape(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo broadcasting: sum x over the dimensions that were expanded to reach its shape."""
    extra = x.ndim - len(shape)
    if extra:
        x = x.sum(list(range(extra)))
    expanded = [i for i, size in enumerate(shape) if size == 1 and x.shape[i] != 1]
    if expanded:
        x = x.sum(expanded, keepdim=True)
    return x


class _FusedMultiplyAdd(torch.autograd.Function):
    """torch.addcmul in one kernel; the backward is ordinary ops, so it differentiates further."""

    @staticmethod
    def forward(ctx, a, b, c):
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return torch.addcmul(c, a, b)

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved_tensors
        da = _sum_to_shape(dout * b, a.shape) if ctx.needs_input_grad[0] else None
        db = _sum_to_shape(dout * a, b.shape) if ctx.needs_input_grad[1] else None
        dc = _sum_to_shape(dout, ctx.c_shape) if ctx.needs_input_grad[2] else None
        return da, db, dc
