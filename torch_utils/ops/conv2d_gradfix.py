"""conv2d / conv_transpose2d whose backward can skip the weight gradient (METHOD.md §11).

On PyTorch 2.x the plain convolutions already have working double backward, so this module is
an optimisation, not a fix: inside `no_weight_gradients()` the backward of these convolutions
computes the input gradient only.  The R1 penalty needs exactly that: its first pass,
d logits / d images (with create_graph), has no use for d logits / d weights, while the second
pass (the penalty's own gradient w.r.t. the weights) still flows through the input gradient,
which is built from differentiable ops.

The flag is read when the backward runs, so wrap the `torch.autograd.grad` call, not the forward.
Set `enabled = False` to use torch.nn.functional directly.
"""

from __future__ import annotations

import contextlib
from typing import Sequence, Union

import torch
import torch.nn.functional as F

enabled = True
weight_gradients_disabled = False

IntOrPair = Union[int, Sequence[int]]


@contextlib.contextmanager
def no_weight_gradients(disable: bool = True):
    """Inside the block, backward passes of these convolutions leave the weight gradient out."""
    global weight_gradients_disabled
    previous = weight_gradients_disabled
    if disable:
        weight_gradients_disabled = True
    try:
        yield
    finally:
        weight_gradients_disabled = previous


def _pair(value: IntOrPair) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    return value if len(value) == 2 else (value[0], value[0])


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: IntOrPair = 1, padding: IntOrPair = 0, dilation: IntOrPair = 1,
           groups: int = 1) -> torch.Tensor:
    """Same as F.conv2d (input [N, I, H, W], weight [O, I/groups, kh, kw])."""
    if not enabled or isinstance(padding, str):
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    params = dict(transposed=False, stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation),
                  output_padding=(0, 0), groups=groups)
    return _Convolution.apply(input, weight, bias, params)


def conv_transpose2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: IntOrPair = 1, padding: IntOrPair = 0, output_padding: IntOrPair = 0,
                     groups: int = 1, dilation: IntOrPair = 1) -> torch.Tensor:
    """Same as F.conv_transpose2d (input [N, I, H, W], weight [I, O/groups, kh, kw])."""
    if not enabled:
        return F.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    params = dict(transposed=True, stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation),
                  output_padding=_pair(output_padding), groups=groups)
    return _Convolution.apply(input, weight, bias, params)


def _convolve(input, weight, bias, p) -> torch.Tensor:
    if p['transposed']:
        return F.conv_transpose2d(input, weight, bias, p['stride'], p['padding'], p['output_padding'],
                                  p['groups'], p['dilation'])
    return F.conv2d(input, weight, bias, p['stride'], p['padding'], p['dilation'], p['groups'])


# Per-sample size (C·H·W) of an NHWC input from which the weight gradient is taken in NCHW on a CPU.
# oneDNN's (3.12, AVX2) NHWC weight gradient measured, one thread, against NCHW copies of its
# inputs: 128 ch at 128² 3.40 s vs 1.20 s, 256 at 64² 2.13 vs 1.14, 128 at 64² 0.28 vs 0.24,
# 256 at 32² 0.23 vs 0.23, 32 at 32² 0.009 vs 0.019 (the copies cost more than they save).
NCHW_WEIGHT_GRAD_MIN_SIZE = 128 * 64 * 64


def _wide_nhwc_on_cpu(x: torch.Tensor) -> bool:
    return x.device.type == 'cpu' and x.dim() == 4 and x[0].numel() >= NCHW_WEIGHT_GRAD_MIN_SIZE and \
        not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class _Convolution(torch.autograd.Function):
    """Forward: the torch convolution.  Backward: aten's convolution_backward, asked only for the
    gradients that are wanted (and not for the weight's inside no_weight_gradients); aten's
    convolution_backward is itself differentiable, so double backward (R1) keeps working."""

    @staticmethod
    def forward(ctx, input, weight, bias, params):
        ctx.save_for_backward(input, weight)
        ctx.params = params
        ctx.has_bias = bias is not None
        return _convolve(input, weight, bias, params)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        p = ctx.params
        want_input = ctx.needs_input_grad[0]
        want_weight = ctx.needs_input_grad[1] and not weight_gradients_disabled
        want_bias = ctx.has_bias and ctx.needs_input_grad[2]
        grad_input = grad_weight = grad_bias = None
        args = (list(p['stride']), list(p['padding']), list(p['dilation']), p['transposed'],
                list(p['output_padding']), p['groups'])
        if want_weight and _wide_nhwc_on_cpu(input):
            # The forward and the input gradient are as fast or faster in NHWC, the weight gradient
            # of wide layers up to 3x slower: take it from NCHW copies. Same sums, other order.
            _, grad_weight, _ = torch.ops.aten.convolution_backward(
                grad_output.contiguous(), input.contiguous(), weight.contiguous(), None, *args, [False, True, False])
            want_weight = False
        if want_input or want_weight:
            grad_input, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_output, input, weight, None, *args, [want_input, want_weight, False])
            grad_weight = grad_w if want_weight else grad_weight
        if want_bias:
            grad_bias = grad_output.sum([0, 2, 3])
        return grad_input, grad_weight, grad_bias, None
