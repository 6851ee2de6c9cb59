"""ADA augmentation pipe and controller (training/augment.py), checked against closed forms."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_utils import checkpoint
from training import augment
from training.augment import (AUGPIPE_SPECS, AdaptiveAugment, AugmentPipe, apply_colour_matrix,
                              brightness_matrix, contrast_matrix, geometric_warp, hue_matrix,
                              lumaflip_matrix, saturation_matrix, segmentation_augment_pipe)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pipe(p: float = 1.0, **kwargs) -> AugmentPipe:
    pipe = AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def _smooth_field(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """[n, 3, h, w] sums of low-frequency cosines with random phases, in about [-1, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(h) + 0.5 - h / 2, np.arange(w) + 0.5 - w / 2, indexing='ij')
    out = np.zeros([n, 3, h, w])
    for i in range(n):
        for c in range(3):
            for _ in range(3):
                fx, fy = rng.uniform(-0.06, 0.06, size=2)
                out[i, c] += np.cos(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi)) / 3
    return torch.tensor(out, dtype=torch.float32)


# -- the filter -----------------------------------------------------------------------------------


def test_sym6_taps_are_an_orthonormal_lowpass_with_six_vanishing_moments():
    h = np.array(augment.SYM6)
    assert h.sum() == pytest.approx(math.sqrt(2), abs=1e-12)
    for lag in range(6):
        assert np.dot(h[:len(h) - 2 * lag], h[2 * lag:]) == pytest.approx(float(lag == 0), abs=1e-12)
    k = np.arange(len(h))
    highpass = (-1.0) ** k * h
    for m in range(6):
        assert abs(np.sum(highpass * k ** m)) < 1e-7 * np.sum(np.abs(highpass) * k ** m)


# -- probabilities and blits ----------------------------------------------------------------------


def test_p_zero_returns_the_inputs_themselves():
    images = torch.randn(4, 3, 16, 16)
    masks = (torch.rand(4, 1, 16, 16) > 0.5).float()
    pipe = AugmentPipe(**AUGPIPE_SPECS['bgc'])
    assert float(pipe.p) == 0
    assert pipe(images) is images
    out_images, out_masks = pipe(images, masks)
    assert out_images is images and out_masks is masks


def test_xflip_at_p1_either_flips_or_keeps_each_sample_exactly():
    images = torch.randn(32, 3, 8, 12)
    out = _pipe(xflip=1)(images, generator=_generator(1))
    flipped = [bool(torch.equal(o, x.flip(2))) for o, x in zip(out, images)]
    kept = [bool(torch.equal(o, x)) for o, x in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_rotate90_at_p1_is_a_quarter_turn_multiple_per_sample():
    images = torch.randn(32, 3, 12, 12)
    out = _pipe(rotate90=1)(images, generator=_generator(2))
    turns = []
    for o, x in zip(out, images):
        matches = [k for k in range(4) if torch.equal(o, torch.rot90(x, k, dims=(1, 2)))]
        assert len(matches) == 1
        turns.append(matches[0])
    assert len(set(turns)) == 4


def test_integer_translation_is_a_shift_of_the_reflect_padded_image():
    # Padding behaviour: reflection without repeating the edge pixel (numpy mode 'reflect').
    images = torch.randn(16, 3, 16, 16)
    out = _pipe(xint=1, xint_max=0.25)(images, generator=_generator(3)).numpy()
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)), mode='reflect')
    shifts = []
    for i in range(len(images)):
        found = [(dx, dy) for dx in range(-4, 5) for dy in range(-4, 5)
                 if np.array_equal(out[i], padded[i, :, 4 + dy:20 + dy, 4 + dx:20 + dx])]
        assert len(found) == 1, f'sample {i} is not a reflect-padded integer shift'
        shifts.append(found[0])
    assert len(set(shifts)) > 4


def test_only_pixel_permutations_take_the_exact_blit_path():
    def matrix(a, b, c, d, tx=0.0, ty=0.0):
        return torch.tensor([[[a, b, tx], [c, d, ty], [0, 0, 1]]], dtype=torch.float64)

    blits = [matrix(-1, 0, 0, 1), matrix(0, -1, 1, 0), matrix(1, 0, 0, 1, 3, -2), matrix(0, 1, 1, 0, 1, 0)]
    others = [matrix(1, 0, 0, 1, 0.5, 0), matrix(2, 0, 0, 2), matrix(0.8, -0.6, 0.6, 0.8)]
    assert all(augment._is_pixel_permutation(G, 9, 9) for G in blits)
    assert not any(augment._is_pixel_permutation(G, 9, 9) for G in others)


def test_rotation_fires_with_total_probability_p_despite_the_split():
    # Pre- and post-rotation each fire with 1 - sqrt(1 - p); at least one fires with p.
    pipe = _pipe(p=0.5, rotate=1)
    G = pipe._geometry(torch.zeros(20000, 3, 4, 4), _generator(4))
    rotated = (G[:, 0, 1].abs() > 0).float().mean().item()
    assert rotated == pytest.approx(0.5, abs=0.015)
    scaled = _pipe(p=0.3, scale=1)._geometry(torch.zeros(20000, 3, 4, 4), _generator(5))
    assert (scaled[:, 0, 0] != 1).float().mean().item() == pytest.approx(0.3, abs=0.015)


def test_same_generator_seed_gives_the_same_augmentation():
    images = torch.randn(4, 3, 16, 16)
    pipe = _pipe(**AUGPIPE_SPECS['bgc'])
    assert torch.equal(pipe(images, generator=_generator(7)), pipe(images, generator=_generator(7)))
    assert not torch.equal(pipe(images, generator=_generator(7)), pipe(images, generator=_generator(8)))


# -- colour ---------------------------------------------------------------------------------------


def test_brightness_only_adds_one_constant_per_sample():
    images = torch.randn(8, 3, 8, 8)
    delta = _pipe(brightness=1)(images, generator=_generator(9)) - images
    per_sample = delta.reshape(8, -1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-6)
    assert per_sample[:, 0].abs().min() > 0


def test_saturation_zero_projects_onto_the_luma_axis():
    rgb = np.random.default_rng(0).normal(size=(5, 3))
    M = saturation_matrix(torch.zeros(5, dtype=torch.float64)).numpy()
    projected = np.einsum('nij,nj->ni', M[:, :3, :3], rgb) + M[:, :3, 3]
    expected = np.repeat(rgb.mean(axis=1, keepdims=True), 3, axis=1)  # (x·v) v with v = 1/√3
    np.testing.assert_allclose(projected, expected, atol=1e-12)


def test_lumaflip_is_an_involution_that_negates_luma_and_keeps_chroma():
    M = lumaflip_matrix(torch.ones(1, dtype=torch.float64))[0].numpy()
    np.testing.assert_allclose(M @ M, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(M[:3, :3] @ np.ones(3), -np.ones(3), atol=1e-12)
    np.testing.assert_allclose(M[:3, :3] @ np.array([1.0, -1.0, 0.0]), [1.0, -1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(lumaflip_matrix(torch.zeros(1, dtype=torch.float64))[0].numpy(), np.eye(4))


def test_hue_rotation_keeps_luma_and_a_third_turn_permutes_channels():
    theta = torch.tensor([0.3, -1.7, 2.5], dtype=torch.float64)
    M = hue_matrix(theta).numpy()[:, :3, :3]
    rgb = np.random.default_rng(1).normal(size=(3, 3))
    rotated = np.einsum('nij,nj->ni', M, rgb)
    np.testing.assert_allclose(rotated.sum(axis=1), rgb.sum(axis=1), atol=1e-12)  # luma ∝ r + g + b
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=1), np.linalg.norm(rgb, axis=1), atol=1e-12)
    third = hue_matrix(torch.tensor([2 * math.pi / 3], dtype=torch.float64))[0, :3, :3].numpy()
    cyclic = [np.eye(3)[[2, 0, 1]], np.eye(3)[[1, 2, 0]]]
    assert any(np.allclose(third, P, atol=1e-12) for P in cyclic)


def test_brightness_and_contrast_matrices_are_offset_and_scale():
    b = brightness_matrix(torch.tensor([0.25]))[0]
    c = contrast_matrix(torch.tensor([1.5]))[0]
    x = torch.tensor([0.1, -0.2, 0.3, 1.0])
    torch.testing.assert_close(b @ x, torch.tensor([0.35, 0.05, 0.55, 1.0]))
    torch.testing.assert_close(c @ x, torch.tensor([0.15, -0.3, 0.45, 1.0]))


def test_grey_images_get_the_luma_action_of_the_colour_matrix():
    grey = torch.randn(2, 1, 4, 4)
    C = torch.stack([lumaflip_matrix(torch.ones(1))[0], brightness_matrix(torch.tensor([0.5]))[0]])
    out = apply_colour_matrix(grey, C)
    torch.testing.assert_close(out[0], -grey[0])
    torch.testing.assert_close(out[1], grey[1] + 0.5)


# -- the geometric warp ---------------------------------------------------------------------------


@pytest.mark.parametrize('warp', ['filtered', 'plain'])
def test_identity_matrix_warp_reproduces_the_input(warp):
    # sym6 is orthonormal, so ×2 up (convolution) then ×2 down (correlation) is the identity.
    images = torch.randn(3, 3, 16, 20)
    out, _ = geometric_warp(images, torch.eye(3).expand(3, 3, 3), warp=warp, shortcuts=False)
    torch.testing.assert_close(out, images, atol=1e-4, rtol=0)


def test_filtered_warp_samples_a_smooth_image_where_the_matrix_says():
    n, size = 2, 32
    images = _smooth_field(n, size, size)
    angle, s, tx, ty = 0.5, 1.15, 1.3, -0.7
    G = torch.tensor([[s * math.cos(angle), -s * math.sin(angle), tx],
                      [s * math.sin(angle), s * math.cos(angle), ty], [0, 0, 1]]).expand(n, 3, 3)
    out, _ = geometric_warp(images, G)
    # Independent reference: the same cosines evaluated at G·(pixel centre).
    rng = np.random.default_rng(0)
    y, x = np.meshgrid(np.arange(size) + 0.5 - size / 2, np.arange(size) + 0.5 - size / 2, indexing='ij')
    xi = G[0, 0, 0].item() * x + G[0, 0, 1].item() * y + tx
    yi = G[0, 1, 0].item() * x + G[0, 1, 1].item() * y + ty
    expected = np.zeros([n, 3, size, size])
    for i in range(n):
        for c in range(3):
            for _ in range(3):
                fx, fy = rng.uniform(-0.06, 0.06, size=2)
                expected[i, c] += np.cos(2 * np.pi * (fx * xi + fy * yi) + rng.uniform(0, 2 * np.pi)) / 3
    centre = slice(8, 24)  # these output pixels sample inside the original image
    error = np.abs(out.numpy() - expected)[:, :, centre, centre]
    assert error.max() < 0.01


def test_plain_warp_masks_move_exactly_with_an_image_equal_to_the_mask():
    # Image 2m − 1 warped with zero padding gives fg − bg coverage, whose sign is the mask rule.
    masks = torch.zeros(16, 1, 24, 24)
    masks[:, :, 6:18, 8:20] = 1
    masks[:, :, 10:14, 2:8] = 1
    pipe = segmentation_augment_pipe('geom')
    images, out_masks = pipe((2 * masks - 1).expand(-1, 3, -1, -1), masks, generator=_generator(11))
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out_masks, masks)
    agree = ((images[:, :1] > 0).float() == out_masks).float().mean().item()
    assert agree > 0.999


def test_filtered_warp_masks_move_with_the_image():
    masks = torch.zeros(8, 1, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing='ij')
    masks[:, 0] = (((xx - 14) / 9) ** 2 + ((yy - 17) / 6) ** 2 < 1).float()
    pipe = _pipe(**AUGPIPE_SPECS['bg'])
    images, out_masks = pipe((2 * masks - 1).expand(-1, 3, -1, -1), masks, generator=_generator(12))
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out_masks, masks)
    # Reflect padding can bring mirrored foreground into view; it is labelled the same way.
    agree = ((images[:, :1] > 0).float() == out_masks).float().mean().item()
    assert agree > 0.97


def test_colour_ops_leave_masks_untouched():
    masks = (torch.rand(8, 1, 16, 16) > 0.5).float()
    images = torch.randn(8, 3, 16, 16)
    out_images, out_masks = segmentation_augment_pipe('color')(images, masks, generator=_generator(13))
    assert torch.equal(out_masks, masks) and not torch.equal(out_images, images)


def test_segmentation_pipes_have_fixed_p_and_the_method_ops():
    assert segmentation_augment_pipe('none') is None
    colour, geom, both = (segmentation_augment_pipe(k) for k in ('color', 'geom', 'gc'))
    for pipe in (colour, geom, both):
        assert float(pipe.p) == 0.5 and pipe.warp == 'plain'
    enabled = {name: {k for k, v in pipe.multipliers.items() if v > 0}
               for name, pipe in (('color', colour), ('geom', geom), ('gc', both))}
    assert enabled['color'] == {'brightness', 'contrast', 'lumaflip', 'hue', 'saturation'}
    assert enabled['geom'] == {'xflip', 'scale', 'rotate', 'xfrac'}
    assert enabled['gc'] == enabled['color'] | enabled['geom']
    with pytest.raises(ValueError, match='unknown segmentation augmentation'):
        segmentation_augment_pipe('blur')


def _translation_std(pipe: AugmentPipe, width: int, n: int = 8000) -> float:
    """Std (px) of the fractional translation t of the samples whose xfrac fired, from G = L·[I t]."""
    G = pipe._geometry(torch.zeros(n, 3, width, width), _generator(21)).double()
    t = torch.linalg.solve(G[:, :2, :2], G[:, :2, 2])  # undo the flip/scale/rotation before the shift
    fired = t.abs().sum(dim=1) > 0
    return float(t[fired].pow(2).mean().sqrt())


@pytest.mark.parametrize('kind', ['geom', 'gc'])
def test_segmentation_translation_std_is_an_eighth_of_the_normalised_grid(kind):
    # The original draws t ~ N(0, 0.125²) in affine_grid's units, where the image spans [-1, 1]
    # (2 units = W px): std 0.125·W/2 px.
    width = 64
    assert _translation_std(segmentation_augment_pipe(kind), width) == pytest.approx(0.125 * width / 2, rel=0.03)


def test_ada_translation_std_stays_an_eighth_of_the_image():
    pipe = _pipe(p=0.5, xfrac=1)
    assert _translation_std(pipe, 64) == pytest.approx(0.125 * 64, rel=0.03)


# -- gradients ------------------------------------------------------------------------------------


def test_r1_double_backward_flows_through_the_full_bgc_pipe():
    torch.manual_seed(0)
    weight1 = torch.randn(8, 3, 3, 3, requires_grad=True)
    weight2 = torch.randn(1, 8, 3, 3, requires_grad=True)

    def discriminator(x):
        # Smooth activation: with a piecewise-linear D the penalty's gradient wrt x is exactly 0.
        return F.conv2d(F.softplus(F.conv2d(x, weight1, padding=1)), weight2).mean(dim=(1, 2, 3))

    real = torch.randn(4, 3, 16, 16, requires_grad=True)
    pipe = _pipe(**AUGPIPE_SPECS['bgc'])
    logits = discriminator(pipe(real, generator=_generator(14)))
    (gradient,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    penalty = gradient.square().sum()
    penalty.backward()
    for grad in (real.grad, weight1.grad, weight2.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_r1_penalty_gradient_matches_finite_differences():
    torch.manual_seed(1)
    weight1 = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    weight2 = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    pipe = _pipe(**AUGPIPE_SPECS['bgc'])

    def penalty(x):
        x = x.detach().requires_grad_(True)
        augmented = pipe(x, generator=_generator(16))
        logits = F.conv2d(F.softplus(F.conv2d(augmented, weight1, padding=1)), weight2).mean(dim=(1, 2, 3))
        (gradient,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        return x, gradient.square().sum()

    x0 = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    x, value = penalty(x0)
    (analytic,) = torch.autograd.grad(value, x)
    direction = torch.randn_like(x0)
    eps = 1e-5  # the penalty is strongly curved along random directions: keep the step small
    numeric = (penalty(x0 + eps * direction)[1] - penalty(x0 - eps * direction)[1]) / (2 * eps)
    assert numeric.item() == pytest.approx((analytic * direction).sum().item(), rel=1e-5)


def test_gradient_of_the_warp_is_its_adjoint():
    # <warp(x), y> = <x, warp*(y)>: check autograd's vector-Jacobian product numerically.
    pipe = _pipe(scale=1, rotate=1)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float32, requires_grad=True)
    y = torch.randn(2, 3, 12, 12)
    out = pipe(x, generator=_generator(15))
    (vjp,) = torch.autograd.grad((out * y).sum(), x)
    direction = torch.randn_like(x)
    eps = 1e-2
    plus = (pipe(x.detach() + eps * direction, generator=_generator(15)) * y).sum()
    minus = (pipe(x.detach() - eps * direction, generator=_generator(15)) * y).sum()
    assert ((plus - minus) / (2 * eps)).item() == pytest.approx((vjp * direction).sum().item(), rel=1e-3)


@pytest.mark.gpu
def test_cuda_warp_matches_cpu_and_supports_double_backward():
    images = _smooth_field(2, 32, 32)
    G = torch.tensor([[1.1 * math.cos(0.4), -1.1 * math.sin(0.4), 0.7],
                      [1.1 * math.sin(0.4), 1.1 * math.cos(0.4), -1.2], [0, 0, 1]]).expand(2, 3, 3)
    cpu, _ = geometric_warp(images, G)
    cuda, _ = geometric_warp(images.cuda(), G.cuda())
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=0)
    real = torch.randn(4, 3, 32, 32, device='cuda', requires_grad=True)
    pipe = _pipe(**AUGPIPE_SPECS['bgc']).cuda()
    augmented = pipe(real, generator=torch.Generator(device='cuda').manual_seed(0))
    (gradient,) = torch.autograd.grad(F.softplus(augmented).sum(), real, create_graph=True)
    gradient.square().sum().backward()
    assert torch.isfinite(real.grad).all() and real.grad.abs().sum() > 0


# -- snapshots ------------------------------------------------------------------------------------


def test_pipe_rebuilds_from_a_snapshot_record_with_its_p():
    pipe = _pipe(p=0.37, **AUGPIPE_SPECS['bgc'])
    assert set(pipe.state_dict()) == {'p'}
    rebuilt = checkpoint.build_module(checkpoint.module_record(pipe))
    assert isinstance(rebuilt, AugmentPipe)
    assert float(rebuilt.p) == pytest.approx(0.37)
    assert rebuilt.multipliers == pipe.multipliers


# -- the adaptive controller ----------------------------------------------------------------------


def test_ada_controller_moves_p_by_the_hand_computed_steps_and_clamps_at_zero():
    pipe = AugmentPipe(**AUGPIPE_SPECS['bgc'])
    ada = AdaptiveAugment(target=0.6, interval=4, ada_kimg=500, batch_size=32)
    step = 32 * 4 / (500 * 1000)
    assert ada.step == pytest.approx(step)
    # Adjust after iterations 4, 8, … (the original counts the iteration, then tests the modulus).
    assert [ada.due(completed) for completed in range(10)] == [False, False, False, False, True,
                                                               False, False, False, True, False]

    # Mean sign 0 < 0.6 at p = 0: p stays clamped at 0.
    ada.observe(torch.tensor([1.0, -1.0, 2.0, -3.0]))
    assert ada.mean_sign() == 0
    assert ada.update(pipe, ada.mean_sign()) == 0 and float(pipe.p) == 0

    # Two observations, signs (+,+,+,-) and (+,+,+,+,+,-): (2 + 4) / 10 = 0.6 = target, no move.
    ada.observe(torch.tensor([0.5, 0.1, 4.0, -0.2]))
    ada.observe(torch.tensor([[1.0], [1.0], [1.0], [1.0], [1.0], [-1.0]]))
    assert ada.mean_sign() == pytest.approx(0.6)
    assert ada.update(pipe, ada.mean_sign()) == 0

    # Three updates above target, one below: p = 3·step − step = 2·step.
    for logits in ([1.0, 1.0], [1.0, 0.5], [2.0, 3.0], [-1.0, 1.0]):
        ada.observe(torch.tensor(logits))
        ada.update(pipe, ada.mean_sign())
    assert float(pipe.p) == pytest.approx(2 * step)

    # No observation since the last update: p does not move.
    assert ada.mean_sign() is None
    assert ada.update(pipe, None) == pytest.approx(2 * step)


def test_ada_controller_uses_the_reduced_statistics_of_all_processes():
    pipe = AugmentPipe()
    rank0, rank1 = AdaptiveAugment(batch_size=8), AdaptiveAugment(batch_size=8)
    rank0.observe(torch.tensor([1.0, 1.0, 1.0, 1.0]))      # alone: mean 1 > 0.6
    rank1.observe(torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]))
    other = rank1.pending()
    mean = rank0.mean_sign(reduce=lambda stats: stats + other)  # stands in for all_reduce(SUM)
    assert mean == pytest.approx(4 / 12)
    rank0.update(pipe, mean)
    assert float(pipe.p) == 0  # 4/12 < 0.6 and clamped


def test_ada_controller_state_is_plain_and_restores_pending_signs_only():
    ada = AdaptiveAugment(target=0.5, interval=2, ada_kimg=100, batch_size=16)
    ada.observe(torch.tensor([1.0, -1.0, 1.0]))
    state = ada.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert state['sign_sum'] == 1 and state['sign_count'] == 3
    resumed = AdaptiveAugment(ada_kimg=100, batch_size=32)  # a resumed run's own settings
    resumed.load_state_dict(state)
    assert resumed.mean_sign() == pytest.approx(1 / 3)
    assert resumed.target == 0.6 and resumed.step == pytest.approx(32 * 4 / (100 * 1000))
