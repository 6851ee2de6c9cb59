"""The loss terms of METHOD.md §3-§4 against hand-worked values and numpy, and who gets gradients."""

import math

import numpy as np
import pytest
import torch

from training import loss as L
from training.mi_estimators import MIEstimators


def _t(values, requires_grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)


# ----------------------------------------------------------------------------------------------
# Adversarial, mask, range gate.

def test_softplus_losses_match_log1p_exp():
    logits = _t([[0.0], [2.0], [-1.5]])
    x = logits.numpy().ravel()
    np.testing.assert_allclose(L.generator_adversarial_loss(logits).numpy(), np.log1p(np.exp(-x)))
    fake, real = L.discriminator_adversarial_loss(logits, -logits)
    np.testing.assert_allclose(fake.numpy(), np.log1p(np.exp(x)))
    np.testing.assert_allclose(real.numpy(), np.log1p(np.exp(x)))  # softplus(-(-x))
    assert L.generator_adversarial_loss(_t([[0.0]])).item() == pytest.approx(math.log(2))


def test_mask_binarization_loss_is_mean_of_min_m_one_minus_m():
    mask = _t([[[[0.1, 0.6], [0.5, 1.0]]], [[[0.0, 0.0], [1.0, 1.0]]]])
    # sample 0: min = 0.1, 0.4, 0.5, 0.0 → 0.25; sample 1: perfectly binary → 0
    np.testing.assert_allclose(L.mask_binarization_loss(mask).numpy(), [0.25, 0.0])


def test_min_mask_size_loss_is_one_sided_hinge():
    small = torch.full([1, 1, 4, 4], 0.1, dtype=torch.float64)
    large = torch.full([1, 1, 4, 4], 0.9, dtype=torch.float64)
    out = L.min_mask_size_loss(torch.cat([small, large]), min_size=0.25)
    np.testing.assert_allclose(out.numpy(), [0.15, 0.0])


def test_mask_size_loss_with_upper_bound_is_two_sided():
    areas = [0.1, 0.5, 0.9]
    masks = torch.stack([torch.full([1, 4, 4], a, dtype=torch.float64) for a in areas])
    out = L.min_mask_size_loss(masks, min_size=0.25, max_size=0.75)
    np.testing.assert_allclose(out.numpy(), [0.15, 0.0, 0.15])  # relu(0.25 − a) + relu(a − 0.75)


def test_mask_size_floor_on_batch_mean_by_hand():
    areas = [0.05, 0.15, 0.9]
    masks = torch.stack([torch.full([1, 4, 4], a, dtype=torch.float64) for a in areas]).requires_grad_()
    out = L.min_mask_size_loss(masks, min_size=0.5, max_size=0.8, floor_on_batch=True)
    # batch mean 0.3667: relu(0.5 − 0.3667) = 0.1333 for every sample, + relu(a − 0.8) per sample.
    np.testing.assert_allclose(out.detach().numpy(), [0.5 - 1.1 / 3, 0.5 - 1.1 / 3, 0.5 - 1.1 / 3 + 0.1])
    # A batch whose mean clears the floor costs nothing, though one mask lies below it.
    fine = L.min_mask_size_loss(masks.detach(), min_size=0.3, floor_on_batch=True)
    np.testing.assert_allclose(fine.numpy(), [0.0, 0.0, 0.0])
    # The floor's gradient reaches every mask alike: d/dm of mean over samples of the shared term.
    out[:2].sum().backward()
    np.testing.assert_allclose(masks.grad[:, 0, 0, 0].numpy(), [-2 / 3 / 16] * 3)


def test_soft_border_coverage_and_loss_by_hand():
    # 32 px: a ring of 2 pixels, 32² − 28² = 240 pixels.
    bottom_half = torch.zeros([1, 1, 32, 32], dtype=torch.float64)
    bottom_half[..., 16:, :] = 1
    centre = torch.zeros([1, 1, 32, 32], dtype=torch.float64)
    centre[..., 8:24, 8:24] = 1
    corner = torch.zeros([1, 1, 32, 32], dtype=torch.float64)
    corner[..., :4, :4] = 1          # 16 pixels, 4 of them inside the ring's inner edge → 12 on the ring
    masks = torch.cat([bottom_half, centre, corner, torch.ones_like(centre)])
    # bottom half: 2 rows of 32 + 2 × 2 columns × 14 rows = 64 + 56 = 120 of 240
    np.testing.assert_allclose(L.soft_border_coverage(masks).numpy(), [0.5, 0.0, 12 / 240, 1.0])
    np.testing.assert_allclose(L.border_loss(masks, border_max=0.1).numpy(), [0.4, 0.0, 0.0, 0.9])
    assert L.soft_border_coverage(torch.ones([2, 1, 8, 8])).tolist() == [1.0, 1.0]  # 1-pixel ring below 32 px


def test_valid_range_gate_keeps_values_and_blocks_gradient_outside_open_interval():
    x = _t([-1.5, -1.0, -0.5, 0.9, 1.0, 2.0], requires_grad=True)
    gated, valid = L.valid_range_gate(x)
    np.testing.assert_array_equal(gated.detach().numpy(), x.detach().numpy())
    np.testing.assert_array_equal(valid.numpy(), [0, 0, 1, 1, 0, 0])
    (gated * _t([1, 2, 3, 4, 5, 6])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 3, 4, 0, 0])


# ----------------------------------------------------------------------------------------------
# CLUB bound.

def _numpy_predetermined(x, y, perm, power, neg_weight=1.0):
    pos = np.abs(x - y) ** power
    neg = np.abs(x[perm] - y) ** power
    bound = -pos.reshape(len(x), -1).mean(1).mean() + neg_weight * neg.reshape(len(x), -1).mean(1).mean()
    return bound * (0.5 if power == 2 else 1.0)


@pytest.mark.parametrize('distribution,power', [('predetermined_laplace', 1), ('predetermined_gaussian', 2)])
def test_club_predetermined_matches_numpy(distribution, power):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=[5, 3, 4, 4]), rng.normal(size=[5, 3, 4, 4])
    perm = np.array([3, 0, 4, 1, 2])
    got = L.club_bound(_t(x), _t(y), torch.as_tensor(perm), distribution, neg_weight=0.7)
    assert got.item() == pytest.approx(_numpy_predetermined(x, y, perm, power, 0.7), rel=1e-12)


def test_club_hand_worked_laplace_and_gaussian():
    y = _t([0.0, 1.0, 2.0]).reshape(3, 1, 1, 1)
    x = _t([1.0, 2.0, 0.0]).reshape(3, 1, 1, 1)  # x_n = y_{n+1}: positive pairs are 1, 1, 2 apart
    perm = torch.tensor([2, 0, 1])  # x_{π(n)} = y_n exactly: negative pairs 0 apart
    assert L.club_bound(x, y, perm, 'predetermined_laplace').item() == pytest.approx(-4 / 3)
    assert L.club_bound(x, y, perm, 'predetermined_gaussian').item() == pytest.approx(0.5 * -(1 + 1 + 4) / 3)


def test_club_sign_far_positive_pairs_give_negative_bound_and_identity_gives_zero():
    rng = np.random.default_rng(1)
    y = _t(rng.normal(size=[6, 3, 2, 2]))
    x = y + 10.0  # every sample's x far from its own y ...
    x[0] = y[1]   # ... except that sample 0's x equals sample 1's y, which a shuffle pairs up
    perm = torch.tensor([1, 0, 2, 3, 4, 5])  # x_{π(1)} = x_0 = y_1
    for distribution in ('predetermined_laplace', 'predetermined_gaussian'):
        assert L.club_bound(x, y, perm, distribution).item() < 0
        assert L.club_bound(x, y, torch.arange(6), distribution).item() == 0.0


@pytest.mark.parametrize('distribution,power', [('neural_laplace', 1), ('neural_gaussian', 2)])
def test_club_neural_uses_estimator_scale_sum_and_half(distribution, power):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=[4, 3, 2, 2]), rng.normal(size=[4, 3, 2, 2])
    perm = np.array([2, 3, 1, 0])
    mu, s = 0.5 * y, np.full_like(y, 0.3)
    estimator = lambda yy: (0.5 * yy, torch.full_like(yy, 0.3))  # noqa: E731
    got = L.club_bound(_t(x), _t(y), torch.as_tensor(perm), distribution, estimator).item()
    pos = (np.abs(x - mu) ** power * np.exp(-s)).reshape(4, -1).sum(1)
    neg = (np.abs(x[perm] - mu) ** power * np.exp(-s)).reshape(4, -1).sum(1)
    assert got == pytest.approx(0.5 * (neg - pos).mean(), rel=1e-12)
    assert L.club_bound(_t(x), _t(y), torch.arange(4), distribution, estimator).item() == 0.0


def test_ils_regions_pair_hidden_with_visible_and_mask_gradient_switch():
    fg = _t(np.full([1, 3, 2, 2], 0.5), requires_grad=True)
    bg = _t(np.full([1, 3, 2, 2], -0.25), requires_grad=True)
    mask = _t([[[[1.0, 0.0], [0.25, 0.5]]]], requires_grad=True)
    (bi, fv), (fi, bv) = L.ils_regions(fg, bg, mask)
    m = mask.detach().numpy()
    np.testing.assert_allclose(bi.detach().numpy(), -0.25 * m.repeat(3, 1))
    np.testing.assert_allclose(fv.detach().numpy(), 0.5 * m.repeat(3, 1))
    np.testing.assert_allclose(fi.detach().numpy(), 0.5 * (1 - m).repeat(3, 1))
    np.testing.assert_allclose(bv.detach().numpy(), -0.25 * (1 - m).repeat(3, 1))
    L.ils_regions(fg, bg, mask)[0][0].sum().backward()  # d(Σ m·b)/dm = Σ_c b = −0.75
    np.testing.assert_allclose(mask.grad.numpy(), np.full([1, 1, 2, 2], -0.75))  # opt_mask shapes the mask
    mask.grad = None
    L.ils_regions(fg, bg, mask, opt_mask=False)[0][0].sum().backward()
    assert mask.grad is None
    pairs = L.ils_regions(fg, bg, mask, stop_grad=True)
    assert pairs[0][0].requires_grad and not pairs[0][1].requires_grad and not pairs[1][1].requires_grad


# ----------------------------------------------------------------------------------------------
# L1 variant.

def test_ils_l1_distance_value_and_which_tensors_get_gradients():
    rng = np.random.default_rng(3)
    f = rng.uniform(-1.4, 1.4, size=[2, 3, 3, 3])
    b = rng.uniform(-1.4, 1.4, size=[2, 3, 3, 3])
    m = rng.uniform(0, 1, size=[2, 1, 3, 3])
    fg, bg, mask = _t(f, True), _t(b, True), _t(m, True)
    out = L.ils_l1_distance(fg, bg, mask)
    vf, vb = (np.abs(f) < 1).astype(float), (np.abs(b) < 1).astype(float)
    expected = -((np.abs(b - f) * m * vb).mean() + (np.abs(f - b) * (1 - m) * vf).mean())
    assert out.item() == pytest.approx(expected, rel=1e-12)
    out.backward()
    assert mask.grad is None  # sg(m)
    n = f.size
    # b moves away from the frozen f inside the mask; f away from the frozen b outside it.
    np.testing.assert_allclose(bg.grad.numpy(), -np.sign(b - f) * m * vb / n, atol=1e-15)
    np.testing.assert_allclose(fg.grad.numpy(), -np.sign(f - b) * (1 - m) * vf / n, atol=1e-15)


# ----------------------------------------------------------------------------------------------
# Sigma schedule, NLL, R1.

def test_ils_sigma_switches_after_400_kimg():
    assert L.ils_sigma(0, 0.2, 1.0) == 0.2
    assert L.ils_sigma(400, 0.2, 1.0) == 0.2
    assert L.ils_sigma(401, 0.2, 1.0) == 1.0
    # The loop passes cur_kimg = cur_nimg // 1000: 400 999 images are still "400 kimg".
    assert L.ils_sigma(400_999 // 1000, 0.2, 1.0) == 0.2
    assert L.ils_sigma(401_000 // 1000, 0.2, 1.0) == 1.0
    assert L.ils_sigma(10, 0.001, 0.001) == 0.001
    assert L.ils_sigma(11, 0.2, 1.0, anti_kimg=10) == 1.0


@pytest.mark.parametrize('distribution', ['neural_laplace', 'neural_gaussian'])
def test_estimator_nll_matches_formula(distribution):
    rng = np.random.default_rng(4)
    x, mu, s = rng.normal(size=[3, 3, 2, 2]), rng.normal(size=[3, 3, 2, 2]), np.tanh(rng.normal(size=[3, 3, 2, 2]))
    got = L.estimator_nll(_t(x), _t(mu), _t(s), distribution).numpy()
    if distribution == 'neural_laplace':
        per = s + np.abs(x - mu) * np.exp(-s)
    else:
        per = (x - mu) ** 2 * np.exp(-s) + s + 0.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(got, per.reshape(3, -1).sum(1), rtol=1e-12)


def test_estimator_nll_laplace_minimised_at_true_location_and_scale():
    # For a fixed residual r, Σ(s + |r| e^{-s}) is minimal at s = log|r|.
    x, mu = _t(np.full([1, 1, 1, 1], 0.5)), _t(np.zeros([1, 1, 1, 1]))
    values = [L.estimator_nll(x, mu, _t(np.full([1, 1, 1, 1], s)), 'neural_laplace').item()
              for s in (math.log(0.5) - 0.1, math.log(0.5), math.log(0.5) + 0.1)]
    assert values[1] < values[0] and values[1] < values[2]


def test_r1_penalty_of_linear_and_quadratic_discriminators():
    rng = np.random.default_rng(5)
    a = _t(rng.normal(size=[1, 3, 4, 4]))
    x = _t(rng.normal(size=[2, 3, 4, 4]), requires_grad=True)
    linear = (x * a).flatten(1).sum(1, keepdim=True)  # ∇ = a for every sample
    np.testing.assert_allclose(L.r1_penalty(x, linear).detach().numpy(), [float((a ** 2).sum())] * 2)
    quadratic = x.square().flatten(1).sum(1, keepdim=True)  # ∇ = 2x → ‖∇‖² = 4‖x‖²
    expected = 4 * (x.detach().numpy() ** 2).reshape(2, -1).sum(1)
    penalty = L.r1_penalty(x, quadratic)
    np.testing.assert_allclose(penalty.detach().numpy(), expected)
    assert penalty.requires_grad  # graph kept so that D can be trained on it


# ----------------------------------------------------------------------------------------------
# Phases: which network each term updates.

def _tiny_nets(distribution='predetermined_laplace'):
    from training.networks import Discriminator, LayeredGenerator, PerturbedComposition
    torch.manual_seed(0)
    G = LayeredGenerator(img_resolution=16, z_dim=8, w_dim=8, channel_base=64, channel_max=8, mapping_layers=1,
                         num_fp16_res=0).requires_grad_(False)
    D = Discriminator(img_resolution=16, channel_base=64, channel_max=8, num_fp16_res=0,
                      mbstd_group_size=2).requires_grad_(False)
    est = None
    if distribution.startswith('neural'):
        est = MIEstimators(distribution, resolution=16, widths=[4, 4, 4, 4, 4]).requires_grad_(False)
    loss = L.ILSLoss(G, D, PerturbedComposition(xint_max=0.125), None, est, r1_gamma=1.0, distribution=distribution)
    return G, D, est, loss


def _has_grad(module):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_generator_phase_updates_only_G_and_estimators_are_frozen_critics():
    G, D, est, loss = _tiny_nets('neural_gaussian')
    G.requires_grad_(True)
    out = loss.generator_main(torch.randn(4, 8), torch.rand(4, 2) * 2 - 1, sigma=0.5)
    assert torch.isfinite(out['Loss/G/total'])
    assert _has_grad(G.synthesis_fg) and _has_grad(G.synthesis_bg)
    assert not _has_grad(D) and not _has_grad(est)


def test_border_term_adds_weight_times_the_unshifted_masks_border_loss():
    G, D, _, loss = _tiny_nets()
    G.requires_grad_(True)
    z, eps = torch.randn(4, 8), torch.ones(4, 2)       # the largest shift: the shifted mask's ring differs
    totals = {}
    for weight in (0.0, 3.0):
        loss.border_weight, loss.border_max = weight, 0.05
        torch.manual_seed(1)
        totals[weight] = loss.generator_main(z, eps, sigma=0.5)['Loss/G/total'].item()
    torch.manual_seed(1)
    layers, _ = loss.run_G(z, eps)                      # generator_main's first draws: the same layers
    expected = 3.0 * L.border_loss(layers['mask'], 0.05).mean().item()
    assert expected > 0 and totals[3.0] - totals[0.0] == pytest.approx(expected, rel=1e-4)


def test_size_floor_on_batch_changes_the_total_by_the_hand_difference():
    G, D, _, loss = _tiny_nets()
    G.requires_grad_(True)
    z, eps = torch.randn(4, 8), torch.zeros(4, 2)
    torch.manual_seed(1)
    _, shifted = loss.run_G(z, eps)                     # generator_main's first draws: the same layers
    area = shifted['mask'].flatten(1).mean(dim=1).detach()
    assert area.max() - area.min() > 1e-4               # masks of different sizes, else both forms agree
    loss.min_msize, loss.max_msize, loss.msize_weight = float(area.mean()) + 0.001, None, 5.0
    totals = {}
    for on_batch in (False, True):
        loss.msize_on_batch = on_batch
        torch.manual_seed(1)
        totals[on_batch] = loss.generator_main(z, eps, sigma=0.5)['Loss/G/total'].item()
    # On the batch: 0.001 for every sample. Per sample: the mean of relu(floor − a_i), more than 0.001.
    per_sample = (loss.min_msize - area).clamp(min=0).mean().item()
    assert per_sample > 0.001
    assert totals[True] - totals[False] == pytest.approx(5.0 * (0.001 - per_sample), rel=1e-3)


def test_discriminator_phase_updates_D_and_estimators_not_G():
    G, D, est, loss = _tiny_nets('neural_laplace')
    D.requires_grad_(True)
    est.requires_grad_(True)
    out, real_logits = loss.discriminator_main(torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 8),
                                               torch.rand(4, 2) * 2 - 1)
    assert set(out) == {'Loss/D/total', 'Loss/estimator/nll'} and real_logits.shape == (4, 1)
    assert _has_grad(D) and _has_grad(est) and not _has_grad(G)


def test_r1_phase_scales_by_gain_and_gamma():
    G, D, _, loss = _tiny_nets()
    D.requires_grad_(True)
    reals = torch.rand(4, 3, 16, 16) * 2 - 1
    out, _ = loss.discriminator_reg(reals, gain=16)
    x = reals.clone().requires_grad_(True)
    penalty = L.r1_penalty(x, D(x))
    assert out['Loss/r1'].item() == pytest.approx((penalty * 0.5).mean().item(), rel=1e-5)


def test_ils_term_is_sigma_times_sum_of_both_pairs():
    G, D, _, loss = _tiny_nets()
    torch.manual_seed(7)
    layers = G(torch.randn(4, 8))
    torch.manual_seed(11)
    got = loss.ils_term(layers, sigma=0.2)
    torch.manual_seed(11)
    pairs = L.ils_regions(layers['fg'], layers['bg'], layers['mask'])
    expected = sum(L.club_bound(x, y, torch.randperm(4)) for x, y in pairs)
    assert got.item() == pytest.approx(0.2 * expected.item(), rel=1e-6)
