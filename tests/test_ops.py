"""torch_utils.ops against independent computations (numpy/scipy, torch's own functions).

CPU tests check the pure-PyTorch references; tests marked `gpu` check the CUDA kernels against
those references (forward, first and second order gradients, float32 and float16).
"""

import hashlib
import math
import os
import shutil
import types
import warnings

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from torch_utils import custom_ops
from torch_utils.ops import bias_act, conv2d_gradfix, conv2d_resample, fma, grid_sample_gradfix, upfirdn2d




def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# upfirdn2d


def _upfirdn2d_numpy(x, f, up, down, padding, flip_filter, gain):
    """Per channel: zero insertion, np.pad / crop, scipy convolve (or correlate), slicing."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    f2 = np.outer(f, f) if f.ndim == 1 else f
    f2 = f2 * gain  # gain^(ndim/2) per filter = gain overall for the 2-D equivalent
    n, c, h, w = x.shape
    out = []
    for image in x.reshape(n * c, h, w):
        u = np.zeros((h * upy, w * upx))
        u[::upy, ::upx] = image
        u = np.pad(u, ((max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
        u = u[max(-py0, 0): u.shape[0] - max(-py1, 0), max(-px0, 0): u.shape[1] - max(-px1, 0)]
        op = scipy.signal.correlate2d if flip_filter else scipy.signal.convolve2d
        v = op(u, f2, mode='valid')
        out.append(v[::downy, ::downx])
    out = np.stack(out)
    return out.reshape(n, c, *out.shape[1:])


UPFIRDN_CASES = [
    # up, down, padding, filter, flip_filter, gain
    (1, 1, 0, [[1, 2], [3, 4]], False, 1),
    (2, 1, [2, 1], [1, 3, 3, 1], False, 4),
    (1, 2, [1, 1, 1, 1], [1, 3, 3, 1], False, 1),
    ([2, 3], [1, 2], [1, 2, 0, 3], [[1, 2, 0], [0, 5, 1]], True, 2.5),
    (3, 2, [-1, 2, 3, -2], [1, -2, 4, 1, 0.5], False, 1),
    (1, [3, 1], [-2, -1, 0, 1], [[1, 0, 2], [4, 1, 1], [0, 3, 1]], True, 1),
    (2, 2, 3, [1, 2, 3, 4, 3, 2, 1, 1, 2], True, 0.5),  # >= 8 taps: stays separable
]


@pytest.mark.parametrize('up, down, padding, taps, flip_filter, gain', UPFIRDN_CASES)
def test_upfirdn2d_matches_scipy_composition(up, down, padding, taps, flip_filter, gain):
    rng = _rng(1)
    x = rng.standard_normal((2, 3, 7, 6))
    taps = np.asarray(taps, dtype=np.float64)
    f = torch.tensor(taps)
    y = upfirdn2d.upfirdn2d(torch.tensor(x), f, up=up, down=down, padding=padding,
                            flip_filter=flip_filter, gain=gain, impl='ref')
    expected = _upfirdn2d_numpy(x, taps, upfirdn2d._parse_scaling(up), upfirdn2d._parse_scaling(down),
                                upfirdn2d._parse_padding(padding), flip_filter, gain)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_upfirdn2d_separable_equals_outer_product_filter():
    x = torch.randn(1, 2, 9, 8, dtype=torch.float64)
    f = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    separable = upfirdn2d.upfirdn2d(x, f, up=2, down=1, padding=[2, 1, 1, 2], gain=3)
    full = upfirdn2d.upfirdn2d(x, torch.outer(f, f), up=2, down=1, padding=[2, 1, 1, 2], gain=3)
    torch.testing.assert_close(separable, full)


def test_upfirdn2d_cuda_impl_on_cpu_tensor_is_the_reference():
    x = torch.randn(1, 2, 5, 5)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # CPU tensors must never try (and warn about) a build
        a = upfirdn2d.upfirdn2d(x, f, up=2, padding=1, impl='cuda')
    b = upfirdn2d.upfirdn2d(x, f, up=2, padding=1, impl='ref')
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_setup_filter_short_taps_become_normalised_outer_product():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    expected = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64
    assert f.shape == (4, 4) and f.dtype == torch.float32
    np.testing.assert_allclose(f.numpy(), expected, rtol=1e-7)


def test_setup_filter_long_taps_stay_separable_and_gain_is_per_dimension():
    f = upfirdn2d.setup_filter(np.ones(8), gain=4)
    assert f.shape == (8,)
    np.testing.assert_allclose(f.numpy(), np.full(8, 2 / 8), rtol=1e-7)  # 4^(1/2) / 8
    f2 = upfirdn2d.setup_filter([1, 2], separable=False, flip_filter=True, gain=4)
    np.testing.assert_allclose(f2.numpy(), 4 * np.array([[4, 2], [2, 1]]) / 9, rtol=1e-6)
    assert upfirdn2d.setup_filter(None).tolist() == [[1.0]]


# Filters whose polyphase components all have the same sum (so zero insertion + filtering
# reproduces a constant exactly); [1, 3, 3, 1] is such a filter for factor 2 only.
@pytest.mark.parametrize('factor, taps', [(2, [1, 3, 3, 1]), (3, [1, 2, 3, 2, 1]), (4, [1, 1, 1, 1])])
def test_upsample_downsample_keep_a_constant_image_constant_in_the_interior(factor, taps):
    x = torch.full((1, 2, 12, 12), 0.7, dtype=torch.float64)
    f = upfirdn2d.setup_filter(taps).double()
    up = upfirdn2d.upsample2d(x, f, up=factor)
    down = upfirdn2d.downsample2d(x, f, down=factor)
    assert up.shape == (1, 2, 12 * factor, 12 * factor)
    assert down.shape == (1, 2, 12 // factor, 12 // factor)
    torch.testing.assert_close(up[..., 4:-4, 4:-4], torch.full_like(up[..., 4:-4, 4:-4], 0.7))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 0.7))


def test_filter2d_keeps_size_and_equals_centred_scipy_convolution():
    rng = _rng(2)
    x = rng.standard_normal((1, 1, 8, 9))
    taps = rng.standard_normal((3, 4))
    y = upfirdn2d.filter2d(torch.tensor(x), torch.tensor(taps))
    assert y.shape == x.shape
    # Even length 4 along x: two samples of padding in front, one behind (scipy's 'same' centring).
    expected = scipy.signal.convolve2d(np.pad(x[0, 0], ((1, 1), (2, 1))), taps, mode='valid')
    np.testing.assert_allclose(y[0, 0].numpy(), expected, rtol=1e-10, atol=1e-10)


def test_upsample2d_of_a_single_impulse_is_the_filter_times_gain():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 1] = 1
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).double()
    y = upfirdn2d.upsample2d(x, f)
    # The impulse at upsampled position 2 spreads over 2-2+1 .. 2+2 = [1, 4], times up^2 = 4.
    torch.testing.assert_close(y[0, 0, 1:5, 1:5], 4 * f)
    assert y.sum().item() == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------------
# bias_act

TORCH_ACTIVATIONS = {
    'linear': lambda x: x,
    'relu': F.relu,
    'lrelu': lambda x: F.leaky_relu(x, 0.2),
    'tanh': torch.tanh,
    'sigmoid': torch.sigmoid,
    'elu': F.elu,
    'selu': F.selu,
    'softplus': F.softplus,
    'swish': lambda x: x * torch.sigmoid(x),
}
DEFAULT_GAINS = {'relu': math.sqrt(2), 'lrelu': math.sqrt(2), 'swish': math.sqrt(2)}


def test_activation_table_lists_defaults():
    assert set(bias_act.activation_funcs) == set(TORCH_ACTIVATIONS)
    for name, spec in bias_act.activation_funcs.items():
        assert spec.def_gain == pytest.approx(DEFAULT_GAINS.get(name, 1.0))
    assert bias_act.activation_funcs['lrelu'].def_alpha == 0.2
    assert bias_act.activation_funcs['lrelu']['def_gain'] == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize('act', sorted(TORCH_ACTIVATIONS))
@pytest.mark.parametrize('dim', [1, 0, 3, -1])
def test_bias_act_matches_torch_activations_with_default_gain(act, dim):
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64) * 3
    b = torch.randn(x.shape[dim], dtype=torch.float64)
    shape = [1] * 4
    shape[dim] = -1
    expected = TORCH_ACTIVATIONS[act](x + b.reshape(shape)) * DEFAULT_GAINS.get(act, 1.0)
    torch.testing.assert_close(bias_act.bias_act(x, b, dim=dim, act=act), expected)


@pytest.mark.parametrize('act', sorted(TORCH_ACTIVATIONS))
def test_bias_act_gain_and_clamp(act):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 4
    y = bias_act.bias_act(x, None, act=act, gain=2.5, clamp=0.8)
    expected = torch.clamp(TORCH_ACTIVATIONS[act](x) * 2.5, -0.8, 0.8)
    torch.testing.assert_close(y, expected)


def test_bias_act_lrelu_alpha_and_hand_values():
    x = torch.tensor([[-2.0, 0.5], [3.0, -1.0]])
    b = torch.tensor([1.0, -1.0])
    y = bias_act.bias_act(x, b, act='lrelu', alpha=0.1, gain=2, clamp=3)
    # x + b = [[-1, -0.5], [4, -2]] -> lrelu(0.1) -> [[-0.1, -0.05], [4, -0.2]] -> *2 -> clamp 3
    torch.testing.assert_close(y, torch.tensor([[-0.2, -0.1], [3.0, -0.4]]))


def test_bias_act_rejects_unknown_activation_and_bad_bias():
    with pytest.raises(ValueError):
        bias_act.bias_act(torch.zeros(2, 3), act='gelu')
    with pytest.raises(ValueError):
        bias_act.bias_act(torch.zeros(2, 3), torch.zeros(4))


@pytest.mark.parametrize('act', ['lrelu', 'tanh', 'elu', 'swish', 'softplus', 'selu', 'sigmoid'])
def test_bias_act_reference_second_order_gradients(act):
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: bias_act.bias_act(x, b, act=act, gain=1.3, clamp=10, impl='ref')
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize('act', sorted(TORCH_ACTIVATIONS))
def test_bias_act_closed_form_derivatives_match_autograd(act):
    """The d1/d2 entries used by the CUDA double backward agree with autograd of `func`."""
    spec = bias_act.activation_funcs[act]
    x = torch.linspace(-4, 4, 41, dtype=torch.float64)
    x = x[x.abs() > 1e-3].requires_grad_(True)  # kinks at 0
    d1, = torch.autograd.grad(spec.func(x, 0.2).sum(), x, create_graph=True)
    d2 = torch.autograd.grad(d1.sum(), x, allow_unused=True)[0] if d1.requires_grad else None
    d2 = torch.zeros_like(x) if d2 is None else d2
    torch.testing.assert_close(spec.d1(x.detach(), 0.2), d1.detach())
    torch.testing.assert_close(spec.d2(x.detach(), 0.2), d2)


def _saved_storages(fn):
    """{storage pointer: bytes} of the tensors autograd keeps for the backward of fn()."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize('act', ['lrelu', 'relu'])
@pytest.mark.parametrize('clamp', [None, 0.8])
@pytest.mark.parametrize('layout', [torch.contiguous_format, torch.channels_last])
def test_bias_act_cpu_in_place_path_gives_the_reference_numbers_and_keeps_less(act, clamp, layout):
    """impl='cuda' on a CPU tensor: the reference's ops in place, bitwise the same forward, input
    and bias gradients and R1-style double backward; it keeps the output (which the next layer
    keeps anyway) and a bool mask instead of one or two float tensors of its own."""
    torch.manual_seed(0)
    x = (torch.randn(4, 5, 6, 7) * 2).contiguous(memory_format=layout)
    b, dy, probe = torch.randn(5), torch.randn(4, 5, 6, 7), torch.randn(4, 5, 6, 7)
    results = {}
    for impl in ('ref', 'cuda'):
        xi, bi, dyi = (t.clone().requires_grad_(True) for t in (x, b, dy))
        y, saved = _saved_storages(lambda: bias_act.bias_act(xi, bi, act=act, alpha=0.3, gain=1.7, clamp=clamp,
                                                             impl=impl))
        dx, db = torch.autograd.grad(y, (xi, bi), dyi, create_graph=True)
        second = torch.autograd.grad((dx * probe).sum(), (xi, bi, dyi), allow_unused=True)
        second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, (xi, bi, dyi))]
        results[impl] = [y, dx, db, *second]
        floats = [p for p, n in saved.items() if n == y.numel() * 4]
        if impl == 'ref':   # x + b for the activation's backward (+ the clamp's input)
            assert len(floats) == 1 + (clamp is not None) and y.untyped_storage().data_ptr() not in floats
        else:               # only y itself, which the next layer keeps anyway (+ a bool mask for the clamp)
            assert floats == [y.untyped_storage().data_ptr()] and len(saved) == 1 + (clamp is not None)
    assert results['cuda'][0].is_contiguous(memory_format=layout)
    for got, want in zip(results['cuda'], results['ref']):
        assert torch.equal(got, want)


def test_bias_act_cpu_in_place_path_gradcheck_and_fallbacks():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: bias_act.bias_act(x, b, act='lrelu', gain=1.3, clamp=1.5)
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))
    # Other activations, linear, a negative gain: the reference, exactly.
    for kwargs in (dict(act='swish'), dict(act='linear', clamp=0.5), dict(act='lrelu', gain=-1.0)):
        torch.testing.assert_close(bias_act.bias_act(x, b, **kwargs), bias_act.bias_act(x, b, impl='ref', **kwargs),
                                   rtol=0, atol=0)


def test_upfirdn2d_symmetric_padding_keeps_no_padded_copy_for_the_backward():
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    _, symmetric = _saved_storages(lambda: upfirdn2d.upfirdn2d(x, f, padding=2, impl='ref'))
    assert x.untyped_storage().data_ptr() in symmetric and all(n <= x.numel() * 4 for n in symmetric.values())
    _, asymmetric = _saved_storages(lambda: upfirdn2d.upfirdn2d(x, f, padding=[2, 1, 2, 1], impl='ref'))
    assert x.untyped_storage().data_ptr() not in asymmetric  # F.pad's copy is what the convolution keeps


# ---------------------------------------------------------------------------------------------
# conv2d_resample


def _slow_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight):
    """Test's own composition: FIR up-sample (gain up^2) -> plain valid conv -> FIR down-sample."""
    fw = f.shape[-1]
    p = padding
    pad = [p, p, p, p]
    if up > 1:
        pad = [pad[0] + (fw + up - 1) // 2, pad[1] + (fw - up) // 2] * 2
    if down > 1:
        pad = [pad[0] + (fw - down + 1) // 2, pad[1] + (fw - down) // 2] * 2
    x = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=pad, gain=up * up, impl='ref')
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, impl='ref')
    return x


@pytest.mark.parametrize('up, down', [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 4)])
@pytest.mark.parametrize('k', [1, 3])
@pytest.mark.parametrize('groups', [1, 2])
@pytest.mark.parametrize('flip_weight', [True, False])
def test_conv2d_resample_fast_paths_match_slow_composition(up, down, k, groups, flip_weight):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, k, k, dtype=torch.float64)
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).double()
    y = conv2d_resample.conv2d_resample(x, w, f, up=up, down=down, padding=k // 2, groups=groups,
                                        flip_weight=flip_weight)
    expected = _slow_conv2d_resample(x, w, f, up, down, k // 2, groups, flip_weight)
    assert y.shape == (2, 6, 8 * up // down, 8 * up // down)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize('padding', [0, 1, 2, 4, [0, 3, 2, 1], [-1, 2, 3, 0]])
@pytest.mark.parametrize('up, down', [(2, 1), (1, 2), (3, 1)])
def test_conv2d_resample_unusual_paddings(padding, up, down):
    torch.manual_seed(1)
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 2, dtype=torch.float64)  # non-square kernel
    f = upfirdn2d.setup_filter([1, 2, 1]).double()
    y = conv2d_resample.conv2d_resample(x, w, f, up=up, down=down, padding=padding)
    pad = list(conv2d_resample._total_padding(f, up, down, padding))
    slow = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=pad, gain=up * up)
    slow = F.conv2d(slow, w)
    if down > 1:
        slow = upfirdn2d.upfirdn2d(slow, f, down=down)
    torch.testing.assert_close(y, slow)


def test_conv2d_resample_without_resampling_is_plain_conv():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(conv2d_resample.conv2d_resample(x, w, padding=1), F.conv2d(x, w, padding=1))
    torch.testing.assert_close(conv2d_resample.conv2d_resample(x, w, padding=1, flip_weight=False),
                               F.conv2d(x, w.flip([2, 3]), padding=1))


def test_conv2d_resample_gradients():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).double()
    for up, down in [(2, 1), (1, 2)]:
        fn = lambda x, w: conv2d_resample.conv2d_resample(x, w, f, up=up, down=down, padding=1)
        assert torch.autograd.gradcheck(fn, (x, w))
        assert torch.autograd.gradgradcheck(fn, (x, w))


def test_upfirdn2d_reference_second_order_gradients():
    x = torch.randn(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    f = torch.tensor([1.0, 2.0, 1.5], dtype=torch.float64)
    fn = lambda x: upfirdn2d.upfirdn2d(x, f, up=[2, 1], down=[1, 2], padding=[1, 0, 2, -1], gain=2, impl='ref')
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize('up, down, padding, flip', [(1, 1, 0, False), (2, 1, [2, 1, 0, 3], True),
                                                     (1, 2, [1, 2, 2, 1], False), (3, 2, [-1, 2, 3, -2], True),
                                                     ([2, 1], [1, 3], [0, 0, 1, 4], False)])
def test_upfirdn2d_adjoint_padding_gives_the_transpose(up, down, padding, flip):
    """The CUDA backward is upfirdn2d(dy, f, up=down, down=up, flip) with `_adjoint_padding`;
    run that formula with the reference and compare with autograd's vector-Jacobian product."""
    x = torch.randn(2, 1, 7, 6, dtype=torch.float64, requires_grad=True)
    f = torch.randn(3, 4, dtype=torch.float64)
    y = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, impl='ref')
    dy = torch.randn_like(y)
    expected, = torch.autograd.grad(y, x, dy)
    upx, upy = upfirdn2d._parse_scaling(up)
    downx, downy = upfirdn2d._parse_scaling(down)
    px0, px1, py0, py1 = upfirdn2d._parse_padding(padding)
    qx = upfirdn2d._adjoint_padding(6, y.shape[3], upx, downx, px0, px1, 4)
    qy = upfirdn2d._adjoint_padding(7, y.shape[2], upy, downy, py0, py1, 3)
    dx = upfirdn2d.upfirdn2d(dy, f, up=[downx, downy], down=[upx, upy], padding=[*qx, *qy],
                             flip_filter=not flip, impl='ref')
    torch.testing.assert_close(dx, expected)


# ---------------------------------------------------------------------------------------------
# conv2d_gradfix


@pytest.mark.parametrize('stride, padding, dilation, groups', [(1, 0, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1)])
def test_conv2d_gradfix_conv2d_first_and_second_order(stride, padding, dilation, groups):
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2 // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: conv2d_gradfix.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation,
                                               groups=groups)
    torch.testing.assert_close(fn(x, w, b), F.conv2d(x, w, b, stride, padding, dilation, groups))
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize('stride, padding, output_padding, groups', [(1, 0, 0, 1), (2, 1, 1, 2)])
def test_conv2d_gradfix_conv_transpose2d_first_and_second_order(stride, padding, output_padding, groups):
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4 // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w: conv2d_gradfix.conv_transpose2d(x, w, stride=stride, padding=padding,
                                                      output_padding=output_padding, groups=groups)
    torch.testing.assert_close(fn(x, w), F.conv_transpose2d(x, w, None, stride, padding, output_padding, groups))
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_no_weight_gradients_skips_weight_grad_but_keeps_input_grad():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    with conv2d_gradfix.no_weight_gradients():
        y = conv2d_gradfix.conv2d(x, w, padding=1)
        (y ** 2).sum().backward()
    assert w.grad is None or torch.all(w.grad == 0)
    x_ref = x.detach().clone().requires_grad_(True)
    (F.conv2d(x_ref, w.detach(), padding=1) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert not conv2d_gradfix.weight_gradients_disabled  # restored on exit
    # Outside the context the weight gradient is back.
    conv2d_gradfix.conv2d(x, w, padding=1).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_r1_style_double_backward_reaches_the_weights_under_no_weight_gradients():
    """R1: grads w.r.t. images inside the context (create_graph), penalty backward outside."""
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)

    def penalty(conv):
        logits = torch.tanh(conv(x, w, padding=1)).sum()
        with conv2d_gradfix.no_weight_gradients():
            gx, = torch.autograd.grad(logits, x, create_graph=True)
        return gx.square().sum()

    grad_fix, = torch.autograd.grad(penalty(conv2d_gradfix.conv2d), w)
    grad_plain, = torch.autograd.grad(penalty(F.conv2d), w)
    torch.testing.assert_close(grad_fix, grad_plain)


def test_conv2d_gradfix_wide_nhwc_weight_gradient_equals_nchw_first_and_second_order():
    """A wide NHWC input on the CPU takes its weight gradient from NCHW copies (faster in oneDNN):
    the same gradients as NCHW, first order and through an R1-style double backward."""
    torch.manual_seed(0)
    x = torch.randn(2, 128, 64, 64)
    assert x[0].numel() >= conv2d_gradfix.NCHW_WEIGHT_GRAD_MIN_SIZE
    w = torch.randn(3, 128, 3, 3) / 34
    results = {}
    for name, layout in (('nchw', torch.contiguous_format), ('nhwc', torch.channels_last)):
        xi = x.contiguous(memory_format=layout).requires_grad_(True)
        wi = w.contiguous(memory_format=layout).requires_grad_(True)
        y = conv2d_gradfix.conv2d(xi, wi, padding=1)
        dx, dw = torch.autograd.grad(y.square().sum(), (xi, wi), create_graph=True)
        ddw, = torch.autograd.grad(dx.square().sum(), wi)  # the second pass of R1 reaches the weights
        results[name] = (y, dx, dw, ddw)
    for got, want in zip(results['nhwc'], results['nchw']):
        torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-3)  # fp32 sums of 8192 terms, other order


# ---------------------------------------------------------------------------------------------
# grid_sample_gradfix


def _random_grid(n, h, w, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, h, w, 2, generator=g, dtype=dtype) * 2.4 - 1.2)  # some points outside


def test_grid_sample_forward_and_first_gradient_match_torch():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    grid = _random_grid(2, 4, 3, torch.float64).requires_grad_(True)
    y = grid_sample_gradfix.grid_sample(x, grid)
    expected = F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    torch.testing.assert_close(y, expected)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, grid), dy)
    want = torch.autograd.grad(expected, (x, grid), dy)
    torch.testing.assert_close(got, want)
    # The differentiable (create_graph) backward gives the same numbers.
    got_graph = torch.autograd.grad(grid_sample_gradfix.grid_sample(x, grid), (x, grid), dy, create_graph=True)
    torch.testing.assert_close(got_graph, want)


def test_grid_sample_hand_worked_value():
    x = torch.arange(4.0).reshape(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    # Pixel centres sit at -0.5 and 0.5; the image centre (0, 0) averages all four.
    grid = torch.tensor([[[[0.0, 0.0], [0.5, -0.5], [1.0, -0.5]]]])
    y = grid_sample_gradfix.grid_sample(x, grid)
    torch.testing.assert_close(y, torch.tensor([[[[1.5, 1.0, 0.5]]]]))


def test_grid_sample_is_twice_differentiable():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    grid = _random_grid(1, 3, 2, torch.float64, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(grid_sample_gradfix.grid_sample, (x, grid))
    assert torch.autograd.gradgradcheck(grid_sample_gradfix.grid_sample, (x, grid))


def test_grid_sample_r1_through_warp_matches_gather_reference():
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    grid = _random_grid(2, 5, 5, torch.float64, seed=4)
    weight = torch.randn(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)

    def r1(sample):
        score = (sample(x, grid) * weight).tanh().sum()
        gx, = torch.autograd.grad(score, x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), weight)[0]

    torch.testing.assert_close(r1(grid_sample_gradfix.grid_sample), r1(grid_sample_gradfix.grid_sample_ref))


# ---------------------------------------------------------------------------------------------
# fma and the plugin loader


def test_fma_broadcasts_and_reduces_gradients():
    a = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(fma.fma(a, b, c), a * b + c)
    assert torch.autograd.gradcheck(fma.fma, (a, b, c))
    assert torch.autograd.gradgradcheck(fma.fma, (a, b, c))


def test_get_plugin_without_cuda_returns_none_with_one_warning(monkeypatch):
    monkeypatch.setattr(custom_ops, '_plugins', {})
    monkeypatch.setattr(custom_ops, '_why_unavailable', lambda: 'no CUDA device')
    with pytest.warns(UserWarning, match='falling back'):
        assert custom_ops.get_plugin('dummy_plugin', sources=['cuda/bias_act.cu']) is None
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert custom_ops.get_plugin('dummy_plugin', sources=['cuda/bias_act.cu']) is None


def test_plugin_self_test_failure_warns_and_reports_false():
    def broken():
        raise RuntimeError('no kernel image is available for execution on the device')

    with pytest.warns(UserWarning, match='no kernel image'):
        assert custom_ops.passes_self_test('x_plugin', broken) is False
    with pytest.warns(UserWarning, match='disagree'):
        assert custom_ops.passes_self_test('x_plugin', lambda: False) is False
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert custom_ops.passes_self_test('x_plugin', lambda: True) is True


def test_get_plugin_build_failure_falls_back(monkeypatch):
    from torch.utils import cpp_extension
    monkeypatch.setattr(custom_ops, '_plugins', {})
    monkeypatch.setattr(custom_ops, '_why_unavailable', lambda: None)
    monkeypatch.setattr(custom_ops, 'verbosity', 'none')

    def failing_load(**kwargs):
        assert kwargs['name'].startswith('broken_plugin_')  # hashed name
        raise RuntimeError('Error building extension')

    monkeypatch.setattr(cpp_extension, 'load', failing_load)
    with pytest.warns(UserWarning, match='Error building extension'):
        assert custom_ops.get_plugin('broken_plugin', sources=['cuda/bias_act.cu']) is None


# ---------------------------------------------------------------------------------------------
# The CUDA paths' Python side (autograd Functions, adjoint padding, separable passes, double
# backward) with a stand-in plugin, and, opt-in, with the kernels' own device code run on the CPU.


def _fake_bias_act_plugin():
    """Computes what the kernel computes, with torch ops and without autograd."""
    names = {spec.cuda_idx: name for name, spec in bias_act.activation_funcs.items()}

    def forward(x, b, dim, act, alpha, gain, clamp):
        with torch.no_grad():
            return bias_act._bias_act_ref(x, b if b.numel() else None, dim, names[act], alpha, gain, clamp)

    def grad(dy, x, b, dim, act, alpha, gain, clamp):
        with torch.no_grad():
            spec = bias_act.activation_funcs[names[act]]
            xb = bias_act._expand_bias(x, b, dim)
            dx = dy * gain * spec.d1(xb, alpha)
            if clamp >= 0:
                dx = dx * ((spec.func(xb, alpha) * gain).abs() <= clamp)
            return dx

    return types.SimpleNamespace(bias_act_forward=forward, bias_act_grad=grad)


def _fake_upfirdn2d_plugin():
    def run(x, taps, upx, upy, downx, downy, px0, px1, py0, py1):
        with torch.no_grad():  # the kernel correlates with `taps` as given
            return upfirdn2d._upfirdn2d_ref(x, taps, (upx, upy), (downx, downy), (px0, px1, py0, py1), True, 1)

    return types.SimpleNamespace(upfirdn2d=run)


def _check_bias_act_cuda_path(plugin, monkeypatch):
    monkeypatch.setattr(bias_act, '_plugin', lambda: plugin)
    torch.manual_seed(0)
    for act in sorted(TORCH_ACTIVATIONS):
        for dim, clamp, contiguous in [(1, None, True), (0, 0.7, True), (2, 2.0, False)]:
            x = torch.randn(2, 3, 2, dtype=torch.float64) * 2
            if not contiguous:  # same shape, transposed strides
                x = (torch.randn(3, 2, 2, dtype=torch.float64) * 2).transpose(0, 1)
            x = x.detach().requires_grad_(True)
            b = torch.randn(x.shape[dim], dtype=torch.float64, requires_grad=True)
            cuda_path = lambda x, b: bias_act._bias_act_cuda(x, b, dim, act, None, None, clamp)
            torch.testing.assert_close(cuda_path(x, b), bias_act._bias_act_ref(x, b, dim, act, None, None, clamp))
            assert torch.autograd.gradcheck(cuda_path, (x, b))
            assert torch.autograd.gradgradcheck(cuda_path, (x, b))
        x16 = torch.randn(2, 3, 4, dtype=torch.float16) * 3
        torch.testing.assert_close(bias_act._bias_act_cuda(x16, None, 1, act, None, None, None).double(),
                                   bias_act._bias_act_ref(x16.double(), None, 1, act, None, None, None),
                                   rtol=1e-2, atol=1e-2)


def _check_upfirdn2d_cuda_path(plugin, monkeypatch):
    monkeypatch.setattr(upfirdn2d, '_plugin', lambda: plugin)
    torch.manual_seed(0)
    for up, down, padding, taps, flip_filter, gain in UPFIRDN_CASES:
        f = torch.tensor(taps, dtype=torch.float64)
        args = (upfirdn2d._parse_scaling(up), upfirdn2d._parse_scaling(down), upfirdn2d._parse_padding(padding),
                flip_filter, gain)
        x = torch.randn(1, 1, 7, 6, dtype=torch.float64, requires_grad=True)
        cuda_path = lambda x: upfirdn2d._upfirdn2d_cuda(x, f, *args)
        torch.testing.assert_close(cuda_path(x), upfirdn2d._upfirdn2d_ref(x, f, *args))
        assert torch.autograd.gradcheck(cuda_path, (x,))
        assert torch.autograd.gradgradcheck(cuda_path, (x,))


def test_bias_act_cuda_path_autograd_with_stand_in_kernel(monkeypatch):
    _check_bias_act_cuda_path(_fake_bias_act_plugin(), monkeypatch)


def test_upfirdn2d_cuda_path_autograd_with_stand_in_kernel(monkeypatch):
    _check_upfirdn2d_cuda_path(_fake_upfirdn2d_plugin(), monkeypatch)


@pytest.fixture(scope='module')
def emulated_kernels():
    """torch_utils/ops/cuda/host_emulation.cpp built as a CPU extension (about a minute the first
    time; cached in the torch extensions dir).  Opt-in: ILSGAN_EMULATE_KERNELS=1."""
    if os.environ.get('ILSGAN_EMULATE_KERNELS') != '1':
        pytest.skip('set ILSGAN_EMULATE_KERNELS=1 to compile the CUDA kernels\' device code for the CPU')
    from torch.utils import cpp_extension
    if shutil.which('c++') is None or not cpp_extension.is_ninja_available():
        pytest.skip('needs a C++ compiler and ninja')
    cuda_dir = os.path.join(os.path.dirname(upfirdn2d.__file__), 'cuda')
    sources = ['host_emulation.cpp', 'bias_act_kernel.cuh', 'bias_act.h', 'upfirdn2d_kernel.cuh', 'upfirdn2d.h']
    digest = hashlib.sha256(b''.join(open(os.path.join(cuda_dir, s), 'rb').read() for s in sources)).hexdigest()
    return cpp_extension.load(name=f'ilsgan_ops_host_emulation_{digest[:12]}',
                              sources=[os.path.join(cuda_dir, 'host_emulation.cpp')], extra_include_paths=[cuda_dir])


@pytest.mark.slow
def test_cuda_kernel_code_emulated_on_cpu(emulated_kernels, monkeypatch):
    m = emulated_kernels
    _check_bias_act_cuda_path(types.SimpleNamespace(
        bias_act_forward=lambda x, b, *a: m.bias_act(x, b, x, *a, False),
        bias_act_grad=lambda dy, x, b, *a: m.bias_act(x, b, dy, *a, True)), monkeypatch)
    _check_upfirdn2d_cuda_path(types.SimpleNamespace(
        upfirdn2d=lambda x, taps, *a: m.upfirdn2d(x, taps.double(), *a)), monkeypatch)


# ---------------------------------------------------------------------------------------------
# GPU parity: the CUDA kernels against the references (skipped without CUDA).

GPU_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2)}


def _require_plugin(module):
    assert module._plugin() is not None, 'the CUDA plugin did not build; the parity tests would be vacuous'


def _bias_act_forward_and_two_gradients(x, b, dy, probe, act, clamp, impl):
    """y, (dx, db), and the gradients of <dx, probe> w.r.t. (x, b, dy): the double backward."""
    x = x.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    dy = dy.clone().requires_grad_(True)
    y = bias_act.bias_act(x, b, act=act, clamp=clamp, impl=impl)
    dx, db = torch.autograd.grad(y, (x, b), dy, create_graph=True)
    second = (None, None, None)
    if dx.requires_grad:  # the reference of 'linear' has a constant gradient
        second = torch.autograd.grad((dx * probe).sum(), (x, b, dy), allow_unused=True)
    second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, (x, b, dy))]
    return y, dx, db, second


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('act', sorted(TORCH_ACTIVATIONS))
@pytest.mark.parametrize('clamp', [None, 0.5])
def test_gpu_bias_act_parity(act, dtype, clamp):
    _require_plugin(bias_act)
    torch.manual_seed(0)
    x = torch.randn(4, 8, 9, 7, device='cuda', dtype=dtype)
    b = torch.randn(8, device='cuda', dtype=dtype)
    dy = torch.randn_like(x)
    probe = torch.randn_like(x)
    ref = _bias_act_forward_and_two_gradients(x, b, dy, probe, act, clamp, 'ref')
    cuda = _bias_act_forward_and_two_gradients(x, b, dy, probe, act, clamp, 'cuda')
    # Where x + b sits on a kink, or y on the clamp edge, rounding decides the branch: skip those.
    xb = x.double() + b.double()[:, None, None]
    stable = xb.abs() > 1e-2
    if clamp is not None:
        stable &= (ref[0].double().abs() - clamp).abs() > 1e-2
    tol = GPU_TOL[dtype]
    torch.testing.assert_close(cuda[0].float(), ref[0].float(), **tol)
    torch.testing.assert_close(cuda[1].float()[stable], ref[1].float()[stable], **tol)
    for got, want in [(cuda[3][0], ref[3][0]), (cuda[3][2], ref[3][2])]:  # d/dx and d/d(dy) of <dx, probe>
        torch.testing.assert_close(got.float()[stable], want.float()[stable], rtol=tol['rtol'] * 10, atol=tol['atol'] * 10)
    if bool(stable.all()):  # bias gradients sum over every element
        torch.testing.assert_close(cuda[2].float(), ref[2].float(), rtol=tol['rtol'] * 10, atol=tol['atol'] * 50)


@pytest.mark.gpu
@pytest.mark.parametrize('dim', [0, 2, 3])
def test_gpu_bias_act_other_dims_and_float64_gradcheck(dim):
    _require_plugin(bias_act)
    x = torch.randn(3, 4, 5, 6, device='cuda', dtype=torch.float64, requires_grad=True)
    b = torch.randn(x.shape[dim], device='cuda', dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: bias_act.bias_act(x, b, dim=dim, act='swish', gain=1.5, impl='cuda')
    torch.testing.assert_close(fn(x, b), bias_act.bias_act(x, b, dim=dim, act='swish', gain=1.5, impl='ref'))
    small_x = x[:2, :2, :2, :2].detach().clone().requires_grad_(True)
    small_b = torch.randn(small_x.shape[dim], device='cuda', dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (small_x, small_b))
    assert torch.autograd.gradgradcheck(fn, (small_x, small_b))


GPU_UPFIRDN_CASES = [
    (2, 1, [2, 1], [1, 3, 3, 1]),
    (1, 2, 1, [1, 3, 3, 1]),
    ([2, 3], [1, 2], [1, 2, 0, 3], [[1, 2, 0], [0, 5, 1]]),
    (3, 2, [-1, 2, 3, -2], [1, -2, 4, 1, 0.5]),
    (2, 2, 3, [1, 2, 3, 4, 3, 2, 1, 1, 2]),
    (1, 1, [1, 1, 2, 2], [[1.0]]),
]


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('flip_filter', [False, True])
@pytest.mark.parametrize('up, down, padding, taps', GPU_UPFIRDN_CASES)
def test_gpu_upfirdn2d_parity(up, down, padding, taps, flip_filter, dtype):
    _require_plugin(upfirdn2d)
    torch.manual_seed(0)
    f = upfirdn2d.setup_filter(taps, device='cuda', separable=len(np.shape(taps)) == 1 and len(taps) >= 8)
    x = torch.randn(3, 5, 17, 13, device='cuda', dtype=dtype)
    shape = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, impl='ref').shape
    dy = torch.randn(shape, device='cuda', dtype=dtype)
    probe = torch.randn_like(x)
    outs = {}
    for impl in ('ref', 'cuda'):
        xi = x.clone().requires_grad_(True)
        dyi = dy.clone().requires_grad_(True)
        y = upfirdn2d.upfirdn2d(xi, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=2, impl=impl)
        dx, = torch.autograd.grad(y, xi, dyi, create_graph=True)
        ddy, = torch.autograd.grad((dx * probe).sum(), dyi)  # backward of the backward
        outs[impl] = (y, dx, ddy)
    tol = GPU_TOL[dtype]
    for got, want in zip(outs['cuda'], outs['ref']):
        torch.testing.assert_close(got.float(), want.float(), **tol)


@pytest.mark.gpu
def test_gpu_upfirdn2d_float64_gradcheck_and_double_backward():
    _require_plugin(upfirdn2d)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device='cuda').double()
    x = torch.randn(1, 2, 5, 4, device='cuda', dtype=torch.float64, requires_grad=True)
    for up, down, padding in [(2, 1, [2, 1]), (1, 2, [1, 1]), (3, 2, [-1, 2, 3, -2])]:
        fn = lambda x: upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, impl='cuda')
        torch.testing.assert_close(fn(x), upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, impl='ref'))
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_gpu_conv2d_resample_and_grid_sample_run_on_cuda(dtype):
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device='cuda')
    x = torch.randn(2, 4, 8, 8, device='cuda', dtype=dtype)
    w = torch.randn(6, 4, 3, 3, device='cuda', dtype=dtype)
    for up, down in [(2, 1), (1, 2)]:
        y = conv2d_resample.conv2d_resample(x, w, f, up=up, down=down, padding=1)
        y_cpu = conv2d_resample.conv2d_resample(x.cpu().float(), w.cpu().float(), f.cpu(), up=up, down=down, padding=1)
        torch.testing.assert_close(y.cpu().float(), y_cpu, rtol=2e-2, atol=5e-2)
    xg = torch.randn(2, 3, 6, 6, device='cuda', dtype=torch.float64, requires_grad=True)
    grid = _random_grid(2, 4, 4, torch.float64).cuda().requires_grad_(True)
    assert torch.autograd.gradgradcheck(grid_sample_gradfix.grid_sample, (xg, grid))
