"""Fused bias + activation + gain + clamp (METHOD.md §11).

    y = clamp(gain * act(x + b), -clamp, clamp)

`b` is broadcast along dimension `dim` of `x`.  The pure-PyTorch reference (`impl='ref'`) is the
specification; `impl='cuda'` runs the kernel in cuda/bias_act.cu on CUDA tensors (built lazily on
first use) and falls back to the reference, with one warning, when the kernel cannot be built.
`impl='cuda'` on a CPU tensor runs the reference's own ops in place for relu/lrelu
(`_BiasActSaveOutput`: the same numbers, less memory) and the reference otherwise.

The CUDA path supports first and second order gradients: the first backward runs the same kernel
in its "gradient" mode, and the backward of that gradient is written with plain PyTorch ops
(closed-form second derivatives below), so autograd can go further if anyone asks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dnnlib import EasyDict
from torch_utils import custom_ops

_SELU_SCALE = 1.0507009873554805
_SELU_ALPHA = 1.6732632423543772


def _softplus_d1(x: torch.Tensor) -> torch.Tensor:
    # torch's softplus is linear above threshold 20, so its slope there is exactly 1.
    return torch.where(x > 20, torch.ones_like(x), torch.sigmoid(x))


def _softplus_d2(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return torch.where(x > 20, torch.zeros_like(x), s * (1 - s))


def _swish_d1(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _swish_d2(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s) * (2 + x * (1 - 2 * s))


def _positive(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).to(x.dtype)


# Each entry: func(x, alpha) -> act(x); d1/d2 (x, alpha) -> first/second derivative w.r.t. the
# pre-activation x (used by the CUDA path's double backward); def_alpha/def_gain are the
# defaults networks read; cuda_idx selects the branch in the kernel.  Only lrelu uses alpha.
activation_funcs: dict[str, EasyDict] = {
    'linear': EasyDict(
        func=lambda x, a: x,
        d1=lambda x, a: torch.ones_like(x),
        d2=lambda x, a: torch.zeros_like(x),
        def_alpha=0.0, def_gain=1.0, cuda_idx=1),
    'relu': EasyDict(
        func=lambda x, a: F.relu(x),
        d1=lambda x, a: _positive(x),
        d2=lambda x, a: torch.zeros_like(x),
        def_alpha=0.0, def_gain=math.sqrt(2), cuda_idx=2),
    'lrelu': EasyDict(
        func=lambda x, a: F.leaky_relu(x, a),
        d1=lambda x, a: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, a)),
        d2=lambda x, a: torch.zeros_like(x),
        def_alpha=0.2, def_gain=math.sqrt(2), cuda_idx=3),
    'tanh': EasyDict(
        func=lambda x, a: torch.tanh(x),
        d1=lambda x, a: 1 - torch.tanh(x) ** 2,
        d2=lambda x, a: -2 * torch.tanh(x) * (1 - torch.tanh(x) ** 2),
        def_alpha=0.0, def_gain=1.0, cuda_idx=4),
    'sigmoid': EasyDict(
        func=lambda x, a: torch.sigmoid(x),
        d1=lambda x, a: torch.sigmoid(x) * (1 - torch.sigmoid(x)),
        d2=lambda x, a: torch.sigmoid(x) * (1 - torch.sigmoid(x)) * (1 - 2 * torch.sigmoid(x)),
        def_alpha=0.0, def_gain=1.0, cuda_idx=5),
    'elu': EasyDict(
        func=lambda x, a: F.elu(x),
        d1=lambda x, a: torch.where(x > 0, torch.ones_like(x), torch.exp(x)),
        d2=lambda x, a: torch.where(x > 0, torch.zeros_like(x), torch.exp(x)),
        def_alpha=0.0, def_gain=1.0, cuda_idx=6),
    'selu': EasyDict(
        func=lambda x, a: F.selu(x),
        d1=lambda x, a: _SELU_SCALE * torch.where(x > 0, torch.ones_like(x), _SELU_ALPHA * torch.exp(x)),
        d2=lambda x, a: _SELU_SCALE * torch.where(x > 0, torch.zeros_like(x), _SELU_ALPHA * torch.exp(x)),
        def_alpha=0.0, def_gain=1.0, cuda_idx=7),
    'softplus': EasyDict(
        func=lambda x, a: F.softplus(x),
        d1=lambda x, a: _softplus_d1(x),
        d2=lambda x, a: _softplus_d2(x),
        def_alpha=0.0, def_gain=1.0, cuda_idx=8),
    'swish': EasyDict(
        func=lambda x, a: x * torch.sigmoid(x),
        d1=lambda x, a: _swish_d1(x),
        d2=lambda x, a: _swish_d2(x),
        def_alpha=0.0, def_gain=math.sqrt(2), cuda_idx=9),
}


def _resolve(act: str, alpha: float | None, gain: float | None, clamp: float | None):
    if act not in activation_funcs:
        raise ValueError(f'unknown activation {act!r}; choose from {sorted(activation_funcs)}')
    spec = activation_funcs[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)  # negative means "no clamp"
    return spec, alpha, gain, clamp


def _bias_shape(x: torch.Tensor, b: torch.Tensor, dim: int) -> list[int]:
    if b.ndim != 1 or b.shape[0] != x.shape[dim]:
        raise ValueError(f'bias of shape {tuple(b.shape)} does not match x.shape[{dim}] = {x.shape[dim]}')
    return [-1 if i == dim else 1 for i in range(x.ndim)]


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = 'linear',
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: str = 'cuda') -> torch.Tensor:
    """Add bias `b` along `dim`, apply `act`, scale by `gain`, clamp to [-clamp, clamp].

    x: any shape, float16/32/64.  b: [x.shape[dim]] or None.  alpha: lrelu slope (default 0.2).
    gain: default per activation (sqrt(2) for relu/lrelu/swish, else 1).  clamp: None = off.
    Returns a tensor of x's shape and dtype.
    """
    if impl not in ('cuda', 'ref'):
        raise ValueError(f"impl must be 'cuda' or 'ref', got {impl!r}")
    dim = dim % x.ndim if x.ndim else 0
    if impl == 'cuda' and x.is_cuda and _plugin() is not None:
        return _bias_act_cuda(x, b, dim, act, alpha, gain, clamp)
    if impl == 'cuda' and fused_cpu and x.device.type == 'cpu' and act in _SLOPE_FROM_OUTPUT:
        spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
        if gain > 0 and alpha >= 0:
            if b is not None:
                _bias_shape(x, b, dim)
            return _BiasActSaveOutput.apply(x, b, (dim, act, alpha, gain, clamp))
    return _bias_act_ref(x, b, dim, act, alpha, gain, clamp)


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp) -> torch.Tensor:
    """The specification, in differentiable PyTorch ops (any order of gradients)."""
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if b is not None:
        x = x + b.to(x.dtype).reshape(_bias_shape(x, b, dim))
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------------------------------------
# CPU path: the reference's ops, in place, keeping only what the gradient needs.
#
# For relu/lrelu with gain > 0 and alpha >= 0, the slope act'(x + b) is read off the sign of the
# output y (y > 0 exactly where x + b > 0), so the backward needs y, which the next layer keeps
# anyway (every consumer of an lrelu output here saves its input), and one bool per element for
# the clamp, instead of the reference's two saved float tensors (x + b and act(x + b)). Forward
# and first backward run the reference's ops in its order (the same numbers); the gradient's own
# backward (R1) is its adjoint. 'linear' keeps the reference, which saves at most one tensor.

fused_cpu = True  # False: CPU tensors take the reference (bench A/B)
_SLOPE_FROM_OUTPUT = ('relu', 'lrelu')


def _slope_times(g: torch.Tensor, y: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    """g · act'(x + b), act' taken from the sign of the output y."""
    return torch.where(y > 0, g, g * alpha) if act == 'lrelu' else torch.where(y > 0, g, torch.zeros_like(g))


class _BiasActSaveOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, params):
        dim, act, alpha, gain, clamp = params
        y = x + b.to(x.dtype).reshape(_bias_shape(x, b, dim)) if b is not None else x.clone()
        if act == 'lrelu':
            F.leaky_relu_(y, alpha)
        else:
            y.relu_()
        if gain != 1:
            y.mul_(gain)
        keep = None
        if clamp >= 0:
            keep = (y >= -clamp) & (y <= clamp)  # torch.clamp passes the gradient on the closed interval
            y.clamp_(-clamp, clamp)
        ctx.save_for_backward(y, keep)
        ctx.params = params
        ctx.has_bias = b is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        y, keep = ctx.saved_tensors
        dx = _BiasActSaveOutputGrad.apply(dy, y, keep, ctx.params)
        db = None
        if ctx.has_bias and ctx.needs_input_grad[1]:
            db = dx.sum([i for i in range(dx.ndim) if i != ctx.params[0]])
        return dx, db, None


class _BiasActSaveOutputGrad(torch.autograd.Function):
    """dx = act'(x + b) · gain · 1[|gain·act(x + b)| <= clamp] · dy, linear in dy; the slope and the
    mask are piecewise constant in x, so only dy gets a gradient."""

    @staticmethod
    def forward(ctx, dy, y, keep, params):
        _, act, alpha, gain, _ = params
        ctx.save_for_backward(y, keep)
        ctx.params = params
        g = torch.where(keep, dy, torch.zeros_like(dy)) if keep is not None else dy
        return _slope_times(g * gain if gain != 1 else g, y, act, alpha)

    @staticmethod
    def backward(ctx, d_dx):
        y, keep = ctx.saved_tensors
        _, act, alpha, gain, _ = ctx.params
        g = _slope_times(d_dx, y, act, alpha)
        g = g * gain if gain != 1 else g
        return (torch.where(keep, g, torch.zeros_like(g)) if keep is not None else g), None, None, None


# ---------------------------------------------------------------------------------------------
# CUDA path.

_plugin_state: list = []  # [] = not tried yet; [module or None] afterwards


def _plugin():
    """The compiled kernel, or None; built and self-tested on the first CUDA call only."""
    if not _plugin_state:
        module = custom_ops.get_plugin('bias_act_plugin', sources=['cuda/bias_act.cpp', 'cuda/bias_act.cu'],
                                       headers=['cuda/bias_act.h', 'cuda/bias_act_kernel.cuh'])
        if module is not None and not custom_ops.passes_self_test('bias_act_plugin', lambda: _self_test(module)):
            module = None
        _plugin_state.append(module)
    return _plugin_state[0]


def _self_test(module) -> bool:
    """Does the built kernel run here (right architecture, working launch) and agree with 'ref'?"""
    x = torch.linspace(-3, 3, 2 * 3 * 5, device='cuda').reshape(2, 3, 5)
    b = torch.tensor([0.5, -0.25, 1.0], device='cuda')
    y = module.bias_act_forward(x, b, 1, activation_funcs['lrelu'].cuda_idx, 0.2, 1.5, 2.0)
    dx = module.bias_act_grad(torch.ones_like(x), x, b, 1, activation_funcs['lrelu'].cuda_idx, 0.2, 1.5, 2.0)
    # Expected values without autograd, which may be off (no_grad / inference_mode) at first use.
    y_ref = _bias_act_ref(x, b, 1, 'lrelu', 0.2, 1.5, 2.0)
    xb = x + b[None, :, None]
    dx_ref = torch.where(xb > 0, 1.5, 0.3) * ((torch.where(xb > 0, xb, 0.2 * xb) * 1.5).abs() <= 2.0)
    return bool(torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(dx, dx_ref, atol=1e-5))


def _bias_act_cuda(x, b, dim, act, alpha, gain, clamp) -> torch.Tensor:
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if b is not None:
        _bias_shape(x, b, dim)
        b = b.to(x.dtype)
    else:
        b = x.new_empty([0])
    params = (dim, spec.cuda_idx, act, alpha, gain, clamp)
    # contiguous() here, outside the Function, so the saved x stays connected to the graph
    # (the double backward differentiates through it).
    return _BiasActCuda.apply(x.contiguous(), b.contiguous(), params)


def _reduce_to_bias(grad: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor | None:
    if b.numel() == 0:
        return None
    return grad.sum([i for i in range(grad.ndim) if i != dim])


def _expand_bias(x: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    return x + b.reshape(_bias_shape(x, b, dim)) if b.numel() else x


class _BiasActCuda(torch.autograd.Function):
    """y = clamp(gain * act(x + b)) by the kernel; backward through _BiasActCudaGrad."""

    @staticmethod
    def forward(ctx, x, b, params):
        dim, cuda_idx, _, alpha, gain, clamp = params
        ctx.save_for_backward(x, b)
        ctx.params = params
        return _plugin().bias_act_forward(x, b, dim, cuda_idx, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        dx = _BiasActCudaGrad.apply(dy, x, b, ctx.params)
        db = _reduce_to_bias(dx, b, ctx.params[0]) if ctx.needs_input_grad[1] else None
        return dx, db, None


class _BiasActCudaGrad(torch.autograd.Function):
    """dx = dy * gain * act'(x + b) * [|y| <= clamp] by the kernel; its own backward in torch ops."""

    @staticmethod
    def forward(ctx, dy, x, b, params):
        dim, cuda_idx, _, alpha, gain, clamp = params
        ctx.save_for_backward(dy, x, b)
        ctx.params = params
        return _plugin().bias_act_grad(dy.contiguous(), x, b, dim, cuda_idx, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, d_dx):
        dy, x, b = ctx.saved_tensors
        dim, _, act, alpha, gain, clamp = ctx.params
        spec = activation_funcs[act]
        xb = _expand_bias(x, b, dim)
        # torch.clamp passes gradient on the closed interval; keep that for parity with 'ref'.
        keep = (spec.func(xb, alpha) * gain).abs() <= clamp if clamp >= 0 else None
        scale = d_dx * gain
        if keep is not None:
            scale = scale * keep.to(scale.dtype)
        d_dy = scale * spec.d1(xb, alpha) if ctx.needs_input_grad[0] else None
        d_x = d_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_x = scale * dy * spec.d2(xb, alpha)
            d_b = _reduce_to_bias(d_x, b, dim) if ctx.needs_input_grad[2] else None
        return d_dy, d_x, d_b, None
