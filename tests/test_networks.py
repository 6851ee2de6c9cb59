"""Layered generator, perturbed composition and discriminator (METHOD.md §1-§2, ORIGINAL.md §2-§3).

Most tests use narrow networks (SMALL) so the file runs in well under a minute on two CPU cores;
the full 64 and 128 presets are built once each for the parameter counts and one forward pass.
Every expected value is computed independently of the module code (numpy/scipy or by hand).
"""

import math

import numpy as np
import pytest
import scipy.signal
import torch

from training import networks
from training.networks import Discriminator, LayeredGenerator, PerturbedComposition

SMALL = dict(channel_base=2048, channel_max=64, mapping_layers=2, z_dim=64, w_dim=64)
SMALL_D = dict(channel_base=2048, channel_max=64)
PRESET = dict(z_dim=512, w_dim=512, channel_base=16384, channel_max=256, mapping_layers=8)




def small_generator(resolution: int = 64, seed: int = 0, **kwargs) -> LayeredGenerator:
    torch.manual_seed(seed)
    return LayeredGenerator(img_resolution=resolution, **{**SMALL, **kwargs})


def set_noise_strengths(G: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(value)


# ----------------------------------------------------------------------------------------------
# Parameter counts computed from the architecture table alone (ORIGINAL.md §2.3, §3).

def channels(r, base, cmax):
    return min(base // r, cmax)


def expected_generator_params(R, z_dim, w_dim, channel_base, channel_max, mapping_layers):
    def mod_conv(cin, cout):  # 3x3 weight + bias + affine (w_dim -> cin, with bias) + noise strength
        return cout * cin * 9 + cout + w_dim * cin + cin + 1

    def to_rgb(cin, k):  # 1x1 weight + bias + affine
        return k * cin + k + w_dim * cin + cin

    def synthesis(k):
        total = 0
        r = 4
        while r <= R:
            c = channels(r, channel_base, channel_max)
            if r == 4:
                total += c * 4 * 4 + mod_conv(c, c)
            else:
                total += mod_conv(channels(r // 2, channel_base, channel_max), c) + mod_conv(c, c)
            total += to_rgb(c, k)
            r *= 2
        return total

    mapping = z_dim * w_dim + w_dim + (mapping_layers - 1) * (w_dim * w_dim + w_dim)
    return 2 * mapping + synthesis(3) + synthesis(4)


def expected_discriminator_params(R, channel_base, channel_max, img_channels=3):
    total = 0
    r = R
    while r >= 8:
        c, c_half = channels(r, channel_base, channel_max), channels(r // 2, channel_base, channel_max)
        if r == R:
            total += img_channels * c + c  # fromRGB 1x1
        total += c * c * 9 + c  # conv0
        total += c_half * c * 9 + c_half  # conv1 (downsampling)
        total += c_half * c  # skip 1x1, no bias
        r //= 2
    c4 = channels(4, channel_base, channel_max)
    total += (c4 + 1) * c4 * 9 + c4  # epilogue conv after mbstd
    total += c4 * 16 * c4 + c4  # FC
    total += c4 + 1  # output FC
    return total


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_hand_formula_matches_known_totals():
    # A cross-check of the helper itself at R = 64, worked out by hand:
    # mapping 8 * (512*512 + 512) = 2 101 248 per network;
    # synthesis block 4: 4096 + 721 409 + torgb; blocks 8..64: 2 * 721 409 + torgb;
    # torgb(3) = 132 099, torgb(4) = 132 356.
    mapping = 2 * 2_101_248
    bg = 4096 + 721_409 + 132_099 + 4 * (2 * 721_409 + 132_099)
    fg = 4096 + 721_409 + 132_356 + 4 * (2 * 721_409 + 132_356)
    assert expected_generator_params(64, **PRESET) == mapping + bg + fg == 18_518_325


@pytest.mark.parametrize('resolution, num_ws', [(64, 10), (128, 12)])
def test_full_preset_parameter_counts_and_one_forward(resolution, num_ws):
    torch.manual_seed(0)
    G = LayeredGenerator(img_resolution=resolution, **PRESET).eval()
    D = Discriminator(img_resolution=resolution).eval()
    g_params, d_params = count(G), count(D)
    print(f'\nR={resolution}: G {g_params:,} parameters, D {d_params:,} parameters')
    assert g_params == expected_generator_params(resolution, **PRESET)
    assert d_params == expected_discriminator_params(resolution, 16384, 256)
    assert G.num_ws == num_ws
    assert G.mapping_bg.num_ws == G.mapping_fg.num_ws == num_ws
    # Channel table: 256 everywhere up to 64, 128 at r = 128.
    assert [b.torgb.weight.shape[1] for b in G.synthesis_fg.blocks][-1] == (256 if resolution == 64 else 128)
    with torch.no_grad():
        out = G(torch.randn([1, 512]), noise_mode='const')
        logits = D(out['img'])
    assert out['img'].shape == (1, 3, resolution, resolution)
    assert out['mask'].shape == (1, 1, resolution, resolution)
    assert bool(((out['mask'] >= 0) & (out['mask'] <= 1)).all())
    assert all(torch.isfinite(v).all() for v in out.values())
    assert logits.shape == (1, 1) and torch.isfinite(logits).all()


@pytest.mark.parametrize('resolution', [64, 128])
def test_small_parameter_counts_match_formula(resolution):
    G = small_generator(resolution)
    D = Discriminator(img_resolution=resolution, **SMALL_D)
    assert count(G) == expected_generator_params(resolution, **SMALL)
    assert count(D) == expected_discriminator_params(resolution, **SMALL_D)
    # The placement head: one linear layer w_dim -> 2 (weight and bias), in the class's own count too.
    placed = small_generator(resolution, placement_max=0.3)
    assert count(placed) == count(G) + 64 * 2 + 2
    assert (networks.generator_parameters(img_resolution=resolution, placement_max=0.3, **SMALL)
            == networks.generator_parameters(img_resolution=resolution, **SMALL) + 64 * 2 + 2)


# ----------------------------------------------------------------------------------------------
# Generator.

@pytest.mark.parametrize('resolution, num_ws', [(64, 10), (128, 12)])
def test_generator_layers_shapes_ranges_and_exact_composite(resolution, num_ws):
    G = small_generator(resolution).eval()
    assert (G.z_dim, G.img_resolution, G.img_channels, G.num_ws) == (64, resolution, 3, num_ws)
    with torch.no_grad():
        out = G(torch.randn([2, 64]), noise_mode='const')
    assert set(out) == {'bg', 'fg', 'mask', 'img'}
    for key, c in [('bg', 3), ('fg', 3), ('mask', 1), ('img', 3)]:
        assert out[key].shape == (2, c, resolution, resolution) and out[key].dtype == torch.float32
    mask = out['mask'].numpy()
    assert mask.min() >= 0 and mask.max() <= 1
    bg, fg = out['bg'].numpy(), out['fg'].numpy()
    expected = mask * fg + (np.float32(1) - mask) * bg
    assert np.array_equal(out['img'].numpy(), expected)
    # The mask is the sigmoid of the 4th channel of the fg synthesis network (no extra network).
    ws_fg = G.mapping_fg(torch.zeros([1, 64]) + 1)
    assert G.synthesis_fg(ws_fg, noise_mode='const').shape == (1, 4, resolution, resolution)
    assert G.synthesis_bg(ws_fg, noise_mode='const').shape == (1, 3, resolution, resolution)


def test_both_mapping_networks_see_the_same_z():
    G = small_generator(16).eval()
    z = torch.randn([2, 64])
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
             for m in (G.mapping_bg, G.mapping_fg)]
    with torch.no_grad():
        G(z, noise_mode='none')
    for h in hooks:
        h.remove()
    assert len(seen) == 2 and torch.equal(seen[0], z) and torch.equal(seen[1], z)
    # Separate weights: the two w's differ.
    assert not torch.allclose(G.mapping_bg(z), G.mapping_fg(z))


def test_placement_head_moves_fg_and_mask_by_the_read_translation():
    # A head reading tanh(b) = 0.5 everywhere: 0.5 * placement_max 0.25 = 1/8 of the width = 4 px at 32 px
    # each way, towards the top-left (the warp samples at p + t). fg and mask move, bg does not.
    plain = small_generator(32, seed=3).eval()
    placed = small_generator(32, seed=3, placement_max=0.25).eval()
    placed.load_state_dict({**plain.state_dict(), 'placement.weight': torch.zeros([2, 64]),
                            'placement.bias': torch.full([2], math.atanh(0.5))})
    z = torch.randn([2, 64])
    with torch.no_grad():
        a, b = plain(z, noise_mode='const'), placed(z, noise_mode='const')
    assert torch.equal(a['bg'], b['bg'])
    for key in ('fg', 'mask'):
        expected = torch.zeros_like(a[key])
        expected[:, :, :-4, :-4] = a[key][:, :, 4:, 4:]
        assert torch.allclose(b[key], expected, atol=1e-5), key
    assert torch.allclose(b['img'], b['mask'] * b['fg'] + (1 - b['mask']) * b['bg'])


def test_placement_head_is_absent_by_default_and_trained_when_on():
    plain = small_generator(16)
    assert plain.placement is None and 'placement.weight' not in plain.state_dict()
    G = small_generator(16, placement_max=0.3).train()
    with pytest.raises(ValueError):
        small_generator(16, placement_max=-0.1)
    z = torch.randn([8, 64])
    with torch.no_grad():
        translate = torch.tanh(G.placement(G.mapping_fg(z)[:, 0])) * 0.3
    assert float(translate.abs().max()) <= 0.3 and float(translate.std()) > 0.01   # varies with the latent
    G(z)['img'].square().mean().backward()
    assert float(G.placement.weight.grad.abs().max()) > 0    # D's gradient reaches the head through the image


def test_const_noise_is_bit_identical_and_random_noise_differs():
    G = small_generator(32).eval()
    set_noise_strengths(G, 0.3)
    z = torch.randn([2, 64])
    with torch.no_grad():
        a = G(z, noise_mode='const')
        b = G(z, noise_mode='const')
        c = G(z, noise_mode='random')
        d = G(z, noise_mode='none')
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.allclose(a['img'], c['img'])
    assert not torch.allclose(a['img'], d['img'])
    # Noise strengths start at 0, so a fresh generator ignores the noise entirely.
    G0 = small_generator(32).eval()
    with torch.no_grad():
        assert torch.equal(G0(z, noise_mode='random')['img'], G0(z, noise_mode='none')['img'])
    with pytest.raises(ValueError, match='noise_mode'):
        G(z, noise_mode='fixed')


def test_fused_and_unfused_modulated_conv_agree():
    G = small_generator(32)
    set_noise_strengths(G, 0.2)
    z = torch.randn([3, 64])
    with torch.no_grad():
        train_out = G.train()(z, noise_mode='const')  # shared-kernel path
        eval_out = G.eval()(z, noise_mode='const')  # grouped-kernel path
    for key in train_out:
        torch.testing.assert_close(train_out[key], eval_out[key], rtol=1e-4, atol=1e-4)


def test_mapping_normalises_z_tracks_w_avg_and_truncates():
    torch.manual_seed(1)
    mapping = networks.MappingNetwork(z_dim=16, w_dim=8, num_ws=5, num_layers=3)
    z = torch.randn([6, 16])
    mapping.eval()
    ws = mapping(z)
    assert ws.shape == (6, 5, 8)
    assert torch.equal(ws[:, 0], ws[:, 4])  # broadcast copies
    torch.testing.assert_close(mapping(z * 7.0), ws, rtol=1e-5, atol=1e-5)  # z / rms(z)
    assert torch.equal(mapping.w_avg, torch.zeros(8))  # eval mode: no tracking
    mapping.train()
    ws_train = mapping(z)
    expected = (1 - 0.995) * ws[:, 0].mean(dim=0)  # lerp from 0 with beta 0.995
    torch.testing.assert_close(mapping.w_avg, expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(ws_train, ws)
    mapping.eval()
    psi = 0.7
    w_avg = mapping.w_avg.clone()
    torch.testing.assert_close(mapping(z, truncation_psi=psi), w_avg + psi * (ws - w_avg), rtol=1e-5, atol=1e-6)
    assert torch.allclose(mapping(z, truncation_psi=0), w_avg.expand(6, 5, 8))


def test_mapping_matches_numpy_with_equalized_lr():
    torch.manual_seed(2)
    # Stored weights are N(0, 1) / lr_mul: std 100 for the mapping's lr multiplier 0.01.
    wide = networks.MappingNetwork(z_dim=64, w_dim=64, num_ws=1, num_layers=1)
    assert 90 < float(wide.layers[0].weight.detach().std()) < 110
    mapping = networks.MappingNetwork(z_dim=4, w_dim=3, num_ws=1, num_layers=2, lr_mul=0.01)
    with torch.no_grad():
        for layer in mapping.layers:
            layer.bias.normal_()
    z = torch.randn([5, 4])
    x = z.numpy().astype(np.float64)
    x = x / np.sqrt((x ** 2).mean(axis=1, keepdims=True) + 1e-8)
    for layer in mapping.layers:
        w = layer.weight.detach().numpy().astype(np.float64) * 0.01 / math.sqrt(layer.weight.shape[1])
        b = layer.bias.detach().numpy().astype(np.float64) * 0.01
        x = x @ w.T + b
        x = np.where(x >= 0, x, 0.2 * x) * math.sqrt(2)
    np.testing.assert_allclose(mapping.eval()(z)[:, 0].detach().numpy(), x, rtol=1e-4, atol=1e-5)


def conv_numpy(x, kernels):
    """Independent 'same' correlation: x [C_in, H, W], kernels [C_out, C_in, k, k] -> [C_out, H, W]."""
    return np.stack([sum(scipy.signal.correlate2d(x[i], k[i], mode='same') for i in range(x.shape[0]))
                     for k in kernels])


@pytest.mark.parametrize('fused', [True, False])
def test_modulated_conv_with_demodulation_matches_numpy(fused):
    rng = np.random.default_rng(0)
    x = rng.standard_normal([2, 3, 6, 6]).astype(np.float32)
    weight = rng.standard_normal([4, 3, 3, 3]).astype(np.float32)
    styles = rng.uniform(0.2, 2.0, [2, 3]).astype(np.float32)
    y = networks.modulated_conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(styles),
                                  demodulate=True, padding=1, fused=fused).numpy()
    for n in range(2):
        k = weight.astype(np.float64) * styles[n][None, :, None, None]
        k = k / np.sqrt((k ** 2).sum(axis=(1, 2, 3), keepdims=True) + 1e-8)
        np.testing.assert_allclose(y[n], conv_numpy(x[n].astype(np.float64), k), rtol=1e-4, atol=1e-5)


def test_synthesis_layer_noise_bias_lrelu_and_clamp():
    torch.manual_seed(3)
    layer = networks.SynthesisLayer(2, 3, w_dim=5, resolution=4, conv_clamp=256).eval()
    # Style affine bias starts at 1, the noise strength at 0.
    assert torch.equal(layer.affine(torch.zeros([1, 5])), torch.ones([1, 2]))
    assert float(layer.noise_strength.detach()) == 0
    x = torch.randn([1, 2, 4, 4])
    w = torch.randn([1, 5])
    with torch.no_grad():
        layer.noise_strength.fill_(0.5)
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        y = layer(x, w, noise_mode='const', fused=True)
        styles = layer.affine(w)[0].numpy().astype(np.float64)
    k = layer.weight.detach().numpy().astype(np.float64) * styles[None, :, None, None]
    k = k / np.sqrt((k ** 2).sum(axis=(1, 2, 3), keepdims=True) + 1e-8)
    pre = conv_numpy(x[0].numpy().astype(np.float64), k) + 0.5 * layer.noise_const.numpy()[None]
    pre = pre + np.array([0.1, -0.2, 0.3])[:, None, None]
    expected = np.clip(np.where(pre >= 0, pre, 0.2 * pre) * math.sqrt(2), -256, 256)
    np.testing.assert_allclose(y[0].numpy(), expected, rtol=1e-4, atol=1e-5)
    # A huge bias is clamped to +256 (conv_clamp) and not clamped without it.
    with torch.no_grad():
        layer.bias.fill_(1e4)
        assert float(layer(x, w, noise_mode='none').max()) == 256
        free = networks.SynthesisLayer(2, 3, w_dim=5, resolution=4, conv_clamp=None)
        free.load_state_dict(layer.state_dict())
        assert float(free(x, w, noise_mode='none').max()) > 1e4


def test_torgb_is_unnormalised_modulated_1x1_with_style_gain():
    torch.manual_seed(4)
    layer = networks.ToRGBLayer(8, 4, w_dim=5)
    with torch.no_grad():
        layer.bias.normal_()
    x, w = torch.randn([1, 8, 3, 3]), torch.randn([1, 5])
    with torch.no_grad():
        y = layer(x, w)[0].numpy().astype(np.float64)
        styles = layer.affine(w)[0].numpy().astype(np.float64) / math.sqrt(8)
    weight = layer.weight.detach().numpy()[:, :, 0, 0].astype(np.float64)
    expected = np.einsum('oi,i,ihw->ohw', weight, styles, x[0].numpy().astype(np.float64))
    expected += layer.bias.detach().numpy()[:, None, None]
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_fp16_layers_and_ws_bookkeeping():
    G64 = small_generator(64, num_fp16_res=4)
    assert [b.use_fp16 for b in G64.synthesis_bg.blocks] == [False, True, True, True, True]
    G128 = small_generator(128, num_fp16_res=4)
    assert [b.use_fp16 for b in G128.synthesis_fg.blocks] == [False, False, True, True, True, True]
    assert not any(b.use_fp16 for b in small_generator(64, num_fp16_res=0).synthesis_bg.blocks)
    D = Discriminator(img_resolution=128, **SMALL_D)
    assert [b.use_fp16 for b in D.blocks] == [True, True, True, True, False]
    assert [b.num_conv for b in G128.synthesis_bg.blocks] == [1, 2, 2, 2, 2, 2]
    # On the CPU every fp16 layer still computes in float32.
    with torch.no_grad():
        assert G64.eval()(torch.randn([1, 64]))['img'].dtype == torch.float32


def test_ws_index_bookkeeping_shares_torgb_w_with_next_conv():
    # Changing w number i must only affect the layers that read it: block 4 reads [0, 1],
    # block 8 reads [1, 2, 3], ... so w[1] reaches block 4's ToRGB and block 8's first conv.
    G = small_generator(16).eval()  # blocks 4, 8, 16 -> num_ws 1 + 2 + 2 + 1 = 6
    assert G.num_ws == 6
    synthesis = G.synthesis_bg
    ws = G.mapping_bg(torch.randn([1, 64]))
    reads = {}
    for k, block in enumerate(synthesis.blocks):
        block.register_forward_pre_hook(lambda mod, args, k=k: reads.__setitem__(k, args[2].clone()))
    with torch.no_grad():
        ws = ws + torch.arange(6.0)[None, :, None]  # tag each w with its index
        synthesis(ws, noise_mode='none')
    assert [reads[k].shape[1] for k in range(3)] == [2, 3, 3]
    for k, first in enumerate([0, 1, 3]):
        assert torch.equal(reads[k], ws[:, first:first + reads[k].shape[1]])


def upsample_numpy(img):
    """x2 upsampling with the [1, 3, 3, 1] FIR filter: zero insertion, pad (2, 1), 1-D taps
    [1, 3, 3, 1] / 8 * 2 along each axis (gain 4 overall keeps the mean). img [C, H, W]."""
    taps = np.array([1, 3, 3, 1]) / 8 * 2
    out = img.astype(np.float64)
    for axis in (1, 2):
        shape = list(out.shape)
        shape[axis] *= 2
        z = np.zeros(shape)
        index = [slice(None)] * 3
        index[axis] = slice(0, None, 2)
        z[tuple(index)] = out
        pad = [(0, 0)] * 3
        pad[axis] = (2, 1)
        z = np.pad(z, pad)
        out = np.apply_along_axis(lambda v: np.convolve(v, taps, mode='valid'), axis, z)
    return out


def test_skip_architecture_sums_upsampled_image_and_torgb():
    G = small_generator(8).eval()  # blocks 4, 8
    synthesis = G.synthesis_fg
    set_noise_strengths(G, 0.1)
    captured = {}
    for k, block in enumerate(synthesis.blocks):
        block.torgb.register_forward_hook(lambda mod, args, out, k=k: captured.__setitem__(k, out.clone()))
    ws = G.mapping_fg(torch.randn([1, 64]))
    with torch.no_grad():
        img = synthesis(ws, noise_mode='const')
    expected = upsample_numpy(captured[0][0].numpy()) + captured[1][0].numpy()
    np.testing.assert_allclose(img[0].numpy(), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Perturbed composition.

def shift_numpy(x, tx, ty):
    """np.roll by (ty, tx) then zero the rows/columns that wrapped around. x [..., H, W]."""
    out = np.roll(x, (ty, tx), axis=(-2, -1)).copy()
    if ty > 0:
        out[..., :ty, :] = 0
    elif ty < 0:
        out[..., ty:, :] = 0
    if tx > 0:
        out[..., :, :tx] = 0
    elif tx < 0:
        out[..., :, tx:] = 0
    return out


def random_layers(n, resolution, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(bg=torch.randn([n, 3, resolution, resolution], generator=g),
                fg=torch.randn([n, 3, resolution, resolution], generator=g),
                mask=torch.rand([n, 1, resolution, resolution], generator=g))


def test_shift_moves_fg_and_mask_together_by_the_drawn_amount():
    perturb = PerturbedComposition(xint_max=0.125)
    assert perturb.eps_dim == 2 and not list(perturb.parameters())
    layers = random_layers(4, 64)
    # eps * 0.125 * 64 = eps * 8 -> round: (0.3, -0.55) -> (2, -4); (-1, 1) -> (-8, 8);
    # (0.06, 0.94) -> (0, 8); (0, 0) -> identity.
    eps = torch.tensor([[0.3, -0.55], [-1.0, 1.0], [0.06, 0.94], [0.0, 0.0]])
    shifts = [(2, -4), (-8, 8), (0, 8), (0, 0)]
    out = perturb(layers, eps)
    assert torch.equal(out['bg'], layers['bg'])
    for n, (tx, ty) in enumerate(shifts):
        for key in ('fg', 'mask'):
            assert np.array_equal(out[key][n].numpy(), shift_numpy(layers[key][n].numpy(), tx, ty)), (n, key)
    m, f, b = out['mask'].numpy(), out['fg'].numpy(), out['bg'].numpy()
    assert np.array_equal(out['img'].numpy(), m * f + (np.float32(1) - m) * b)
    # The uncovered border is background only (mask 0 there).
    assert np.array_equal(out['img'][1, :, :8, :].numpy(), layers['bg'][1, :, :8, :].numpy())
    assert float(out['mask'][1, :, :, -8:].abs().max()) == 0
    for key in ('fg', 'mask', 'img'):
        assert torch.equal(out[key][3], layers[key][3] if key != 'img' else
                           layers['mask'][3] * layers['fg'][3] + (1 - layers['mask'][3]) * layers['bg'][3])


def test_shift_range_at_128_and_eps_zero_identity():
    perturb = PerturbedComposition(xint_max=0.125)
    layers = random_layers(2, 128, seed=1)
    out = perturb(layers, torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
    assert np.array_equal(out['mask'][0].numpy(), shift_numpy(layers['mask'][0].numpy(), 16, -16))
    assert torch.equal(out['fg'][1], layers['fg'][1]) and torch.equal(out['mask'][1], layers['mask'][1])


def test_shift_gradient_flows_back_to_fg_and_mask():
    perturb = PerturbedComposition(xint_max=0.125)
    layers = {k: v.requires_grad_(True) for k, v in random_layers(2, 16, seed=2).items()}
    eps = torch.tensor([[1.0, -0.6], [-0.4, 0.2]])  # 16 * 0.125 = 2: shifts (2, -1), (-1, 0)
    shifts = [(2, -1), (-1, 0)]
    out = perturb(layers, eps)
    g_fg, g_mask = torch.randn_like(out['fg']), torch.randn_like(out['mask'])
    torch.autograd.backward([out['fg'], out['mask']], [g_fg, g_mask])
    for n, (tx, ty) in enumerate(shifts):
        # The gradient of a shift is the opposite shift of the upstream gradient, zero-filled.
        np.testing.assert_array_equal(layers['fg'].grad[n].numpy(), shift_numpy(g_fg[n].numpy(), -tx, -ty))
        np.testing.assert_array_equal(layers['mask'].grad[n].numpy(), shift_numpy(g_mask[n].numpy(), -tx, -ty))
    assert layers['bg'].grad is None


def test_perturbation_options_eps_layout_and_exclusivity():
    assert PerturbedComposition(xint_max=0).eps_dim == 0
    assert PerturbedComposition(xint_max=0.125, bg_contrast=0.5).eps_dim == 3
    assert PerturbedComposition(xint_max=0, xfrac_max=0.1, rotate_max=10, scale_max=0.2).eps_dim == 4
    with pytest.raises(ValueError, match='mutually exclusive'):
        PerturbedComposition(xint_max=0.125, rotate_max=5)
    with pytest.raises(ValueError, match='eps'):
        PerturbedComposition()(random_layers(2, 8), torch.zeros([2, 3]))
    # Disabled everything: identity.
    layers = random_layers(2, 8)
    out = PerturbedComposition(xint_max=0)(layers, torch.zeros([2, 0]))
    assert torch.equal(out['fg'], layers['fg']) and torch.equal(out['mask'], layers['mask'])


def test_bg_contrast_jitter_matches_numpy_and_uses_slot_zero():
    perturb = PerturbedComposition(xint_max=0.125, bg_contrast=0.5)
    layers = random_layers(2, 8, seed=3)
    eps = torch.tensor([[0.8, 0.0, 0.0], [-0.6, 1.0, 0.0]])  # contrast, then the shift (1 px in x)
    out = perturb(layers, eps)
    b = layers['bg'].numpy().astype(np.float64)
    for n, e in enumerate([0.8, -0.6]):
        mu = b[n].mean(axis=(1, 2), keepdims=True)
        lo, hi = b[n].min(axis=(1, 2), keepdims=True), b[n].max(axis=(1, 2), keepdims=True)
        expected = np.clip((b[n] - mu) * (1 + 0.5 * e) + mu, lo, hi)
        np.testing.assert_allclose(out['bg'][n].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(out['fg'][0], layers['fg'][0])
    assert np.array_equal(out['fg'][1].numpy(), shift_numpy(layers['fg'][1].numpy(), 1, 0))


def test_affine_path_identity_and_one_pixel_translation():
    layers = random_layers(2, 8, seed=4)
    perturb = PerturbedComposition(xint_max=0, xfrac_max=0.25, rotate_max=30, scale_max=0.5)
    out = perturb(layers, torch.zeros([2, 4]))
    torch.testing.assert_close(out['fg'], layers['fg'], rtol=0, atol=1e-5)
    # xfrac eps 1 -> translation 0.25 grid units = 1 pixel at width 8 (grid spans 2 units):
    # output pixel x samples input x + 1, i.e. the content moves one pixel left, zero fill.
    only_translate = PerturbedComposition(xint_max=0, xfrac_max=0.25)
    out = only_translate(layers, torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    torch.testing.assert_close(out['fg'][0], torch.from_numpy(shift_numpy(layers['fg'][0].numpy(), -1, 0)),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(out['mask'][1], torch.from_numpy(shift_numpy(layers['mask'][1].numpy(), 0, 1)),
                               rtol=0, atol=1e-5)


def test_sample_eps_is_uniform_in_the_unit_box():
    eps = networks.sample_eps(4000, 2, generator=torch.Generator().manual_seed(0))
    assert eps.shape == (4000, 2) and float(eps.min()) >= -1 and float(eps.max()) <= 1
    assert abs(float(eps.mean())) < 0.05 and abs(float(eps.var()) - 1 / 3) < 0.03


# ----------------------------------------------------------------------------------------------
# Discriminator.

def mbstd_numpy(x, group_size, num_channels):
    n, c, h, w = x.shape
    g = min(group_size, n)
    out = np.zeros([n, num_channels, h, w])
    for m in range(n // g):
        members = [m + k * (n // g) for k in range(g)]
        std = np.sqrt(x[members].astype(np.float64).var(axis=0) + 1e-8)  # [C, H, W]
        for f in range(num_channels):
            part = std[f * (c // num_channels):(f + 1) * (c // num_channels)]
            out[members, f] = part.mean()
    return np.concatenate([x, out], axis=1)


@pytest.mark.parametrize('n, group, num_channels', [(8, 4, 1), (3, 4, 1), (8, 2, 2)])
def test_minibatch_stddev_matches_numpy(n, group, num_channels):
    rng = np.random.default_rng(n)
    x = rng.standard_normal([n, 4, 2, 3]).astype(np.float32)
    y = networks.minibatch_stddev(torch.from_numpy(x), group, num_channels).numpy()
    np.testing.assert_allclose(y, mbstd_numpy(x, group, num_channels), rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_identical_group_gives_zero_and_bad_batch_raises():
    x = torch.randn([8, 4, 2, 2])
    x[[0, 2, 4, 6]] = x[0].clone()  # group 0 (stride N/G = 2) holds four copies of one image
    y = networks.minibatch_stddev(x, 4, 1)
    assert torch.allclose(y[[0, 2, 4, 6], 4], torch.full([4, 2, 2], 1e-4))  # sqrt(0 + 1e-8)
    assert float(y[1, 4].min()) > 0.1
    with pytest.raises(ValueError, match='not a multiple of the group size 4'):
        networks.minibatch_stddev(torch.randn([6, 4, 2, 2]), 4, 1)


def test_discriminator_output_and_input_check():
    torch.manual_seed(5)
    D = Discriminator(img_resolution=32, **SMALL_D)
    assert D.block_resolutions == [32, 16, 8]
    logits = D(torch.rand([4, 3, 32, 32]) * 2 - 1)
    assert logits.shape == (4, 1) and logits.dtype == torch.float32
    # Samples are scored independently apart from the mbstd feature of their group.
    D1 = Discriminator(img_resolution=32, mbstd_num_channels=0, **SMALL_D)
    imgs = torch.randn([4, 3, 32, 32])
    torch.testing.assert_close(D1(imgs)[1:2], D1(imgs[1:2]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='shape'):
        D(torch.randn([2, 3, 16, 16]))
    with pytest.raises(ValueError, match='group size'):
        D(torch.randn([6, 3, 32, 32]))


def test_discriminator_residual_block_matches_formula():
    torch.manual_seed(6)
    block = networks.DiscriminatorBlock(4, 6, img_channels=3, first=True, conv_clamp=256)
    img = torch.randn([1, 3, 8, 8])
    with torch.no_grad():
        x = block.fromrgb(img)
        expected = (block.skip(x) + block.conv1(block.conv0(x))) * math.sqrt(0.5)
        torch.testing.assert_close(block(img), expected, rtol=1e-5, atol=1e-5)
    assert block.skip.bias is None and block(img).shape == (1, 6, 4, 4)


# ----------------------------------------------------------------------------------------------
# Training: gradients reach every parameter.

@pytest.mark.parametrize('resolution', [64, 128])
def test_forward_backward_reaches_every_parameter(resolution):
    G = small_generator(resolution).train()
    D = Discriminator(img_resolution=resolution, **SMALL_D).train()
    perturb = PerturbedComposition()
    z = torch.randn([2, 64])
    layers = G(z, noise_mode='random')
    shifted = perturb(layers, networks.sample_eps(2, perturb.eps_dim))
    loss = torch.nn.functional.softplus(-D(shifted['img'])).mean() + layers['mask'].mean() + layers['bg'].mean()
    loss.backward()
    for name, module in (('G', G), ('D', D)):
        for pname, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f'{name}.{pname}'
            assert float(p.grad.abs().max()) > 0, f'{name}.{pname} got a zero gradient'
    assert float(G.mapping_bg.w_avg.abs().max()) > 0  # tracked in training mode


def test_rebuildable_records_constructor_arguments():
    G = small_generator(32, conv_clamp=None, num_fp16_res=0)
    assert G.init_kwargs == {'img_resolution': 32, **SMALL, 'conv_clamp': None, 'num_fp16_res': 0}
    assert G.init_class == 'training.networks.LayeredGenerator'
    assert PerturbedComposition(xint_max=0.1).init_kwargs == {'xint_max': 0.1}
    assert Discriminator(img_resolution=32).init_class == 'training.networks.Discriminator'


def test_float16_layers_keep_dtypes_consistent(monkeypatch):
    # No GPU in CI: pretend the CPU is CUDA for the dtype policy, so the float16 plumbing of
    # every fp16 layer (casts of weights, styles, noise, biases, skip images) runs here.
    monkeypatch.setattr(networks, 'compute_dtype',
                        lambda use_fp16, device: torch.float16 if use_fp16 else torch.float32)
    G = small_generator(16)
    G32 = small_generator(16, num_fp16_res=0)
    G32.load_state_dict(G.state_dict())
    D = Discriminator(img_resolution=16, **SMALL_D)
    D32 = Discriminator(img_resolution=16, num_fp16_res=0, **SMALL_D)
    D32.load_state_dict(D.state_dict())
    z = torch.randn([2, 64])
    for train in (True, False):  # shared-kernel and grouped paths
        G.train(train), G32.train(train)
        half, full = G(z, noise_mode='const'), G32(z, noise_mode='const')
        for key in half:
            assert half[key].dtype == torch.float32
            torch.testing.assert_close(half[key], full[key], rtol=0.05, atol=0.05)
        logits = D(half['img'])
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, D32(half['img']), rtol=0.05, atol=0.05)
        logits.sum().backward()
        assert all(p.grad is not None for p in G.parameters())


@pytest.mark.gpu
def test_fp16_on_cuda_is_close_to_fp32():
    G = small_generator(64).eval().cuda()
    G32 = small_generator(64, num_fp16_res=0).eval().cuda()
    G32.load_state_dict(G.state_dict())
    D = Discriminator(img_resolution=64, **SMALL_D).cuda()
    z = torch.randn([4, 64], device='cuda')
    with torch.no_grad():
        a, b = G(z, noise_mode='const'), G32(z, noise_mode='const')
        assert a['img'].dtype == torch.float32
        torch.testing.assert_close(a['img'], b['img'], rtol=0.05, atol=0.05)
        assert D(a['img']).shape == (4, 1)
